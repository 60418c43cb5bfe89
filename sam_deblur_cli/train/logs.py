"""The run's logs (after timm's ``utils/summary.py``): ``log.csv`` rows and, when
TensorBoard is installed, the same rows as scalars. Only rank 0 writes them."""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOG_FIELDS = ("step", "loss", "lr", "images_per_s", "val_psnr", "val_ssim")


class CsvLog:
    """``log.csv`` rows, appended and flushed one by one; on resume, cut back to the step."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        from sam_deblur_cli.files import write_text

        self.path = path
        rows: list[dict[str, str]] = []
        if resume_step is not None and path.is_file():
            with path.open(newline="", encoding="utf-8") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resume_step]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=LOG_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(path, text.getvalue())

    def append(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, fieldnames=LOG_FIELDS, lineterminator="\n").writerow(row)
            handle.flush()
            os.fsync(handle.fileno())


class TensorBoardLog:
    """The log rows as TensorBoard scalars in ``folder``, when TensorBoard is installed."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    @classmethod
    def open(cls, folder: Path) -> TensorBoardLog | None:
        """A writer into ``folder``, or None (logged once) when TensorBoard is not installed."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.debug("TensorBoard is not installed: log.csv only")
            return None
        return cls(SummaryWriter(log_dir=str(folder)))

    def append(self, row: dict[str, Any]) -> None:
        for key in LOG_FIELDS[1:]:
            if row.get(key, "") != "":
                self.writer.add_scalar(key, float(row[key]), int(row["step"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
