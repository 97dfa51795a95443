"""DFMS: a distributed file store."""

__version__ = "0.1.0"
