"""DFMS: a distributed file store."""

# The one place the version is written: setuptools reads it for the distribution's
# metadata (pyproject.toml, [tool.setuptools.dynamic]), so `dfms.__version__` and
# `importlib.metadata.version("dfms")` always agree.
__version__ = "0.1.0"
