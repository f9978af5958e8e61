"""The token path: a verified identity and a canonical request in, the answer's bytes out.

`TokenIssuer` is the one thing POST /v1/token calls once it has read the body, parsed it
(`Asked`) and verified the JWT: it owns every cache on the way, their keys, their limits
and when each is dropped. The handler speaks HTTP only.

A request meets these layers, in this order (a hit ends the walk):

| layer           | key                                            | owner          |
| --------------- | ---------------------------------------------- | -------------- |
| repeats         | digest of exact (Authorization header, body)   | here (answers) |
| remembered JWTs | sha256(JWT)                                    | JWTVerifier    |
| JWT header memo | the JWT's header segment                       | JWTVerifier    |
| claims-key memo | the claims object (the claims the policy reads)| PolicyHolder   |
| answers         | subject, (claims key[, claim marks], request)  | here (answers) |
| plan LRU        | policy version, subject, clientId, claims key, | PolicyHolder   |
|                 | topics, actions                                |                |
| single-flight   | token key (one mint task per key)              | TokenService   |
| L1              | token key; only in front of a shared store     | TokenService   |
| store           | token key (and by subject, clientId, value)    | TokenStore     |

The per-subject request limit counts only a request no answer serves (identical requests
in flight together once); the mint budget and the quota governor's fairness learn who asks
(`RateLimiter.asking`, `quota.asking`) once the policy has decided and the request may go
upstream. The revocation blocks (`Revoker.check`) apply on every path, cached or not.

Invalidation: what each event drops, and what guards work in flight when it lands.

| event                      | repeats      | answers      | L1      | store      | also |
| -------------------------- | ------------ | ------------ | ------- | ---------- | ---- |
| token revoked by value     | its          | its          | its     | deleted    | GT   |
| subject revoked            | its          | its          | its     | deleted    | GTEB |
| clientId revoked           | its          | its          | its     | deleted    | GTEB |
| claim value revoked        | its          | its          | its     | deleted    | GTCB |
| policy reload              | stale: ver.  | stale: ver.  | -       | -          | P    |
| policy narrowing           | its          | its          | its     | deleted    | GT   |
| store eviction / expiry    | its          | its          | -       | (event)    | -    |
| bus drop, other process    | its          | its          | its     | (there)    | G    |
| bus resync, `flush` event  | all          | all          | all     | -          | GR   |
| JWKS key removed           | stale: epoch | -            | -       | -          | K    |
| JWT expiry, max JWT age    | stale: exp   | -            | -       | -          | K    |
| answer's renewal point     | stale: fresh | stale: fresh | -       | -          | N    |
| token's refresh point      | -            | -            | expires | not served | M    |
| answer evicted (its size)  | its          | (event)      | -       | -          | -    |
| cache full (entries, bytes)| oldest       | oldest       | oldest  | oldest     | S    |
| invalidation during a mint | -            | not kept     | not kept| re-read    | G    |
| epoch moved during a mint  | -            | not kept     | -       | not stored | E    |

- its: the entries holding (or, for repeats, answered from an answer holding) the tokens'
  keys; stale: checked on lookup (policy version, verifier epoch, `Identity.expires_at`,
  `Answer.fresh_until_ms`), dropped when found stale.
- G: the generation moves (`TokenService.generation`): an answer or L1 entry built across
  it is not kept, and credentials gathered across it are checked against the store (which
  a revocation clears before it tells anyone) and gathered again when one is gone.
- T: a `tokens` event tells every process (the "bus drop" row there).
- E: the revoked subject's or clientId's epoch (`TokenStore.bump_epoch`, one per scope and
  name) moves after its block is written and before its tokens are listed: a mint under an
  older epoch of its request (`service.epoch_names`) is not stored (the store checks them as
  it writes) and is revoked upstream through the durable queue; a token stored before the
  move is not answered either. Both answer 503 `RevokedWhileIssuing`, whose retry meets the block.
- C: the claim value's epoch (the same epochs as E, scope `claim`) moves after its block is
  written and before its tokens are listed: a mint that stored its tokens after the move
  finds it moved, revokes them everywhere and answers 503 `RevokedWhileIssuing`
  (`TokenService._check_claim_epochs`).
- B: a block: `Revoker.check` refuses an app JWT issued before it, on every path (repeat,
  answer, mint), for the subject, any clientId the policy lets the identity use, or any
  revocable claim value it carries (tokens/revocable.py). Its mirror of another process's
  blocks follows the bus, so a mint (or a new holding of a shared token) also checks the
  blocks in the state once its epochs are read (`Revoker.confirm`, one round trip per mint,
  none on a cache hit): a mint that read the epochs moved by E or C finds the block written
  before them; one that read them before the move is caught by E or C.
- P: the plan LRU is keyed by the policy version; the claims-key memo (kept on the claims
  object, tagged by the policy holder's swap) is stale after the swap, as the claims a
  policy reads may differ.
- R: the revoker reloads its blocks (events may have been missed).
- S: every layer is bounded by entries and by bytes (settings `*_CACHE_SIZE`, `*_CACHE_BYTES`;
  `authserver/bounded.py` for the verifier's JWTs, the plans, L1 and the store), the oldest
  (least recently used for the JWTs and plans) going first; an entry larger than a whole
  bound is not kept. The store's eviction is the "store eviction" row; the others drop only
  their own entry, and the next request finds it in the next layer or works it out again.
- K: the verifier forgets the JWTs (those signed by the removed key; the expired one, with
  `max_age` folded into its `expires_at`); a repeat carries the epoch and expiry it was
  verified under.
- N: the token service renews the token in the background from `renew_at` while the
  current one is still handed out; the next request past it is a miss.
- M: no longer handed out from L1 or the store: minted again, once per key (the token
  service's single-flight, the store's lock across processes).

The JWT header memo holds a parse (algorithm, key id) of the header text, which no event
makes wrong: the key it names is looked up afresh.

Each row is tested in tests/tokens/test_issuer.py, without a server (the claim value row
over real sockets, in tests/tokens/test_revocation_claim.py; a block on a gateway the bus has
not told yet, in tests/tokens/test_revocation_lag.py).

Claim marks: with AUTHSERVER_REVOCABLE_CLAIMS set, the revocable claim values an identity
carries are part of its answers' key and its tokens' key, so a token is always recorded
under the values of the identity it is handed to.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, NamedTuple

import orjson

from authserver import logs
from authserver.bounded import ExpiringMap, weight
from authserver.clock import Clock
from authserver.cloud import quota
from authserver.identity import Identity, JWTVerifier
from authserver.policy.holder import PolicyHolder
from authserver.ratelimit import RateLimiter
from authserver.tokens.answers import (
    DEFAULT_MAX_BYTES,
    Answer,
    AnswerCache,
    Repeat,
    RepeatKey,
    answer_body,
)
from authserver.tokens.bus import InvalidationBus
from authserver.tokens.revocable import marks_of
from authserver.tokens.revocation import Revoker
from authserver.tokens.service import TokenRequest, TokenService

# Claims objects whose marks are remembered, and what those entries may hold: each holds its
# claims object (so its id, the key, is not reused), alive after the verifier let go of it,
# and its marks (up to 32 values of 256 characters per revocable claim): by entries alone,
# 10,000 JWTs of 8 KB with as many marks held 160 MB outside every byte bound.
MARKS_MEMO_SIZE = 10_000
MARKS_MEMO_BYTES = 8 * 1024 * 1024
# An entry beyond what `weight` counts of its claims and marks: the map's slot, the id, the pair.
MARKS_OVERHEAD = 150


def _marks_weight(_id: int, memo: tuple[Mapping[str, Any], tuple[str, ...]]) -> int:
    return MARKS_OVERHEAD + weight(memo[0]) + weight(memo[1])


class Asked(NamedTuple):
    """A POST /v1/token body, canonical: two requests are equal only if they get one answer.

    The policy's decision depends on the set of topics and of actions, never on their order
    or repeats (`restrict` takes each topic once, `normalize` sorts the outcome), and the
    lifetime only through the policy's default and maximum, which are the same for every
    rule of a policy (an answer is kept per policy version).
    """

    client_id: str | None
    topics: tuple[str, ...] | None  # sorted, each once
    actions: tuple[str, ...] | None  # R before W, each once
    ttl: int  # the lifetime the tokens get


class TokenIssuer:
    """Answers a device's token request through every cache; the one owner of their rules."""

    def __init__(
        self,
        service: TokenService,
        *,
        holder: PolicyHolder,
        verifier: JWTVerifier,
        revoker: Revoker,
        limiter: RateLimiter,
        bus: InvalidationBus,
        clock: Clock,
        request_deadline: float,
        answer_cache_size: int = 20_000,
        answer_cache_bytes: int = DEFAULT_MAX_BYTES,
        revocable_claims: frozenset[str] = frozenset(),
        marks_memo_bytes: int = MARKS_MEMO_BYTES,
    ) -> None:
        self.service = service
        self.answers = AnswerCache(answer_cache_size, answer_cache_bytes)
        self._holder = holder
        self._verifier = verifier
        self._revoker = revoker
        self._limiter = limiter
        self._clock = clock
        self._deadline = request_deadline
        # Revocation by claim (tokens/revocable.py): the names whose values tokens record,
        # and the marks of recent claims objects (the verifier hands out one per JWT).
        self._revocable = tuple(sorted(revocable_claims))
        self._marks: ExpiringMap[int, tuple[Mapping[str, Any], tuple[str, ...]]] = ExpiringMap(
            MARKS_MEMO_SIZE, max_bytes=marks_memo_bytes, weigh=_marks_weight
        )
        # An answer must not hand out tokens the store no longer knows: revocations find
        # tokens through the store.
        service.store.watch_evictions(self._evicted)
        bus.on_event(self._on_event)
        bus.on_resync(self._resync)

    def repeated(self, authorization: str, body: bytes) -> Repeat | None:
        """The answer this exact header and body got before, if it still holds.

        TokenRevoked when the subject or clientId was blocked since. The subject is bound to
        the log context first (the caller has no identity on this path), so the refusal is
        logged under it.
        """
        repeat = self.answers.repeat(
            authorization,
            body,
            self._holder.current.version_id,
            self._clock.time(),
            self._verifier.epoch,
        )
        if repeat is not None:
            logs.bind_subject(repeat.identity.subject)
            self._revoker.check(repeat.identity, repeat.answer.client_id)
        return repeat

    async def answer(
        self,
        identity: Identity,
        asked: Asked,
        *,
        ip: str | None = None,
        sent_as: RepeatKey | None = None,
    ) -> bytes:
        """The JSON answer for `asked` by `identity`: from the answers, else worked out.

        `ip`: the caller's address when IPs are limited (the mint budget counts it too).
        `sent_as`: the (Authorization header, body) the request came with, given when its
        JWT was one the verifier remembered: a device that sent it twice is likely to send
        it again, so an answer found here is then remembered as a repeat of it.
        """
        # First, whatever answers: an answer is keyed by the clientId asked for, so this is
        # the check a cached answer needs, and a blocked JWT never counts against a limit.
        self._revoker.check(identity, asked.client_id)
        marks = self.marks(identity.claims)
        # An answer is the subject's, for its claims key and the canonical request. The claims
        # key goes with the request, which the answers keep as one object for every device
        # asking it alike (a pair of the subject and claims key was 56 bytes a device). The
        # claim values are part of it too: tokens are found by the values they were handed
        # for, so an answer must not be handed to an identity carrying others.
        who = identity.subject
        claims_key = self._holder.claims_key(identity.claims)
        request: Hashable = (claims_key, marks, asked) if marks else (claims_key, asked)
        now_ms = self._clock.time() * 1000
        answers = self.answers
        answer = answers.fresh(who, request, self._holder.current.version_id, now_ms)
        if answer is not None:
            if sent_as is not None:
                repeat = Repeat(answer, identity, self._verifier.epoch)
                answers.remember_repeat(sent_as[0], sent_as[1], repeat)
            return answer.body
        with answers.working(who, request) as alone:
            if alone:
                self._limiter.check_subject(identity.subject)
            answer = await self._work_out(identity, request, asked, ip, marks)
        return answer.body

    def marks(self, claims: Mapping[str, Any]) -> tuple[str, ...]:
        """The revocable claim values these claims carry (memoised per claims object)."""
        if not self._revocable:
            return ()
        memo = self._marks.get(id(claims), 0.0)
        if memo is not None and memo[0] is claims:
            return memo[1]
        found = marks_of(claims, self._revocable)
        self._marks.put(id(claims), (claims, found))
        return found

    async def _work_out(
        self,
        identity: Identity,
        request: Hashable,
        asked: Asked,
        ip: str | None,
        marks: tuple[str, ...],
    ) -> Answer:
        """Decide, gather or mint the tokens, and keep the answer unless invalidated meanwhile."""
        plan = self._holder.plan(
            identity.subject, identity.claims, asked.client_id, asked.topics, asked.actions
        )
        # From here on the request may reach the upstream: the mint budget needs to know who.
        self._limiter.asking(identity.subject, ip)
        quota.asking(identity.subject)  # the governor serves its slots fairly across subjects
        service = self.service
        generation = service.generation
        credentials = await service.credentials(
            TokenRequest(
                subject=identity.subject,
                client_id=asked.client_id,
                read=plan.read,
                write=plan.write,
                ttl=asked.ttl,
                claims=plan.claims,
                marks=marks,
                confirm=functools.partial(self._revoker.confirm, identity, asked.client_id),
            ),
            self._clock.monotonic() + self._deadline,
        )
        answer = Answer(
            answer_body(orjson.dumps(credentials.to_dict())),
            plan.policy_version,
            credentials.renew_at_ms,
            credentials.keys,
            asked.client_id,
        )
        # Built across an invalidation, the tokens may be the very ones just revoked.
        if service.generation == generation:
            self.answers.put(identity.subject, request, answer, self._clock.time() * 1000)
        return answer

    def invalidate(self, keys: Iterable[str]) -> None:
        """Tokens revoked (here or in another process): every layer forgets them."""
        keys = list(keys)
        self.service.drop(keys)
        self.answers.forget_keys(keys)

    def flush(self) -> None:
        """Events may have been missed: forget every answer, repeat and L1 entry."""
        self.service.clear()
        self.answers.clear()

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == "tokens":
            self.invalidate(str(k) for k in event.get("keys", []))
        elif kind == "flush":
            self.flush()

    async def _resync(self) -> None:
        self.flush()

    def _evicted(self, key: str) -> None:
        # Not an invalidation (the token is still good): answers being built stay welcome.
        self.answers.forget_keys((key,))
