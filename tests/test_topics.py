"""topics: publish/subscribe decided without a server: a publish encoded once, subscribers behind, history.

The sinks here are lists with a switch for "the connection takes more": what a topic decides (what
each subscriber is sent, when, and when it is ended) is checked item by item. The same rules against
real servers and real clients are in tests/test_streams.py and tests/test_resume.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from synapse_cli import Registry, RPCError
from synapse_cli.core.topics import Topic


class ListSink:
    """A subscriber's connection: takes items while ``open``, calls back when opened again."""

    def __init__(self, open_: bool = True) -> None:
        self.got: list[bytes] = []
        self.open = open_
        self.callbacks: list[Callable[[], None]] = []
        self.started: list[int] = []  # the positions it was told it starts after (a topic with a history)

    def offer(self, payload: bytes) -> bool:
        if not self.open:
            return False
        self.got.append(payload)
        return True

    def when_writable(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)

    def start(self, position: int) -> None:
        assert not self.got, "told where it starts after an item"
        self.started.append(position)

    def reopen(self) -> None:
        self.open = True
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_publish_is_encoded_once_and_the_same_bytes_reach_every_subscriber() -> None:
    """Two subscribers receive the very same bytes object (no encoding per subscriber); publish counts them."""
    topic = Topic("t")
    one, two = ListSink(), ListSink()
    topic.open(one), topic.open(two)
    assert await topic.publish({"n": 1}) == 2
    assert one.got == [b'{"n":1}'] and one.got[0] is two.got[0]


async def test_a_value_json_cannot_carry_raises_to_the_publisher_and_ends_nobody() -> None:
    """publish(NaN): ValueError for the publisher; the subscriber is still subscribed and gets the next one."""
    topic = Topic("t")
    sink = ListSink()
    subscriber = topic.open(sink)
    with pytest.raises(ValueError, match="cannot publish float to 't'"):
        await topic.publish(float("nan"))
    assert await topic.publish(1) == 1
    assert sink.got == [b"1"] and subscriber.error is None


async def test_a_subscriber_behind_catches_up_in_order_then_goes_live() -> None:
    """A connection that stops taking items: its items are kept, sent in order once it takes more."""
    topic = Topic("t")
    fast, slow = ListSink(), ListSink()
    topic.open(fast)
    topic.open(slow)
    topic.deliver(b"1")
    slow.open = False
    for n in (2, 3, 4):
        topic.deliver(b"%d" % n)
    assert [len(topic.kept), slow.got] == [3, [b"1"]]
    slow.reopen()
    topic.deliver(b"5")
    assert fast.got == slow.got == [b"1", b"2", b"3", b"4", b"5"]
    assert len(topic.kept) == 0 and len(topic.live) == 2  # nothing kept once nobody needs it


async def test_a_subscriber_more_than_the_queue_behind_is_ended_with_32004() -> None:
    """queue_size 3: the fourth item a closed connection cannot take ends it with -32004; it is counted."""
    topic = Topic("t")
    topic.queue_size = 3
    sink = ListSink(open_=False)
    subscriber = topic.open(sink)
    assert [topic.deliver(b"%d" % n) for n in range(3)] == [1, 1, 1]
    assert topic.deliver(b"3") == 0
    assert subscriber.ended.done() and topic.too_slow == 1
    assert subscriber.error is not None and (subscriber.error.code, subscriber.error.message) == (
        -32004,
        "subscriber too slow: 3 items behind",
    )
    assert not topic.subscribers and not topic.kept


async def test_history_gives_positions_and_since_replays_what_was_missed_then_live() -> None:
    """history=3: items carry ,"position":N; since=2 gets 3, 4 then live 5; no gap, no duplicate."""
    topic = Topic("t", history=3)
    for n in (1, 2, 3, 4):
        topic.deliver(b'"v%d"' % n)
    sink = ListSink()
    topic.open(sink, since=2)
    topic.deliver(b'"v5"')
    assert sink.got == [b'"v3","position":3', b'"v4","position":4', b'"v5","position":5']
    latest = ListSink()
    topic.open(latest, since=5)  # nothing missed
    topic.deliver(b'"v6"')
    assert latest.got == [b'"v6","position":6']
    assert (sink.started, latest.started) == ([2], [5])


async def test_a_subscription_is_told_where_it_starts_before_any_item() -> None:
    """With a history, a subscriber without since is told the latest position first (what it would resume
    from); without a history, nothing: its items carry no position either."""
    topic = Topic("t", history=3)
    for n in (1, 2):
        topic.deliver(b"%d" % n)
    sink = ListSink()
    topic.open(sink)
    topic.deliver(b"3")
    assert (sink.started, sink.got) == ([2], [b'3,"position":3'])
    plain, untold = Topic("p"), ListSink()
    plain.open(untold)
    plain.deliver(b"1")
    assert (untold.started, untold.got) == ([], [b"1"])


@pytest.mark.parametrize(
    ("since", "message", "data"),
    [
        (0, "history lost: t: position 0 is no longer held (the oldest held is 2)", {"oldest": 2, "latest": 4}),
        (
            9,
            "history lost: t: position 9 is ahead of the latest, 4 (the history was reset)",
            {"oldest": 2, "latest": 4},
        ),
    ],
)
async def test_since_outside_the_history_is_32006_with_the_oldest_position(since: int, message: str, data: Any) -> None:
    """history=3 after 4 publishes holds 2..4: since=0 and since=9 are -32006 naming the oldest and latest."""
    topic = Topic("t", history=3)
    for n in (1, 2, 3, 4):
        topic.deliver(b"%d" % n)
    with pytest.raises(RPCError) as caught:
        topic.open(ListSink(), since=since)
    assert (caught.value.code, caught.value.message, caught.value.data) == (-32006, message, data)
    assert not topic.subscribers


async def test_ttl_makes_old_items_unreplayable() -> None:
    """ttl=10: items older than 10 s are not replayed (-32006 names the first one still fresh)."""
    clock = Clock()
    topic = Topic("t", history=100, ttl=10, clock=clock)
    topic.deliver(b"1")
    clock.now += 8
    topic.deliver(b"2")
    clock.now += 5
    sink = ListSink()
    topic.open(sink, since=1)
    assert sink.got == [b'2,"position":2']
    with pytest.raises(RPCError) as caught:
        topic.open(ListSink(), since=0)
    assert caught.value.data == {"oldest": 2, "latest": 2}
    clock.now += 10
    topic.deliver(b"3")
    assert [item.position for item in topic.kept] == [3]


def test_history_and_ttl_are_checked_when_the_topic_is_made() -> None:
    """A negative history, or a ttl without one, is a ValueError at registration."""
    with pytest.raises(ValueError, match="history must be a number of items >= 0"):
        Registry().topic("t", history=-1)
    with pytest.raises(ValueError, match="ttl needs history=N"):
        Registry().topic("t", ttl=5)


async def test_a_topic_with_history_lets_a_subscriber_fall_behind_by_its_history() -> None:
    """queue 2, history 5: a subscriber may fall 5 behind (those items are kept anyway), not 6."""
    topic = Topic("t", history=5)
    topic.queue_size = 2
    sink = ListSink(open_=False)
    subscriber = topic.open(sink)
    for n in range(5):
        topic.deliver(b"%d" % n)
    assert subscriber.error is None
    topic.deliver(b"5")
    assert subscriber.error is not None and subscriber.error.message == "subscriber too slow: 5 items behind"


async def test_items_iterates_in_process_and_since_replays() -> None:
    """Topic.items(since=...) in the same process: the kept values decoded, then live ones."""
    topic = Topic("t", history=10)
    await topic.publish({"a": 1})
    received: list[Any] = []

    async def read() -> None:
        # aclosing: leaving an async for does not close its async generator (Python finalizes it later,
        # on Python 3.13 after the wait_for below); closing it unsubscribes at once
        async with contextlib.aclosing(topic.items(since=0)) as items:
            async for value in items:
                received.append(value)
                if len(received) == 2:
                    return

    reader = asyncio.ensure_future(read())
    await asyncio.sleep(0)
    await topic.publish([2])
    await asyncio.wait_for(reader, 5)
    assert received == [{"a": 1}, [2]] and not topic.subscribers


async def test_a_typed_topic_encodes_its_values_as_declared() -> None:
    """registry.topic(item=set[int]): a set is published as a JSON array; list shows the item schema."""
    registry = Registry()
    topic = registry.topic("sets", item=set[int])
    sink = ListSink()
    topic.open(sink)
    await topic.publish({3})
    assert sink.got == [b"[3]"]
    assert registry.describe()[0]["result"] == {"items": {"type": "integer"}, "type": "array", "uniqueItems": True}


class ReplayBroker:
    """A broker whose history is further on than what has reached this process yet."""

    def __init__(self, entries: list[tuple[int, bytes]]) -> None:
        self.entries = entries

    async def ready(self) -> None:
        return None

    async def publish(self, topic: Topic, body: bytes) -> int:
        raise AssertionError("not published here")

    async def replay(self, topic: Topic, since: int) -> list[tuple[int, bytes]]:
        return [entry for entry in self.entries if entry[0] > since]

    async def latest(self, topic: Topic) -> int:
        return self.entries[-1][0]


async def test_a_broker_replay_ahead_of_this_process_sends_nothing_twice() -> None:
    """Redis replays up to position 3 while only 1 has reached this process: 2 and 3, when they arrive
    here, are not sent again; 4 is the next item."""
    topic = Topic("t", history=10)
    topic.broker = ReplayBroker([(1, b"1"), (2, b"2"), (3, b"3")])
    topic.deliver(b"1", 1)
    sink = ListSink()
    await topic.subscribe(sink, since=0)
    for position in (2, 3, 4):
        topic.deliver(b"%d" % position, position)
    assert sink.got == [b'1,"position":1', b'2,"position":2', b'3,"position":3', b'4,"position":4']
    topic.deliver(b"5", 5)
    assert sink.got[-1] == b'5,"position":5' and len(topic.live) == 1
    assert sink.started == [0]


async def test_with_a_broker_a_subscription_without_since_starts_after_the_brokers_latest() -> None:
    """Redis is at 3 while only 1 reached this process: a subscriber without since is told 3 (the same on
    every server), is not sent 2 and 3 when they arrive here, and gets 4."""
    topic = Topic("t", history=10)
    topic.broker = ReplayBroker([(1, b"1"), (2, b"2"), (3, b"3")])
    topic.deliver(b"1", 1)
    sink = ListSink()
    await topic.subscribe(sink)
    for position in (2, 3, 4):
        topic.deliver(b"%d" % position, position)
    assert (sink.started, sink.got) == ([3], [b'4,"position":4'])


async def test_a_broker_replay_behind_this_process_goes_on_from_what_arrived_here() -> None:
    """Redis replays up to 2 while 3 and 4 reached this process during the replay: 1..4 in order, once each."""
    topic = Topic("t", history=10)
    broker = ReplayBroker([(1, b"1"), (2, b"2")])
    topic.broker = broker
    topic.deliver(b"2", 2)
    sink = ListSink()
    replay = broker.replay

    async def slow_replay(topic_: Topic, since: int) -> list[tuple[int, bytes]]:
        topic.deliver(b"3", 3)  # arrives while the replay is on its way
        topic.deliver(b"4", 4)
        return await replay(topic_, since)

    broker.replay = slow_replay  # type: ignore[method-assign]
    await topic.subscribe(sink, since=0)
    assert sink.got == [b'1,"position":1', b'2,"position":2', b'3,"position":3', b'4,"position":4']
