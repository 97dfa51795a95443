"""Consumer lag: messages on a group's partitions past what it has handled.

Computed in the consumer from what it already knows (the high-water marks aiokafka
gets with every fetch, the offsets it handled), so it costs no request to the broker.
A topic is a label, a partition is not: the topics are a fixed set, partitions are
summed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from aiokafka.structs import TopicPartition
from prometheus_client import Gauge

LAG = Gauge("dfms_consumer_lag_messages",
            "Messages on a consumer group's partitions it has not handled yet",
            ["group", "topic"])


class _Consumer(Protocol):
    def assignment(self) -> set[TopicPartition]: ...

    def highwater(self, partition: TopicPartition) -> int | None: ...


def topic_lag(ends: Mapping[TopicPartition, int | None],
              handled: Mapping[TopicPartition, int]) -> dict[str, int]:
    """Lag per topic. A partition without a known end is left out; one with nothing
    handled yet counts as caught up (the next fetch hands its backlog over at once)."""
    lag: dict[str, int] = {}
    for tp, end in ends.items():
        if end is None:
            continue
        lag[tp.topic] = lag.get(tp.topic, 0) + max(end - handled.get(tp, end), 0)
    return lag


class LagMeter:
    def __init__(self, group: str, topics: Iterable[str]) -> None:
        self.group = group
        self._handled: dict[TopicPartition, int] = {}
        for topic in topics:
            LAG.labels(group, topic).set(0)  # a series from the start, for alerts

    def handled(self, tp: TopicPartition, next_offset: int) -> None:
        self._handled[tp] = next_offset

    def update(self, consumer: _Consumer) -> None:
        assigned = consumer.assignment()
        # A partition that went to another member and came back has a stale offset.
        self._handled = {tp: o for tp, o in self._handled.items() if tp in assigned}
        lag = topic_lag({tp: consumer.highwater(tp) for tp in assigned}, self._handled)
        for topic, n in lag.items():
            LAG.labels(self.group, topic).set(n)
