"""How a CreateTopics answer is read: a refused topic is an error, never a silent success."""

from __future__ import annotations

import pytest

from dfms.errors import DependencyUnavailable
from dfms.events.topics import _created


def test_created_topics_are_those_without_an_error() -> None:
    # v0 answers carry no message; 36 = TOPIC_ALREADY_EXISTS (another process was first).
    assert _created([("dfms.chunks", 0), ("dfms.files", 36, None)], 3) == ["dfms.chunks"]
    assert _created([], 1) == []


def test_a_refused_topic_raises_naming_the_broker_reason() -> None:
    answer = [("dfms.chunks", 0, None),
              ("dfms.files", 38, "Replication factor: 3 larger than available brokers: 1.")]
    with pytest.raises(DependencyUnavailable) as info:
        _created(answer, 3)
    message = str(info.value)
    assert "replication factor 3" in message
    assert "dfms.files (InvalidReplicationFactorError: Replication factor: 3 larger" in message
    assert "dfms.chunks" not in message
