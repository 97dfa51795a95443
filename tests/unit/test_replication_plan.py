"""The replication plan for one chunk (dfms.replication.plan) and the copy throttle."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from dfms.replication.cluster import Throttle
from dfms.replication.plan import NodeStates, plan_chunk
from dfms.ring import Ring, RingBuilder

NODES = ("n1", "n2", "n3", "n4")
CHUNK = hashlib.sha256(b"a chunk").hexdigest()


def ring(*, draining: tuple[str, ...] = ()) -> Ring:
    b = RingBuilder()
    for node in NODES:
        b.add_node(node, f"zone-{node}")
    for node in draining:
        b.set_state(node, "draining")
    return Ring(b.build())


def states(*, down: tuple[str, ...] = (), lost: tuple[str, ...] = (),
           removed: tuple[str, ...] = ()) -> NodeStates:
    up = frozenset(n for n in NODES if n not in down and n not in lost and n not in removed)
    return NodeStates(up, frozenset(lost), frozenset(removed))


R = ring()
TARGETS = R.preference_list(CHUNK, 3)
OTHER = next(n for n in NODES if n not in TARGETS)


def test_a_fully_placed_chunk_needs_nothing() -> None:
    plan = plan_chunk(CHUNK, dict.fromkeys(TARGETS, "ok"), R, states(), 3)
    assert plan.converged and plan.complete
    assert plan.targets == tuple(TARGETS)


def test_a_missing_target_gets_a_copy() -> None:
    plan = plan_chunk(CHUNK, dict.fromkeys(TARGETS[:2], "ok"), R, states(), 3)
    assert plan.copy_to == (TARGETS[2],)
    assert not plan.surplus and not plan.converged


@pytest.mark.parametrize("bad", ["corrupt", "missing"])
def test_a_bad_replica_on_a_target_is_rewritten(bad: str) -> None:
    replicas = {**dict.fromkeys(TARGETS, "ok"), TARGETS[1]: bad}
    plan = plan_chunk(CHUNK, replicas, R, states(), 3)
    assert plan.copy_to == (TARGETS[1],)


def test_a_bad_replica_elsewhere_is_surplus() -> None:
    replicas = {**dict.fromkeys(TARGETS, "ok"), OTHER: "corrupt"}
    plan = plan_chunk(CHUNK, replicas, R, states(), 3)
    assert plan.surplus == (OTHER,) and not plan.copy_to


def test_a_briefly_down_target_is_waited_for_and_its_handoff_copy_kept() -> None:
    down = TARGETS[0]
    replicas = {**dict.fromkeys(TARGETS[1:], "ok"), OTHER: "ok"}  # OTHER stood in for it
    plan = plan_chunk(CHUNK, replicas, R, states(down=(down,)), 3)
    assert plan.targets == tuple(TARGETS)  # still a target: no repair storm
    assert plan.waiting == (down,) and not plan.copy_to
    assert not plan.complete  # so the handoff copy on OTHER is not deleted
    assert not plan.actionable  # nothing to do until it is back or lost


def test_a_lost_target_is_replaced_by_a_handoff() -> None:
    lost = TARGETS[0]
    plan = plan_chunk(CHUNK, dict.fromkeys(TARGETS, "ok"), R, states(lost=(lost,)), 3)
    assert lost not in plan.targets and OTHER in plan.targets
    assert plan.copy_to == (OTHER,)
    assert lost not in plan.surplus  # it cannot be deleted while down: left alone


def test_a_node_back_from_loss_gets_its_copy_and_the_handoff_is_trimmed() -> None:
    replicas = {**dict.fromkeys(TARGETS[1:], "ok"), OTHER: "ok"}
    plan = plan_chunk(CHUNK, replicas, R, states(), 3)
    assert plan.copy_to == (TARGETS[0],) and plan.surplus == (OTHER,)
    assert plan.complete and plan.actionable  # the trim may follow the copy


def test_a_draining_node_is_never_a_target_and_is_emptied() -> None:
    drained = TARGETS[0]
    r = ring(draining=(drained,))
    plan = plan_chunk(CHUNK, dict.fromkeys(TARGETS, "ok"), r, states(), 3)
    assert drained not in plan.targets
    assert plan.surplus == (drained,) and len(plan.copy_to) == 1


def test_rows_on_removed_nodes_are_dropped_and_never_counted() -> None:
    gone = TARGETS[0]
    plan = plan_chunk(CHUNK, dict.fromkeys(TARGETS, "ok"), R, states(removed=(gone,)), 3)
    assert plan.drop_rows == (gone,)
    assert gone not in plan.held


def test_adding_a_node_moves_about_a_quarter_of_replicas() -> None:
    """3 nodes, n=3: every chunk everywhere. A 4th node takes one replica of ~3/4 of the
    chunks, i.e. ~1/4 of all replicas, and nothing moves between the old nodes."""
    b = RingBuilder()
    for node in NODES[:3]:
        b.add_node(node, f"zone-{node}")
    three = b.build()
    b4 = RingBuilder(three)
    b4.add_node("n4", "zone-n4")
    four = Ring(b4.build())
    moved = 0
    chunks = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4000)]
    for chunk in chunks:
        plan = plan_chunk(chunk, dict.fromkeys(NODES[:3], "ok"), four, states(), 3)
        assert plan.copy_to in ((), ("n4",))
        assert len(plan.surplus) == len(plan.copy_to)
        moved += len(plan.copy_to)
    assert 0.20 <= moved / (3 * len(chunks)) <= 0.30


async def test_the_throttle_paces_to_its_rate() -> None:
    loop = asyncio.get_running_loop()
    throttle = Throttle(1_000_000)
    start = loop.time()
    for _ in range(5):
        await throttle.take(20_000)  # 5 x 20 ms of budget
    assert loop.time() - start >= 0.08  # the first take starts at once
    # At any real rate a terabyte would take hours: 0 must mean no pacing at all.
    await asyncio.wait_for(Throttle(0).take(10**12), timeout=10)
