"""The one way the gateway connects to Redis: a single server or a Redis Cluster, TLS by URL.

`rediss://` turns TLS on (certificates verified against the system store; a managed Redis
with a private CA takes `?ssl_ca_certs=/path` in the URL). With `cluster=True` the URL names
any node; the client discovers the others and follows MOVED/ASK redirections. Every key the
gateway uses together in one script or transaction shares a `{hash tag}`, so each such
operation lands in one slot.

The cluster client answers the same commands the stores use, so it is typed as
`redis.asyncio.Redis` for them (redis-py has no common base class of the two). Its errors
are all `RedisError`s, as the single client's are: redis-py raises a bare
`RedisClusterException` when it cannot map a slot to a node (a master failed and not yet
replaced, "All slots are not covered"), which every store translates, like any other Redis
failure, into 503 `store_unavailable`.
"""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ClusterError, RedisClusterException
from redis.exceptions import ConnectionError as RedisConnectionError

SOCKET_TIMEOUT = 2.0
HEALTH_CHECK_INTERVAL = 15
MAX_CONNECTIONS = 1000


async def open_redis(url: str, *, cluster: bool = False) -> aioredis.Redis:
    """`connect_redis`, and for a cluster its slot map loaded now (pub/sub needs it first).

    A single server is connected lazily, so the gateway starts while Redis is down (readiness
    reports it). A cluster client must learn the slot map before anything else; when no node
    answers, start-up fails with the Redis error and the orchestrator restarts the process.
    """
    client = connect_redis(url, cluster=cluster)
    if cluster:
        try:
            await cast(aioredis.RedisCluster, client).initialize()
        except Exception:
            await client.aclose()
            raise
    return client


class _ClusterPipeline(ClusterPipeline):
    """A cluster pipeline whose failures are `RedisError`s."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        """Run the pipeline; a slot without a node is a `ClusterError`."""
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except RedisClusterException as err:
            raise ClusterError(str(err)) from err


class _RedisCluster(aioredis.RedisCluster):
    """redis-py's cluster client, whose failures are `RedisError`s (scripts included)."""

    async def initialize(self, *args: Any, **kwargs: Any) -> Any:
        """Load the slot map (pipelines load it too); an incomplete one is a `ClusterError`."""
        try:
            return await super().initialize(*args, **kwargs)
        except RedisClusterException as err:
            raise ClusterError(str(err)) from err

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """Run one command; a slot without a node is a `ClusterError`."""
        try:
            return await super().execute_command(*args, **kwargs)
        except RedisClusterException as err:
            raise ClusterError(str(err)) from err

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> Any:
        """A pipeline that translates the same way."""
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # raises, as redis-py does
        # As redis-py's own pipeline() does; its stubs leave an attribute abstract.
        return _ClusterPipeline(self, transaction)  # type: ignore[abstract]


def connect_redis(url: str, *, cluster: bool = False) -> aioredis.Redis:
    """A client for `url` (redis://, rediss://, unix://); a cluster client when `cluster`."""
    if cluster:
        client = _RedisCluster.from_url(
            url,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            health_check_interval=HEALTH_CHECK_INTERVAL,
        )
        return cast(aioredis.Redis, client)
    return aioredis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        health_check_interval=HEALTH_CHECK_INTERVAL,
        # redis-py's pool raises "Too many connections" past 100 by default: a 64-connection
        # load, with the R and W lookups of a request running at once, crossed it (503s).
        # Connections are opened only as concurrency needs them, so a high cap costs nothing.
        max_connections=MAX_CONNECTIONS,
        # A pooled connection left idle through a Redis restart fails on first use; one
        # immediate retry on a fresh connection hides that. Timeouts are not retried: an
        # unreachable Redis would double every wait.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
