"""`python -m sam_deblur_cli` runs the CLI."""

import sys

from sam_deblur_cli.cli import main

sys.exit(main())
