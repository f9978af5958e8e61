"""`authserver demo` prints MQTT lines that work as printed: mosquitto_sub/pub and paho."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import sys
from pathlib import Path

from tests.broker.devices import WAIT
from tests.fixtures.redis import free_port

REPO = Path(__file__).resolve().parents[2]


async def read_until(stream: asyncio.StreamReader, marker: str) -> list[str]:
    """Lines up to and including the first one that starts with `marker`."""
    lines: list[str] = []
    while True:
        raw = await asyncio.wait_for(stream.readline(), WAIT)
        if not raw:
            raise AssertionError(f"no line starting with {marker!r} in {''.join(lines)}")
        lines.append(raw.decode())
        if lines[-1].startswith(marker):
            return lines


def readme_example(gateway: str, mqtt_port: int) -> str:
    """The README's "Connect a device" paho script, pointed at this demo's ports."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Connect a device", 1)[1]
    script = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert '"http://127.0.0.1:8080"' in script
    assert ", 1883\n" in script
    return script.replace('"http://127.0.0.1:8080"', repr(gateway)).replace(
        ", 1883\n", f", {mqtt_port}\n"
    )


async def test_the_demo_mqtt_lines_work_as_printed() -> None:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        # `python3` in the printed script is this interpreter, which has paho-mqtt.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    demo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "authserver", "demo", "--port", str(free_port()),
        "--mqtt-port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=REPO, env=env,
    )  # fmt: skip
    sub: asyncio.subprocess.Process | None = None
    try:
        assert demo.stdout is not None
        lines = await read_until(demo.stdout, "Ctrl-C stops the demo")
        sub_line = next(x for x in lines if x.startswith("mosquitto_sub "))
        pub_line = next(x for x in lines if x.startswith("mosquitto_pub "))
        start = next(i for i, x in enumerate(lines) if x.startswith("python3 - <<'EOF'"))
        end = next(i for i, x in enumerate(lines) if i > start and x.strip() == "EOF")
        script = "".join(lines[start : end + 1])

        # The subscriber as printed, plus -d (to see its SUBACK) and -C 1 (exit after one);
        # stdbuf, because mosquitto_sub's stdout to a pipe is block-buffered.
        sub = await asyncio.create_subprocess_exec(
            "stdbuf", "-oL", *shlex.split(sub_line), "-d", "-C", "1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert sub.stdout is not None
        await read_until(sub.stdout, "Client GID_demo@@@alice-sub received SUBACK")
        pub = await asyncio.create_subprocess_shell(pub_line, stdout=asyncio.subprocess.PIPE)
        assert await asyncio.wait_for(pub.wait(), WAIT) == 0
        received = await read_until(sub.stdout, "devices/alice/hello")
        assert received[-1].strip() == "devices/alice/hello hello"

        python = await asyncio.create_subprocess_exec(
            "bash", "-c", script, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(python.communicate(), WAIT)
        assert python.returncode == 0, out.decode()
        assert out.decode().strip() == "devices/alice/hello hello from paho"

        # The README's script, with the JWT the demo printed.
        text = "".join(lines)
        gateway = re.search(r"Gateway:\s+(\S+)", text)
        broker = re.search(r"MQTT broker: mqtt://127.0.0.1:(\d+)", text)
        jwt = re.search(r"^DEVICE_JWT=(\S+)$", text, re.MULTILINE)
        assert gateway
        assert broker
        assert jwt
        readme = await asyncio.create_subprocess_exec(
            sys.executable, "-c", readme_example(gateway[1], int(broker[1])),
            env={**env, "DEVICE_JWT": jwt[1]},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(readme.communicate(), WAIT)
        assert readme.returncode == 0, out.decode()
        assert out.decode().strip() == "devices/alice/hello hello"
    finally:
        for proc in (sub, demo):
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGINT) if proc is demo else proc.kill()
                await asyncio.wait_for(proc.wait(), WAIT)
    assert demo.returncode == 0
