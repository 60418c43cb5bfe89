"""The package version, written only here (pyproject.toml reads it: ``[tool.hatch.version]``)."""

__version__ = "0.1.0"
