"""Topics across processes and machines: Redis pub/sub (``synapse serve --broker redis://HOST:PORT/DB``).

Every server process keeps one Redis connection subscribed to ``synapse:topic:*`` and hands each
message to its local subscribers; a publish is one ``PUBLISH``, so it reaches every ``--workers``
process and every server sharing that Redis, the publishing process included.

When Redis goes away, nothing stops silently: every subscription of the process ends with -32005
"broker unavailable" (clients subscribe again), ``publish`` raises the same error to its caller, and
new subscriptions are refused with it until the connection is back. The process reconnects by itself
with a capped exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import orjson

from synapse_cli.core.errors import RPCError
from synapse_cli.core.protocol import BROKER_UNAVAILABLE
from synapse_cli.core.topics import Topic

__all__ = ["CHANNEL_PREFIX", "RedisBroker"]

logger = logging.getLogger("synapse.server")

CHANNEL_PREFIX = "synapse:topic:"
_RETRY_MAX = 5.0  # seconds between reconnection attempts, at most


class RedisBroker:
    """Redis pub/sub for the topics of one process (redis-py's asyncio client, imported on first use)."""

    def __init__(self, url: str, topics: Mapping[str, Topic]) -> None:
        self.url = url
        self.topics = topics
        self._client: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._connected: asyncio.Event | None = None
        self._first: asyncio.Future[None] | None = None  # the first connection attempt's outcome

    def _start(self) -> None:
        if self._reader is None:
            import redis.asyncio

            self._client = redis.asyncio.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=None)
            self._connected = asyncio.Event()
            self._first = asyncio.get_running_loop().create_future()
            self._reader = asyncio.get_running_loop().create_task(self._read())

    async def ready(self) -> None:
        """Return once this process receives publishes; RPCError -32005 while Redis cannot be reached."""
        self._start()
        assert self._first is not None and self._connected is not None
        await asyncio.shield(self._first)
        if not self._connected.is_set():
            raise RPCError("broker unavailable: cannot subscribe while Redis is unreachable", BROKER_UNAVAILABLE)

    async def publish(self, topic: str, value: Any) -> int:
        """``PUBLISH`` the value; the number of server processes that received it."""
        self._start()
        import redis

        try:
            receivers: int = await self._client.publish(CHANNEL_PREFIX + topic, orjson.dumps(value))
        except (redis.RedisError, OSError) as exc:
            raise RPCError(f"broker unavailable: {exc}", BROKER_UNAVAILABLE) from None
        return receivers

    async def close(self) -> None:
        """Stop listening and close the connection."""
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    async def _read(self) -> None:
        import redis

        assert self._connected is not None and self._first is not None
        delay = 0.1
        while True:
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.psubscribe(CHANNEL_PREFIX + "*")
                    async for message in pubsub.listen():
                        if message.get("type") == "psubscribe":  # Redis confirmed: deliveries flow
                            self._connected.set()
                            if not self._first.done():
                                self._first.set_result(None)
                            logger.info("broker connected: %s", _redacted(self.url))
                            delay = 0.1
                        self._deliver(message)
            except (redis.RedisError, OSError) as exc:
                was_connected = self._connected.is_set()
                self._connected.clear()
                if not self._first.done():
                    self._first.set_result(None)
                if was_connected:
                    logger.warning("broker connection lost (%s); ending subscriptions, reconnecting", exc)
                    error = RPCError(
                        "broker unavailable: connection to Redis lost; subscribe again", BROKER_UNAVAILABLE
                    )
                    for topic in self.topics.values():
                        topic.fail_all(error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)

    def _deliver(self, message: dict[str, Any]) -> None:
        if message.get("type") != "pmessage":
            return
        channel = message["channel"]
        name = (channel.decode() if isinstance(channel, bytes) else str(channel))[len(CHANNEL_PREFIX) :]
        topic = self.topics.get(name)
        if topic is None:
            return
        try:
            value = orjson.loads(message["data"])
        except orjson.JSONDecodeError:
            logger.warning("broker: a message on %s is not JSON; dropped", name)
            return
        topic.deliver(value)


def _redacted(url: str) -> str:
    """The URL without its password."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, credentials = head.partition("://")
    user = credentials.partition(":")[0]
    return f"{scheme}://{user}:***@{tail}" if user else f"{scheme}://***@{tail}"
