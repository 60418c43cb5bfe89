"""`sam-deblur` sub-commands: evaluate (being built; see docs/DESIGN.md)."""

from __future__ import annotations

from sam_deblur_cli.cli.app import app  # noqa: F401
