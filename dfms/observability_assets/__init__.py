"""Observability files the installed code reads: the Prometheus alert rules.

``observability/prometheus/alerts.yml`` is the one source. ``alerts.yml`` here is a
symlink to it, so the sdist and the wheel carry the file itself (package data in
pyproject.toml) and a DFMS installed from a wheel, which has no ``observability/``
folder, still finds its rules; in the repository the two cannot differ
(``tests/unit/test_alert_rules.py`` checks the link and the bytes).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

ALERT_RULES_FILE = "alerts.yml"


def alert_rules_path() -> Path:
    """The packaged Prometheus alert rules (a plain file once installed from a wheel)."""
    return Path(str(files(__name__) / ALERT_RULES_FILE))
