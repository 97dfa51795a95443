"""Two-phase mark-sweep garbage collector (imported as ``dfms.gc``).

The folder is ``gc/`` at the top level but is only ever imported as
``dfms.gc``: a top-level package named ``gc`` would be shadowed by Python's
built-in ``gc`` module. The mapping is ``[tool.setuptools.package-dir]``.
"""
