"""`authserver emulator`: run the vendor OpenAPI emulator on a local port.

The admin paths (`/_emulator/stats`, `/_emulator/faults`, `/_emulator/sessions`,
`/_emulator/iot`, `/_emulator/reset`) are unsigned: bind to loopback, never expose them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from aiohttp import web

from authserver.emulator.app import EmulatorConfig, create_emulator_app
from authserver.emulator.state import DEFAULT_QPS

ENV_PREFIX = "AUTHSERVER_EMULATOR_"
# The words a boolean AUTHSERVER_EMULATOR_* variable takes (as AUTHSERVER_REDIS_CLUSTER does).
TRUE_WORDS = frozenset({"true", "1", "yes"})
FALSE_WORDS = frozenset({"false", "0", "no", ""})
QPS_FLAGS = {
    "ApplyToken": "apply-token",
    "QueryToken": "query-token",
    "RevokeToken": "revoke-token",
    "QuerySessionByClientId": "query-session",
    "BatchQuerySessionByClientIds": "batch-query-sessions",
    "QueryClientIds": "query-client-ids",
}

EPILOG = """\
Admin paths (UNSIGNED, local use only; bind to 127.0.0.1):
  GET  /_emulator/stats     calls/successes/errors per action, errors per code, maxPerSecond,
                            and with --mqtt-port the broker's figures (`broker`)
  POST /_emulator/faults    {"action": "ApplyToken"|"*", "errorCode": "InternalError",
                             "rate": 0.2, "latencyMs": 2000, "outage": true} | {"clear": true}
  POST /_emulator/sessions  {"online": ["GID_x@@@a", ...]}
  POST /_emulator/iot       {"devices": {"<IotId>": ["<ClientId>", ...]}}
  POST /_emulator/reset     zero the statistics ({"state": true}: forget everything)
"""


def _env_name(flag: str) -> str:
    return ENV_PREFIX + flag.upper().replace("-", "_")


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; every flag's default comes from its AUTHSERVER_EMULATOR_* variable."""
    env = os.environ if env is None else env

    def default(flag: str, fallback: str) -> str:
        return env.get(_env_name(flag), fallback)

    parser = argparse.ArgumentParser(
        prog="authserver emulator",
        description="Local stand-in for the MQTT token OpenAPI (onsmqtt 2020-04-20) and the "
        "IoT Platform's QueryClientIds, for development, tests and demos.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def add(flag: str, fallback: str, help_text: str, **kwargs: object) -> None:
        parser.add_argument(
            f"--{flag}",
            default=default(flag, fallback),
            help=f"{help_text} (env {_env_name(flag)}, default: %(default)s)",
            **kwargs,  # type: ignore[arg-type]
        )

    add("host", "127.0.0.1", "address to listen on")
    add("port", "8900", "TCP port", type=int)
    add("access-key-id", "LTAIemulator", "the AccessKeyId the emulator accepts")
    add("access-key-secret", "emulator-secret", "its AccessKey secret")
    parser.add_argument(
        "--instance-id",
        action="append",
        dest="instance_ids",
        help="a known instance; repeat for more "
        f"(env {ENV_PREFIX}INSTANCE_IDS, comma-separated, default: "
        f"{default('instance-ids', 'post-cn-emulator')})",
    )
    add("region-id", "cn-hangzhou", "the region the emulator claims")
    add("timestamp-tolerance", "900", "allowed clock skew in seconds", type=float)
    mqtt_port = env.get(_env_name("mqtt-port"))
    parser.add_argument(
        "--mqtt-port",
        type=int,
        default=int(mqtt_port) if mqtt_port else None,
        help="also serve MQTT 3.1.1 on this TCP port of --host, honouring the emulator's "
        f"tokens (env {_env_name('mqtt-port')}; default: off)",
    )
    enforce_groups = env.get(_env_name("enforce-groups"), "false").strip().lower()
    if enforce_groups not in TRUE_WORDS | FALSE_WORDS:
        parser.error(
            f"{_env_name('enforce-groups')}={enforce_groups!r}: expected true/false, 1/0, yes/no"
        )
    parser.add_argument(
        "--enforce-groups",
        action="store_true",
        default=enforce_groups in TRUE_WORDS,
        help="refuse (CONNACK 5) a broker CONNECT whose ClientId's GroupId was not created on "
        f"its instance with CreateGroupId, as the vendor does (env {_env_name('enforce-groups')}"
        "; default: off)",
    )
    add(
        "expire-notice-seconds",
        "300",
        "send $SYS/tokenExpireNotice this long before a token expires",
        type=float,
    )
    for action, flag in QPS_FLAGS.items():
        add(f"qps-{flag}", str(DEFAULT_QPS[action]), f"{action} calls per second", type=float)
    parser.set_defaults(
        env_instance_ids=default("instance-ids", "post-cn-emulator"),
    )
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """The emulator configuration the parsed arguments describe."""
    instance_ids = args.instance_ids or [
        i.strip() for i in args.env_instance_ids.split(",") if i.strip()
    ]
    qps = {
        action: float(getattr(args, f"qps_{flag.replace('-', '_')}"))
        for action, flag in QPS_FLAGS.items()
    }
    return EmulatorConfig(
        access_keys={args.access_key_id: args.access_key_secret},
        instance_ids=instance_ids,
        region_id=args.region_id,
        qps=qps,
        timestamp_tolerance=float(args.timestamp_tolerance),
        mqtt_port=args.mqtt_port,
        mqtt_host=args.host,
        expire_notice_seconds=float(args.expire_notice_seconds),
        enforce_groups=bool(args.enforce_groups),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the emulator until interrupted; the process exit code."""
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    print(
        f"emulator: http://{args.host}:{args.port}/ key {args.access_key_id} "
        f"instances {','.join(config.instance_ids)} region {config.region_id}",
        flush=True,
    )
    if config.mqtt_port is not None:
        print(
            f"emulator: mqtt://{args.host}:{config.mqtt_port} (MQTT 3.1.1, token mode"
            f"{', groups enforced' if config.enforce_groups else ''})",
            flush=True,
        )
    web.run_app(create_emulator_app(config), host=args.host, port=int(args.port), print=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
