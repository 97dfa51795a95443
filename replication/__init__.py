"""Replication manager: repair, rebalance and scrub (imported as ``dfms.replication``).

Mapped from the top-level ``replication/`` folder by
``[tool.setuptools.package-dir]`` in pyproject.toml.
"""
