"""Topics across processes and machines: Redis pub/sub (``synapse serve --broker redis://HOST:PORT/DB``).

Every server process keeps one Redis connection subscribed to ``synapse:topic:*`` and hands each
message to its local subscribers; a publish is one ``PUBLISH`` of the value's JSON (encoded once, by
the publishing process), so it reaches every ``--workers`` process and every server sharing that
Redis, the publishing process included, and no process decodes and encodes it again.

A topic with a history (``registry.topic(name, history=N, ttl=...)``) keeps it in Redis, so a client
that reconnects to another server resumes there too: one script (atomic) takes the next position
(``INCR synapse:position:NAME``), appends the item to the Redis Stream ``synapse:history:NAME``
(``XADD`` with ``MAXLEN ~ N``, the entry id ``0-<position>``, the Redis clock's milliseconds in ``t``
for ``ttl``) and publishes ``<position> <json>``. A subscriber with ``since`` is replayed with
``XRANGE``; positions are the same on every server, and one without ``since`` starts after the latest
position Redis holds (``GET``), which it is told first.

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
from synapse_cli.core.topics import Topic, history_lost

__all__ = ["CHANNEL_PREFIX", "HISTORY_PREFIX", "POSITION_PREFIX", "RedisBroker"]

logger = logging.getLogger("synapse.server")

CHANNEL_PREFIX = "synapse:topic:"
HISTORY_PREFIX = "synapse:history:"  # a Redis Stream per topic with a history
POSITION_PREFIX = "synapse:position:"  # the latest position of each such topic
# KEYS: position, history. ARGV: channel, body, history (items), ttl (ms, 0: none).
_PUBLISH_SCRIPT = """
local position = redis.call('INCR', KEYS[1])
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '0-' .. position, 't', ms, 'v', ARGV[2])
if tonumber(ARGV[4]) > 0 then
    redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return redis.call('PUBLISH', ARGV[1], position .. ' ' .. ARGV[2])
"""
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
        self._publish_script: Any = None

    def _start(self) -> None:
        if self._reader is None:
            import redis.asyncio

            self._client = redis.asyncio.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=None)
            self._publish_script = self._client.register_script(_PUBLISH_SCRIPT)
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

    async def publish(self, topic: Topic, body: bytes) -> int:
        """``PUBLISH`` the JSON (with a history: keep it too); how many server processes received it."""
        self._start()
        import redis

        name = topic.name
        try:
            if not topic.history:
                receivers: int = await self._client.publish(CHANNEL_PREFIX + name, body)
            else:
                keys = [POSITION_PREFIX + name, HISTORY_PREFIX + name]
                ttl_ms = round(topic.ttl * 1000) if topic.ttl is not None else 0
                receivers = await self._publish_script(
                    keys=keys, args=[CHANNEL_PREFIX + name, body, topic.history, ttl_ms]
                )
        except (redis.RedisError, OSError) as exc:
            raise RPCError(f"broker unavailable: {exc}", BROKER_UNAVAILABLE) from None
        return receivers

    async def replay(self, topic: Topic, since: int) -> list[tuple[int, bytes]]:
        """The kept items of ``topic`` after position ``since``, from Redis; RPCError -32006 when they are gone."""
        self._start()
        import redis

        name = topic.name
        try:
            async with self._client.pipeline(transaction=True) as pipe:  # one moment: MULTI ... EXEC
                pipe.get(POSITION_PREFIX + name)
                pipe.xrange(HISTORY_PREFIX + name, f"0-{since + 1}", "+")
                pipe.xrange(HISTORY_PREFIX + name, "-", "+", count=1)
                pipe.time()
                latest_text, entries, first, now = await pipe.execute()
        except (redis.RedisError, OSError) as exc:
            raise RPCError(f"broker unavailable: {exc}", BROKER_UNAVAILABLE) from None
        latest = int(latest_text or 0)
        expired = (now[0] * 1000 + now[1] // 1000 - topic.ttl * 1000) if topic.ttl is not None else None
        replay = [(_position(entry_id), fields[b"v"]) for entry_id, fields in entries if _fresh(fields, expired)]
        if since == latest or (replay and replay[0][0] == since + 1):
            return replay  # nothing missed, or every item after ``since`` is still there
        if since > latest:
            replay = [(_position(entry_id), fields[b"v"]) for entry_id, fields in first if _fresh(fields, expired)]
        raise history_lost(name, since, replay[0][0] if replay else latest + 1, latest)
        return replay

    async def latest(self, topic: Topic) -> int:
        """The latest position of ``topic`` in Redis (0 before its first publish); RPCError -32005 when away."""
        self._start()
        import redis

        try:
            latest = await self._client.get(POSITION_PREFIX + topic.name)
        except (redis.RedisError, OSError) as exc:
            raise RPCError(f"broker unavailable: {exc}", BROKER_UNAVAILABLE) from None
        return int(latest or 0)

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
        data: bytes = message["data"]
        position = None
        if topic.history:  # "<position> <json>"
            head, _, data = data.partition(b" ")
            if not head.isdigit():
                logger.warning("broker: a message on %s is not <position> <JSON>; dropped", name)
                return
            position = int(head)
        try:
            orjson.loads(data)  # once per publish and process, not per subscriber: junk never reaches them
        except orjson.JSONDecodeError:
            logger.warning("broker: a message on %s is not JSON; dropped", name)
            return
        topic.deliver(data, position)


def _position(entry_id: bytes) -> int:
    """The position in a history entry's id, ``0-<position>``."""
    return int(entry_id.partition(b"-")[2])


def _fresh(fields: dict[bytes, bytes], expired: float | None) -> bool:
    """True when an entry is within the topic's ttl (or it has none)."""
    return expired is None or int(fields.get(b"t", b"0")) >= expired


def _redacted(url: str) -> str:
    """The URL without its password."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, credentials = head.partition("://")
    user = credentials.partition(":")[0]
    return f"{scheme}://{user}:***@{tail}" if user else f"{scheme}://***@{tail}"
