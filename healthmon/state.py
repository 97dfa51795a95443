"""The node-health state machine: a pure function of the stored state and probe outcomes.

Rules (K = ``failures_to_down``, M = ``successes_to_healthy``; "consecutive"
means a success resets the failure count and a failure resets the success
count):

- healthy + failure → suspect, the first failure of a streak (→ down at once when K = 1,
  since that one failure already is K consecutive failures);
- suspect + failure → down once the streak reaches K failures, counting the one that
  made the node suspect when this monitor's probe did; otherwise it stays suspect;
- down + failure → down;
- suspect or down + success → healthy once the streak reaches M successes; before that
  the node keeps its state (a suspect node is not cleared by a single lucky probe, and a
  down node does not pass through suspect on its way back);
- healthy + success → healthy.

A node therefore never goes healthy → down without K consecutive failures, and never
down/suspect → healthy without M consecutive successes.

The counters live in the memory of one monitor. When a monitor (re)starts, or finds
that the stored state differs from what it tracked (another monitor, an operator or
the passive marking of a chunk service or replication manager changed it), it starts
again from the stored state with ``seed()``: a down node counts as K failures, a
suspect node counts none and no successes are counted. A stored ``suspect`` says that
somebody saw the node fail, not that a probe did (``dfms.healthmon.passive`` marks a
node suspect after failed chunk writes), so it takes K failed probes of this monitor to
go down and M good ones to come back, exactly as from healthy. Several monitors
therefore each count their own streaks; the stored state is the only thing they share.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Health(StrEnum):
    HEALTHY = "healthy"
    SUSPECT = "suspect"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class Thresholds:
    failures_to_down: int  # K
    successes_to_healthy: int  # M

    def __post_init__(self) -> None:
        if self.failures_to_down < 1 or self.successes_to_healthy < 1:
            raise ValueError("both thresholds must be at least 1")


@dataclass(frozen=True, slots=True)
class NodeTrack:
    """A node's state and its current streak (only one of the two counts is non-zero)."""

    health: Health
    failures: int = 0
    successes: int = 0


def seed(health: Health | str, limits: Thresholds) -> NodeTrack:
    """The track to start from when only the stored state is known (a suspect node
    starts with no failed probe counted: see the module docstring)."""
    health = Health(health)
    if health is Health.DOWN:
        return NodeTrack(health, failures=limits.failures_to_down)
    return NodeTrack(health)


def step(track: NodeTrack, ok: bool, limits: Thresholds) -> NodeTrack:
    """The track after one probe outcome."""
    if ok:
        # Capped so a node that stays healthy for months does not grow a big number.
        successes = min(track.successes + 1, limits.successes_to_healthy)
        healed = successes >= limits.successes_to_healthy
        return NodeTrack(Health.HEALTHY if healed else track.health, successes=successes)
    failures = min(track.failures + 1, limits.failures_to_down)
    # A down node stays down even when its streak restarts (a success, then a failure).
    if track.health is Health.DOWN or failures >= limits.failures_to_down:
        return NodeTrack(Health.DOWN, failures=failures)
    return NodeTrack(Health.SUSPECT, failures=failures)
