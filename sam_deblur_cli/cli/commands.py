"""Import every command module so that each registers its commands on ``app``."""

from sam_deblur_cli.cli import deblur, evaluate, masks, serve, train, weights  # noqa: F401
