"""The ring's exception tree: catch ``RingError`` for anything ring-related."""

from dfms.errors import DfmsError


class RingError(DfmsError):
    """Base class of every error raised by ``dfms.ring``."""


class InvalidRing(RingError, ValueError):
    """Ring data (or a change to it) breaks a rule; the message names the rule."""


class RingConflict(RingError):
    """A ring was saved against a stale epoch: someone else saved first."""
