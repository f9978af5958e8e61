"""Paired timeit of the body parse, before (the decode as on main) and after (with the check).

`before` is main's shapes.decode verbatim (decoder.decode in the same try); `after` is the
branch's. Interleaved repeats, the minimum of each, so the machine's load hits both alike.
"""

import time
import timeit
from typing import Any

import msgspec

from authserver.errors import BadRequest
from authserver.web import shapes

_DECODERS: dict[type, msgspec.json.Decoder[Any]] = {}


def before(shape: type, raw: bytes) -> object:
    decoder = _DECODERS.get(shape)
    if decoder is None:
        decoder = _DECODERS[shape] = msgspec.json.Decoder(shape)
    try:
        value = decoder.decode(raw)
    except msgspec.ValidationError as err:
        raise BadRequest(str(err)) from err
    except msgspec.DecodeError as err:
        raise BadRequest("the body is not valid JSON") from err
    except RecursionError as err:
        raise BadRequest("the body is nested too deeply") from err
    return value


after = shapes.decode
TR = shapes.TokenRequest


N, R = 100_000, 15


def main() -> None:
    """Print before/after for a one-member and a three-member POST /v1/token body."""
    for body in BODIES:
        assert before(TR, body) == after(TR, body)
        best = {"before": float("inf"), "after": float("inf")}
        for _ in range(R):
            for name, fn in (("before", before), ("after", after)):
                timer = timeit.Timer(lambda fn=fn, body=body: fn(TR, body), timer=time.process_time)
                best[name] = min(best[name], timer.timeit(number=N) / N * 1e9)
        print(
            f"{body.decode()}\n  before {best['before']:6.0f} ns  after {best['after']:6.0f} ns"
            f"  (+{best['after'] - best['before']:.0f} ns)"
        )


BODIES = (
    b'{"clientId": "GID_fleet@@@dev-1"}',
    b'{"clientId": "GID_fleet@@@dev-1", "topics": ["devices/dev-1/#"], "actions": ["R", "W"]}',
)

if __name__ == "__main__":
    main()
