"""A whole training run: check, read the data, train, export (what ``sam-deblur train`` calls).

Everything that can be refused is refused before the run folder is created, so a bad
dataset, crop, ``--init`` or existing folder leaves nothing behind and overwrites nothing.
Under torchrun every rank calls :func:`train_run`; only rank 0 writes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sam_deblur_cli.errors import UsageError
from sam_deblur_cli.train.config import TrainConfig, check, load_config, save_config

if TYPE_CHECKING:
    from sam_deblur_cli.datasets import Issue
    from sam_deblur_cli.train.data import MaskSource, Progress, TrainImage
    from sam_deblur_cli.train.dist import Dist
    from sam_deblur_cli.train.loop import Callbacks, Trainer, TrainResult

logger = logging.getLogger(__name__)

_LISTED = 3  # bad files named in the error line


@dataclass
class RunOutcome:
    """What the run left: the result, the exported model (None when interrupted) and the
    name it was registered under (None when not registered)."""

    result: TrainResult
    config: TrainConfig
    model_path: Path | None = None
    registered: str | None = None


def check_new_run_dir(run_dir: Path) -> None:
    """A new run needs a folder that does not exist yet (or is empty)."""
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UsageError(
            f"{run_dir} already exists; pass --resume {run_dir} to continue that run, or "
            "choose a new folder with -o."
        )


def resolve_config(cfg: TrainConfig | None, *, resume: Path | None, world: int = 1) -> TrainConfig:
    """The checked config of a new run, or the saved one of the run at ``resume``."""
    if resume is not None:
        if not resume.is_dir():
            raise UsageError(f"{resume} is not a folder; pass the RUN_DIR of a training run.")
        saved = load_config(resume)
        return check(saved, world)
    if cfg is None:
        raise UsageError("Pass a dataset and -o RUN_DIR, or --resume RUN_DIR.")
    cfg = check(cfg, world)
    check_new_run_dir(Path(cfg.run_dir))
    return cfg


def mask_source(cfg: TrainConfig, device: str) -> MaskSource | None:
    """Where the run's masks come from (None for the plain variant)."""
    from sam_deblur_cli.train import data

    if cfg.variant == "plain":
        return None
    if cfg.masks_from == "dataset":
        return data.dataset_masks
    predeblur = cfg.masks_from.split(":", 1)[1] if cfg.masks_from.startswith("predeblur:") else None
    if predeblur == "":
        raise UsageError("--masks-from predeblur:MODEL needs a model name after the colon.")
    return data.generated_masks(cfg.recipe, device=device, predeblur=predeblur)


def load_images(
    folder: Path,
    cfg: TrainConfig,
    masks: MaskSource | None,
    *,
    what: str = "training",
    progress: Progress | None = None,
    on_issue: Callable[[Issue], None] | None = None,
) -> list[TrainImage]:
    """Decode the pairs at ``folder``; bad files are refused (UsageError naming them) unless
    ``cfg.skip_bad_pairs``, when they are reported through ``on_issue`` and left out."""
    from sam_deblur_cli.train.data import read_pairs

    images, issues = read_pairs(folder, variant=cfg.variant, masks=masks, progress=progress)
    for issue in issues:
        logger.info("%s: %s", issue.name, issue.reason)
        if on_issue is not None:
            on_issue(issue)
    if issues and not cfg.skip_bad_pairs:
        named = "; ".join(f"{i.name}: {i.reason}" for i in issues[:_LISTED])
        more = f" (and {len(issues) - _LISTED} more)" if len(issues) > _LISTED else ""
        raise UsageError(
            f"{len(issues)} {what} file(s) in {folder} cannot be used: {named}{more}; fix them "
            "or pass --skip-bad-pairs to train without them."
        )
    if not images:
        raise UsageError(f"{folder} holds no usable {what} pair; add input/ and target/ images.")
    return images


def train_run(
    cfg: TrainConfig | None,
    *,
    resume: Path | None = None,
    callbacks: Callbacks | None = None,
    progress: Progress | None = None,
    on_issue: Callable[[Issue], None] | None = None,
    register: bool = True,
    trainer_hook: Callable[[Trainer], None] | None = None,
) -> RunOutcome:
    """Run (or resume) training to the end or to a stop request; export and register the
    model when it completes. ``trainer_hook`` receives the Trainer before it runs (the CLI
    connects Ctrl-C to ``request_stop`` there)."""
    from sam_deblur_cli.train.data import check_crop
    from sam_deblur_cli.train.dist import Dist, init_distributed, pick_device
    from sam_deblur_cli.train.loop import Trainer

    dist = Dist.from_env()
    cfg = resolve_config(cfg, resume=resume, world=dist.world)
    device = pick_device(cfg, dist)
    init_distributed(dist, device)
    masks = mask_source(cfg, device)
    images = _rank_ordered(
        dist, lambda: load_images(Path(cfg.data), cfg, masks, progress=progress, on_issue=on_issue)
    )
    check_crop(images, cfg.crop)
    val: Sequence[TrainImage] = ()
    if cfg.val:
        val_masks = masks if cfg.masks_from != "dataset" or _has_masks(Path(cfg.val)) else None
        if val_masks is None and cfg.variant != "plain":
            raise UsageError(f"{cfg.val} has no mask folder; add input_mask/ or grouped_masks/.")
        val = load_images(Path(cfg.val), cfg, val_masks, what="validation", on_issue=on_issue)
    trainer = Trainer(
        cfg,
        images,
        val_images=val,
        resume=resume is not None,
        callbacks=callbacks,
        dist=dist,
        device=device,
    )
    if dist.is_main:
        run_dir = Path(cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume is None:
            save_config(cfg, run_dir)
        from sam_deblur_cli.files import remove_stale_temporaries

        for folder in (run_dir, run_dir / "checkpoints"):  # a killed run's half-saved files
            remove_stale_temporaries(folder)
    if trainer_hook is not None:
        trainer_hook(trainer)
    result = trainer.run()
    outcome = RunOutcome(result, cfg)
    if dist.is_main and not result.interrupted:
        from sam_deblur_cli.train.export import export_model

        outcome.model_path, outcome.registered = export_model(trainer, register=register)
    return outcome


def _has_masks(folder: Path) -> bool:
    from sam_deblur_cli.datasets import open_dataset

    return open_dataset(folder).has_masks


def _rank_ordered(dist: Dist, read: Callable[[], list[TrainImage]]) -> list[TrainImage]:
    """Rank 0 reads first (filling the mask cache), then the others, which hit it."""
    if dist.world == 1:
        return read()
    import torch.distributed as td

    images = read() if dist.is_main else []
    td.barrier()
    return images if dist.is_main else read()
