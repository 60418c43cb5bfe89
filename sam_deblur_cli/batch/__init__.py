"""Many inputs: planning where each goes (``plan``) and running them (``local``).

Importing it stays light (no numpy, no torch). An engine plans with :mod:`.plan` and
deblurs each job with ``Deblurrer.new_record`` + ``Deblurrer.deblur_into``, as
:func:`.local.run_batch` does on this machine.
"""

from sam_deblur_cli.batch.local import BatchCallbacks, run_batch
from sam_deblur_cli.batch.plan import (
    Job,
    check_jobs,
    default_output,
    output_suffix,
    overlay_path,
    plan_batch,
    plan_files,
    scan_folder,
)

__all__ = [
    "BatchCallbacks",
    "Job",
    "check_jobs",
    "default_output",
    "output_suffix",
    "overlay_path",
    "plan_batch",
    "plan_files",
    "run_batch",
    "scan_folder",
]
