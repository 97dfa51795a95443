"""Content-defined chunkers (imported as ``dfms.chunker``).

This folder sits at the repository's top level and is mapped to
``dfms.chunker`` by ``[tool.setuptools.package-dir]`` in pyproject.toml.
"""
