"""Storage-node health monitor (imported as ``dfms.healthmon``).

Mapped from the top-level ``healthmon/`` folder by
``[tool.setuptools.package-dir]`` in pyproject.toml.
"""
