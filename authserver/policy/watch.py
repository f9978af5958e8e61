"""Hot policy reload: poll the policy file, swap a valid new version in, revoke what it narrows.

Kubernetes mounts a ConfigMap as a directory in which `policy.yaml` is a symlink to
`..data/policy.yaml` and `..data` a symlink to a timestamped directory; an update writes a new
directory and swaps `..data` atomically. So the watcher never holds the file open and does not
rely on inotify events of the file itself: every `interval` seconds, in a worker thread, it
stats the path as resolved now (inode, device, size, mtime) and hashes the bytes when that
changed. A new hash triggers a reload, which validates the file and swaps it in
only when it is valid; a broken file keeps the old policy, is logged, and counts as a failure.
The file is read and parsed in a worker thread; `PolicyHolder.swap` runs on the event loop.

After a change the watcher calls `on_change(old, new)`; the app passes
`authserver.tokens.narrowing.revoke_narrowed`, which revokes the cached tokens the new policy no
longer allows.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authserver import background
from authserver.clock import Clock, SystemClock
from authserver.policy.holder import PolicyHolder
from authserver.policy.loader import load_policy
from authserver.policy.model import Policy, PolicyLoadError

log = logging.getLogger(__name__)

OnChange = Callable[[Policy, Policy], Awaitable[int]]


@dataclass(frozen=True)
class FileState:
    """What the watcher knows of the policy file: its stat signature and content hash."""

    signature: tuple[int, int, int, int] | None
    digest: str | None


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)  # follows the ..data symlink: a swapped ConfigMap changes the inode
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def probe(path: Path, previous: FileState | None) -> FileState:
    """Blocking (run it in a thread): stat the file, hash it only when the stat changed."""
    signature = _signature(path)
    if previous is not None and signature == previous.signature and signature is not None:
        return previous
    return FileState(signature, _digest(path))


class PolicyWatcher:
    """Polls the policy file; reloads on change or on demand (SIGHUP); keeps reload stats."""

    def __init__(
        self,
        holder: PolicyHolder,
        *,
        interval: float = 1.0,
        on_change: OnChange | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.holder = holder
        self.interval = interval
        self._on_change = on_change
        self._clock: Clock = clock or SystemClock()
        self._state: FileState | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._followups: set[asyncio.Task[Any]] = set()
        self.reloads = 0
        self.failures = 0
        self.narrowed = 0
        self.last_ok = True
        self.last_errors: list[str] = []
        self.last_reload_time: float | None = None

    async def start(self) -> None:
        """Remember the file as loaded and start polling it."""
        self._state = await asyncio.to_thread(probe, self.holder.path, None)
        self._task = asyncio.create_task(self._run(), name="policy-watch")

    async def close(self) -> None:
        """Stop polling; a reload or revocation in progress is cancelled (bounded wait)."""
        await background.stop([self._task, *self._followups])
        self._task = None

    async def _run(self) -> None:
        while True:
            await self._clock.idle(self.interval)
            try:
                await self.poll()
            except Exception:
                # The watcher must outlive a bad poll; the next one tries again.
                log.exception("policy watch: poll failed")

    async def poll(self) -> bool:
        """Check the file once; reload when its content changed. True when the policy changed."""
        state = await asyncio.to_thread(probe, self.holder.path, self._state)
        previous, self._state = self._state, state
        if previous is not None and state.digest == previous.digest:
            return False
        if state.digest is None:
            # Mid-swap or deleted: keep the policy in force and look again next time.
            log.warning("policy watch: %s is not readable right now", self.holder.path)
            return False
        return await self.reload(reason="file changed")

    def request_reload(self, reason: str = "SIGHUP") -> None:
        """Schedule a reload from a signal handler; the task is kept and awaited at close."""
        task = asyncio.create_task(self.reload(reason=reason), name="policy-reload")
        self._followups.add(task)
        task.add_done_callback(self._followups.discard)

    async def reload(self, *, reason: str) -> bool:
        """Re-read and validate the file now; swap when valid. True when the policy changed.

        The file is read and parsed in a worker thread; the swap happens here, on the event
        loop's thread, so request handlers never see the holder's caches half-cleared.
        """
        async with self._lock:
            holder = self.holder
            old = holder.current
            try:
                policy = await asyncio.to_thread(load_policy, holder.path)
            except (PolicyLoadError, OSError) as err:
                problems = err.problems if isinstance(err, PolicyLoadError) else [str(err)]
                self.failures += 1
                self.last_ok = False
                self.last_errors = list(problems)
                log.error(
                    "policy reload (%s) refused, version %s stays in force: %s",
                    reason,
                    old.version_id,
                    "; ".join(problems),
                    extra={"problems": problems},
                )
                return False
            self.last_ok = True
            self.last_errors = []
            if policy.version_id == old.version_id:
                return False
            holder.swap(policy)
            self.reloads += 1
            self.last_reload_time = self._clock.time()
            log.warning(
                "policy reloaded (%s): version %s -> %s", reason, old.version_id, policy.version_id
            )
            if self._on_change is not None:
                try:
                    self.narrowed += await self._on_change(old, policy)
                except Exception:
                    log.exception("policy reload: revoking narrowed tokens failed")
            return True

    def stats(self) -> dict[str, Any]:
        """Reload counters and the version in force, for metrics."""
        return {
            "version": self.holder.current.version_id,
            "last_ok": self.last_ok,
            "reloads": self.reloads,
            "failures": self.failures,
            "narrowed": self.narrowed,
            "last_reload_time": self.last_reload_time,
            "last_errors": list(self.last_errors),
        }
