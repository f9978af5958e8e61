"""Settings: one frozen dataclass built from the environment, every problem reported at once."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from authserver.cloud.credentials import Credentials, credentials_from_env
from authserver.cloud.vendor import (
    DEFAULT_LIMITS,
    endpoint_for_region,
    iot_endpoint_for_region,
    ons_endpoint_for_region,
)
from authserver.tracing import exporters_from_env

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class JWTSettings:
    """How to verify a JWT; every choice comes from here, never from the token.

    The issuer is required: the subject alone names a caller everywhere (token reuse,
    answers, rate limits, revocation blocks, the admin API), which is only unambiguous
    when every accepted token comes from one issuer.
    """

    algorithms: tuple[str, ...]
    issuer: str
    secret: str | None = None
    public_key_pem: str | None = None
    jwks_url: str | None = None
    audience: str | None = None
    leeway: float = 30.0
    # Seconds after its `iat` a JWT is refused, whatever its `exp`; None: no limit, `iat` optional.
    max_age: float | None = None
    subject_claim: str = "sub"
    jwks_refresh_interval: float = 30.0
    jwks_cache_ttl: float = 3600.0
    max_token_bytes: int = 8192
    cache_size: int = 100_000
    cache_bytes: int = 64 * 1024 * 1024


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or single addresses) as networks; ValueError names the first bad one."""
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip())


PREFIX = "AUTHSERVER_"
# The gateway processes assumed to share a source IP when Redis is configured: the
# maximum of the production HPA in deploy/ (maxReplicas: 30).
DEFAULT_REDIS_REPLICAS = 30
# AUTHSERVER_TOKEN_SHARING: one token per subject ("off"), or one per identical grant
# ("identical-grants", see tokens/sharing.py).
TOKEN_SHARING_MODES = ("off", "identical-grants")
# Per-IP limits key an IPv6 client by this prefix: the usual customer allocation is a /64.
DEFAULT_IPV6_PREFIX = 64
# AUTHSERVER_REVOCABLE_CLAIMS: the JWT claims an admin may revoke by value (tokens/revocable.py).
# A name is a plain identifier (no "=", which separates a claim from its value in the index);
# the registered JWT claims say nothing about who a device belongs to and are refused.
REVOCABLE_CLAIM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")
UNREVOCABLE_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti"})
MAX_REVOCABLE_CLAIMS = 16
# AUTHSERVER_EVENT_LOOP: "auto" is uvloop on Linux when it is installed (see serve.py).
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
# The least a cache's byte bound may be: room for a few hundred of its largest entries (an
# 8 KB JWT's identity, a record with 1 KB of claims), so that no single entry is too large.
MIN_CACHE_BYTES = 1024 * 1024
# AUTHSERVER_REVOCATION_REPLICA_TIMEOUT (ms): WAIT blocks the Redis connection that long, so
# it must stay below the client's socket timeout (redis_conn.SOCKET_TIMEOUT, 2 s), or a
# replica that does not answer would read as an unreachable Redis instead of a precise 503.
MAX_REPLICA_TIMEOUT_MS = 1500
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
KEY_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class SettingsError(Exception):
    """Start-up configuration is unusable; `problems` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Settings:
    """Everything the gateway is configured with; built once at start-up."""

    credentials: Credentials
    jwt: JWTSettings
    instance_id: str
    policy_file: Path
    host: str = "0.0.0.0"  # noqa: S104 - a server in a container listens on all interfaces
    port: int = 8080
    region_id: str = "cn-hangzhou"
    mqtt_endpoint: str = ""
    iot_endpoint: str | None = None
    iot_instance_id: str | None = None
    ons_endpoint: str | None = None
    redis_url: str | None = None
    admin_scope: str = "authserver:admin"
    admin_api_keys_file: Path | None = None
    log_level: str = "INFO"
    log_format: str = "json"
    # `authserver serve`'s event loop: "auto" (uvloop where it is installed, on Linux),
    # "uvloop" (refused at start-up when it is not installed) or "asyncio".
    event_loop: str = "auto"
    # OpenTelemetry trace exporters the OTEL_* variables ask for; empty: tracing off.
    trace_exporters: tuple[str, ...] = ()
    refresh_margin: float = 600.0
    request_deadline: float = 5.0
    max_body_bytes: int = 65536
    token_cache_size: int = 200_000
    token_cache_bytes: int = 256 * 1024 * 1024
    plan_cache_size: int = 20_000
    plan_cache_bytes: int = 32 * 1024 * 1024
    answer_cache_size: int = 20_000
    answer_cache_bytes: int = 64 * 1024 * 1024
    token_sharing: str = "off"  # noqa: S105 - a mode name, not a secret
    # The claims whose values are recorded with each token, so an admin can revoke by them.
    revocable_claims: frozenset[str] = frozenset()
    quota: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    account_quota: float = 300.0
    revocation_claim_idle: float = 30.0
    # Revocation blocks are pruned this long after they were made (see tokens/revocation.py).
    revocation_block_retention: float = 30 * 24 * 3600.0
    redis_cluster: bool = False
    # An accepted revocation waits until this many Redis replicas hold its jobs (0: it is
    # accepted once the master has them), for up to revocation_replica_timeout ms.
    revocation_min_replicas: int = 0
    revocation_replica_timeout: int = 500
    policy_poll_interval: float = 1.0
    shutdown_delay: float = 5.0
    rate_limit_subject: float = 10.0
    rate_limit_subject_burst: int = 20
    rate_limit_ip: float = 0.0
    rate_limit_ip_burst: int = 200
    rate_limit_ipv6_prefix: int = DEFAULT_IPV6_PREFIX
    mint_budget: float = 10.0
    mint_budget_burst: int = 5
    trusted_proxies: tuple[str, ...] = ()
    # The HTTP layer (authserver.serve): how long a connection may sit without a complete
    # request head (idle keep-alive and headers sent slowly alike), how long a body may take,
    # and the longest request line or header line aiohttp's parser accepts.
    keepalive_timeout: float = 75.0
    body_read_timeout: float = 10.0
    max_header_bytes: int = 16384
    replicas: int | None = None

    @property
    def quota_share(self) -> float:
        """This process's share of the upstream limits whenever its quota buckets are local.

        Local means no Redis, or Redis failing: every process then counts alone, so each
        takes 1 / replicas. Unset, one process is assumed without Redis and
        DEFAULT_REDIS_REPLICAS with it (a shared Redis means several replicas, and more
        of them than assumed would send more than the account limit and get the source IP
        blocked; fewer only serve more slowly while Redis is down).
        """
        if self.replicas is not None:
            return 1.0 / self.replicas
        return 1.0 / (DEFAULT_REDIS_REPLICAS if self.redis_url else 1)

    @property
    def endpoint(self) -> str:
        """The OpenAPI base URL: the override, else the regional endpoint."""
        return self.mqtt_endpoint or endpoint_for_region(self.region_id)


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(PREFIX + name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _number(
    environ: Mapping[str, str],
    name: str,
    default: float,
    problems: list[str],
    *,
    minimum: float = 0.0,
    maximum: float | None = None,
    integer: bool = False,
) -> float:
    raw = _env(environ, name)
    if raw is None:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        problems.append(f"{PREFIX}{name}={raw!r} is not a {'whole ' if integer else ''}number")
        return default
    if value < minimum:
        problems.append(f"{PREFIX}{name}={raw!r} must be at least {minimum:g}")
        return default
    if maximum is not None and value > maximum:
        problems.append(f"{PREFIX}{name}={raw!r} must be at most {maximum:g}")
        return default
    return value


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment; raise SettingsError naming every problem."""
    env = os.environ if environ is None else environ
    problems: list[str] = []

    credentials, cred_problems = credentials_from_env(env)
    problems.extend(cred_problems)

    instance_id = _env(env, "MQTT_INSTANCE_ID")
    if instance_id is None:
        problems.append(f"{PREFIX}MQTT_INSTANCE_ID is required (e.g. post-cn-xxxxxxxx)")

    policy_raw = _env(env, "POLICY_FILE")
    policy_file = Path(policy_raw) if policy_raw else Path()
    if policy_raw is None:
        problems.append(f"{PREFIX}POLICY_FILE is required (a YAML policy, see policies/)")
    elif not policy_file.is_file():
        problems.append(f"{PREFIX}POLICY_FILE={policy_raw!r} is not a readable file")

    jwt_settings = _jwt_settings(env, problems)

    port = int(_number(env, "PORT", 8080, problems, minimum=0, integer=True))
    if port > 65535:
        problems.append(f"{PREFIX}PORT={port} is not a TCP port")

    redis_url = _env(env, "REDIS_URL")
    if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        problems.append(f"{PREFIX}REDIS_URL must start with redis://, rediss:// or unix://")

    endpoint = _env(env, "MQTT_ENDPOINT") or ""
    if endpoint and not endpoint.startswith(("http://", "https://")):
        problems.append(f"{PREFIX}MQTT_ENDPOINT must be an http:// or https:// URL")
    region_id = _env(env, "MQTT_REGION_ID") or "cn-hangzhou"

    iot_endpoint = _env(env, "IOT_ENDPOINT")
    iot_instance_id = _env(env, "IOT_INSTANCE_ID")
    if iot_endpoint is None and _env(env, "IOT_REGION_ID"):
        iot_endpoint = iot_endpoint_for_region(_env(env, "IOT_REGION_ID") or region_id)
    ons_endpoint = _env(env, "ONS_ENDPOINT")
    if ons_endpoint is not None and not ons_endpoint.startswith(("http://", "https://")):
        problems.append(f"{PREFIX}ONS_ENDPOINT must be an http:// or https:// URL")
    if ons_endpoint is None and _env(env, "ONS_REGION_ID"):
        ons_endpoint = ons_endpoint_for_region(_env(env, "ONS_REGION_ID") or region_id)

    keys_raw = _env(env, "ADMIN_API_KEYS_FILE")
    keys_file = Path(keys_raw) if keys_raw else None
    if keys_file is not None and not keys_file.is_file():
        problems.append(f"{PREFIX}ADMIN_API_KEYS_FILE={keys_raw!r} is not a readable file")

    log_level = (_env(env, "LOG_LEVEL") or "INFO").upper()
    if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        problems.append(f"{PREFIX}LOG_LEVEL={log_level!r} is not DEBUG, INFO, WARNING or ERROR")
    log_format = (_env(env, "LOG_FORMAT") or "json").lower()
    if log_format not in {"json", "text"}:
        problems.append(f"{PREFIX}LOG_FORMAT={log_format!r} is not json or text")
    event_loop = (_env(env, "EVENT_LOOP") or "auto").lower()
    if event_loop not in EVENT_LOOPS:
        problems.append(f"{PREFIX}EVENT_LOOP={event_loop!r} is not " + ", ".join(EVENT_LOOPS))
    elif event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        problems.append(
            f"{PREFIX}EVENT_LOOP=uvloop but uvloop is not installed (pip install uvloop)"
        )
    token_sharing = (_env(env, "TOKEN_SHARING") or "off").lower()
    if token_sharing not in TOKEN_SHARING_MODES:
        problems.append(
            f"{PREFIX}TOKEN_SHARING={token_sharing!r} is not " + " or ".join(TOKEN_SHARING_MODES)
        )
    revocable_claims = _revocable_claims(env, jwt_settings, problems)
    trace_exporters, trace_problems = exporters_from_env(env)
    problems.extend(trace_problems)

    quota = dict(DEFAULT_LIMITS)
    for action in DEFAULT_LIMITS:
        quota[action] = _number(
            env, f"QUOTA_{action.upper()}", DEFAULT_LIMITS[action], problems, minimum=0.1
        )

    settings_kwargs = {
        "refresh_margin": _number(env, "REFRESH_MARGIN", 600.0, problems, minimum=300),
        "request_deadline": _number(env, "REQUEST_DEADLINE", 5.0, problems, minimum=0.1),
        "max_body_bytes": int(
            _number(env, "MAX_BODY_BYTES", 65536, problems, minimum=1024, integer=True)
        ),
        "token_cache_size": int(
            _number(env, "TOKEN_CACHE_SIZE", 200_000, problems, minimum=1, integer=True)
        ),
        "token_cache_bytes": int(
            _number(
                env,
                "TOKEN_CACHE_BYTES",
                256 * 1024 * 1024,
                problems,
                minimum=MIN_CACHE_BYTES,
                integer=True,
            )
        ),
        "plan_cache_size": int(
            _number(env, "PLAN_CACHE_SIZE", 20_000, problems, minimum=0, integer=True)
        ),
        "plan_cache_bytes": int(
            _number(
                env,
                "PLAN_CACHE_BYTES",
                32 * 1024 * 1024,
                problems,
                minimum=MIN_CACHE_BYTES,
                integer=True,
            )
        ),
        "answer_cache_size": int(
            _number(env, "ANSWER_CACHE_SIZE", 20_000, problems, minimum=0, integer=True)
        ),
        "answer_cache_bytes": int(
            _number(env, "ANSWER_CACHE_BYTES", 64 * 1024 * 1024, problems, minimum=0, integer=True)
        ),
        "account_quota": _number(env, "QUOTA_ACCOUNT", 300.0, problems, minimum=0.1),
        "revocation_claim_idle": _number(env, "REVOCATION_CLAIM_IDLE", 30.0, problems, minimum=0.1),
        "revocation_block_retention": _number(
            env, "REVOCATION_BLOCK_RETENTION", 30 * 24 * 3600.0, problems, minimum=3600
        ),
        "revocation_replica_timeout": int(
            _number(
                env,
                "REVOCATION_REPLICA_TIMEOUT",
                500,
                problems,
                minimum=1,
                maximum=MAX_REPLICA_TIMEOUT_MS,
                integer=True,
            )
        ),
        "policy_poll_interval": _number(env, "POLICY_POLL_INTERVAL", 1.0, problems, minimum=0.05),
        "shutdown_delay": _number(env, "SHUTDOWN_DELAY", 5.0, problems, minimum=0),
        "rate_limit_subject": _number(env, "RATE_LIMIT_SUBJECT", 10.0, problems, minimum=0),
        "rate_limit_subject_burst": int(
            _number(env, "RATE_LIMIT_SUBJECT_BURST", 20, problems, minimum=1, integer=True)
        ),
        "rate_limit_ip": _number(env, "RATE_LIMIT_IP", 0.0, problems, minimum=0),
        "rate_limit_ip_burst": int(
            _number(env, "RATE_LIMIT_IP_BURST", 200, problems, minimum=1, integer=True)
        ),
        "rate_limit_ipv6_prefix": int(
            _number(
                env,
                "RATE_LIMIT_IPV6_PREFIX",
                DEFAULT_IPV6_PREFIX,
                problems,
                minimum=32,
                maximum=128,
                integer=True,
            )
        ),
        "mint_budget": _number(env, "MINT_BUDGET", 10.0, problems, minimum=0),
        "mint_budget_burst": int(
            _number(env, "MINT_BUDGET_BURST", 5, problems, minimum=1, integer=True)
        ),
        "trusted_proxies": _trusted_proxies(env, problems),
        "keepalive_timeout": _number(env, "KEEPALIVE_TIMEOUT", 75.0, problems, minimum=0.1),
        "body_read_timeout": _number(env, "BODY_READ_TIMEOUT", 10.0, problems, minimum=0.1),
        "max_header_bytes": _max_header_bytes(env, jwt_settings, problems),
        "replicas": _replicas(env, problems),
    }
    cluster_raw = (_env(env, "REDIS_CLUSTER") or "false").lower()
    if cluster_raw not in {"true", "false", "1", "0", "yes", "no"}:
        problems.append(f"{PREFIX}REDIS_CLUSTER={cluster_raw!r} is not true or false")
    redis_cluster = cluster_raw in {"true", "1", "yes"}
    if redis_cluster and redis_url is None:
        problems.append(f"{PREFIX}REDIS_CLUSTER=true needs {PREFIX}REDIS_URL (any node)")
    min_replicas = int(
        _number(env, "REVOCATION_MIN_REPLICAS", 0, problems, minimum=0, maximum=16, integer=True)
    )
    if min_replicas and redis_url is None:
        problems.append(
            f"{PREFIX}REVOCATION_MIN_REPLICAS={min_replicas} needs {PREFIX}REDIS_URL "
            "(without Redis, queued revocations live in this process: there is no replica)"
        )

    if problems or credentials is None or instance_id is None or jwt_settings is None:
        raise SettingsError(problems or ["incomplete configuration"])
    return Settings(
        credentials=credentials,
        jwt=jwt_settings,
        instance_id=instance_id,
        policy_file=policy_file,
        host=_env(env, "HOST") or "0.0.0.0",  # noqa: S104
        port=port,
        region_id=region_id,
        mqtt_endpoint=endpoint.rstrip("/"),
        iot_endpoint=iot_endpoint,
        iot_instance_id=iot_instance_id,
        ons_endpoint=ons_endpoint.rstrip("/") if ons_endpoint else None,
        redis_url=redis_url,
        redis_cluster=redis_cluster,
        revocation_min_replicas=min_replicas,
        admin_scope=_env(env, "ADMIN_SCOPE") or "authserver:admin",
        admin_api_keys_file=keys_file,
        log_level=log_level,
        log_format=log_format,
        event_loop=event_loop,
        token_sharing=token_sharing,
        revocable_claims=revocable_claims,
        trace_exporters=trace_exporters,
        quota=quota,
        **settings_kwargs,  # type: ignore[arg-type]
    )


def _revocable_claims(
    env: Mapping[str, str], jwt: JWTSettings | None, problems: list[str]
) -> frozenset[str]:
    """AUTHSERVER_REVOCABLE_CLAIMS: comma-separated claim names, each checked."""
    raw = _env(env, "REVOCABLE_CLAIMS")
    if raw is None:
        return frozenset()
    names = [n.strip() for n in raw.split(",") if n.strip()]
    subject_claim = jwt.subject_claim if jwt is not None else "sub"
    bad = [n for n in names if not REVOCABLE_CLAIM_NAME.fullmatch(n)]
    if bad:
        problems.append(
            f"{PREFIX}REVOCABLE_CLAIMS: {', '.join(map(repr, bad))} not claim name(s): a letter "
            "or _, then up to 63 letters, digits, _ . : or -"
        )
    registered = sorted(n for n in names if n in UNREVOCABLE_CLAIMS or n == subject_claim)
    if registered:
        problems.append(
            f"{PREFIX}REVOCABLE_CLAIMS: {', '.join(registered)} cannot be revoked by value "
            '(revoke a subject with {"subject": ...})'
        )
    if len(set(names)) > MAX_REVOCABLE_CLAIMS:
        problems.append(
            f"{PREFIX}REVOCABLE_CLAIMS names {len(set(names))} claims; at most "
            f"{MAX_REVOCABLE_CLAIMS} are allowed"
        )
    return frozenset(names)


# "Authorization: Bearer " and a little slack: the header line around the longest JWT.
_AUTHORIZATION_OVERHEAD = 64


def _max_header_bytes(env: Mapping[str, str], jwt: JWTSettings | None, problems: list[str]) -> int:
    value = int(_number(env, "MAX_HEADER_BYTES", 16384, problems, minimum=1024, integer=True))
    # A JWT the verifier accepts must fit the parser, or aiohttp refuses it before any handler.
    needed = (jwt.max_token_bytes if jwt is not None else 0) + _AUTHORIZATION_OVERHEAD
    if value < needed:
        problems.append(
            f"{PREFIX}MAX_HEADER_BYTES={value} must be at least {needed}: the longest JWT "
            "accepted and its Authorization header line"
        )
    return value


def _replicas(env: Mapping[str, str], problems: list[str]) -> int | None:
    if _env(env, "REPLICAS") is None:
        return None
    return int(_number(env, "REPLICAS", 1, problems, minimum=1, integer=True))


def _trusted_proxies(env: Mapping[str, str], problems: list[str]) -> tuple[str, ...]:
    raw = _env(env, "TRUSTED_PROXIES")
    if raw is None:
        return ()
    values = tuple(v.strip() for v in raw.split(",") if v.strip())
    try:
        parse_networks(values)
    except ValueError as err:
        problems.append(f"{PREFIX}TRUSTED_PROXIES: {err} (expected comma-separated CIDRs)")
        return ()
    return values


def _jwt_settings(env: Mapping[str, str], found: list[str]) -> JWTSettings | None:
    problems: list[str] = []
    secret = _env(env, "JWT_SECRET")
    key_file = _env(env, "JWT_PUBLIC_KEY_FILE")
    jwks_url = _env(env, "JWT_JWKS_URL")
    sources = [s for s in (secret, key_file, jwks_url) if s]
    if len(sources) != 1:
        problems.append(
            f"set exactly one of {PREFIX}JWT_SECRET, {PREFIX}JWT_PUBLIC_KEY_FILE, "
            f"{PREFIX}JWT_JWKS_URL (found {len(sources)})"
        )
    default_algs = "HS256" if secret else "RS256"
    algorithms = tuple(
        a.strip() for a in (_env(env, "JWT_ALGORITHMS") or default_algs).split(",") if a.strip()
    )
    allowed = HMAC_ALGORITHMS if secret else KEY_ALGORITHMS
    bad = [a for a in algorithms if a not in allowed]
    if bad:
        kind = "a shared secret" if secret else "a public key or JWKS"
        problems.append(
            f"{PREFIX}JWT_ALGORITHMS: {', '.join(bad)} cannot be used with {kind} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )
    if secret is not None:
        # RFC 7518 section 3.2: a key at least as long as the hash output.
        needed = max((int(a[2:]) // 8 for a in algorithms if a in HMAC_ALGORITHMS), default=32)
        if len(secret.encode()) < needed:
            problems.append(
                f"{PREFIX}JWT_SECRET must be at least {needed} bytes for "
                f"{', '.join(algorithms)} (RFC 7518 section 3.2)"
            )
    public_key: str | None = None
    if key_file is not None:
        try:
            public_key = Path(key_file).read_text()
        except OSError as err:
            problems.append(f"{PREFIX}JWT_PUBLIC_KEY_FILE={key_file!r}: {err.strerror}")
        else:
            if "PUBLIC KEY" not in public_key:
                problems.append(f"{PREFIX}JWT_PUBLIC_KEY_FILE={key_file!r} is not a PEM public key")
    if jwks_url is not None and not jwks_url.startswith(("https://", "http://")):
        problems.append(f"{PREFIX}JWT_JWKS_URL must be an http(s) URL")
    issuer = _env(env, "JWT_ISSUER")
    if issuer is None:
        # Subjects are unique only within one issuer: without it, two issuers trusted through
        # the same keys (a multi-tenant JWKS, a secret two services share) share identities.
        problems.append(
            f"{PREFIX}JWT_ISSUER is required: the exact 'iss' of the JWTs to accept "
            "(e.g. https://login.example.com/)"
        )
    leeway = _number(env, "JWT_LEEWAY", 30.0, problems, minimum=0)
    cache_size = int(_number(env, "JWT_CACHE_SIZE", 100_000, problems, minimum=0, integer=True))
    cache_bytes = int(
        _number(
            env,
            "JWT_CACHE_BYTES",
            64 * 1024 * 1024,
            problems,
            minimum=MIN_CACHE_BYTES,
            integer=True,
        )
    )
    max_age: float | None = None
    if _env(env, "JWT_MAX_AGE") is not None:
        max_age = _number(env, "JWT_MAX_AGE", 0.0, problems, minimum=1)
    found.extend(problems)
    if problems or issuer is None:
        return None
    return JWTSettings(
        algorithms=algorithms,
        secret=secret,
        public_key_pem=public_key,
        jwks_url=jwks_url,
        issuer=issuer,
        audience=_env(env, "JWT_AUDIENCE"),
        leeway=leeway,
        max_age=max_age,
        subject_claim=_env(env, "JWT_SUBJECT_CLAIM") or "sub",
        cache_size=cache_size,
        cache_bytes=cache_bytes,
    )
