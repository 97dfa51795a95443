"""Consistent-hash ring (imported as ``dfms.ring``).

This folder sits at the repository's top level and is mapped to ``dfms.ring``
by ``[tool.setuptools.package-dir]``: a bare ``ring`` package would collide
with other distributions of that name.

Layout, after OpenStack Swift: ``model`` holds the ring data (frozen values),
``ring`` the lookup structure built from it, ``builder`` the editing tool,
``serialize`` the canonical bytes, ``store`` the PostgreSQL persistence and
the ``RingWatcher`` that follows it.
"""

from dfms.ring.builder import RingBuilder
from dfms.ring.errors import InvalidRing, RingConflict, RingError
from dfms.ring.model import (
    ACTIVE,
    DEFAULT_VNODES_PER_WEIGHT,
    DRAINING,
    RingData,
    RingMember,
    validate,
)
from dfms.ring.ring import Ring
from dfms.ring.serialize import checksum, dumps, loads
from dfms.ring.store import RingWatcher, load_latest, save

__all__ = [
    "ACTIVE",
    "DEFAULT_VNODES_PER_WEIGHT",
    "DRAINING",
    "InvalidRing",
    "Ring",
    "RingBuilder",
    "RingConflict",
    "RingData",
    "RingError",
    "RingMember",
    "RingWatcher",
    "checksum",
    "dumps",
    "load_latest",
    "loads",
    "save",
    "validate",
]
