"""The resolved configuration of a training run, saved as ``RUN_DIR/config.json``.

Plain data, no torch: the CLI builds a :class:`TrainConfig`, the library checks and fills
it in (:func:`resolve`), and the run folder keeps the result so ``--resume`` (or anyone
with the folder) continues or repeats the run exactly. The defaults are upstream's recipe
(upstream.md section 8): AdamW lr 1e-3, wd 1e-3, betas (0.9, 0.9), cosine to 1e-7 over
200k steps, batch 32, 256 x 256 crops, PSNR loss, gradient-norm clipping at 0.01, fp32.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sam_deblur_cli.errors import CheckpointError, UsageError
from sam_deblur_cli.nets import NetConfig

CONFIG_FILE = "config.json"
CONFIG_VERSION = 1
MASKS_FROM_CHOICES = ("dataset", "sam")  # or "predeblur:MODEL"
PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_RECIPE = "sam-deblur-gopro"
# config.json keeps the flat names it has always had: its key -> the NetConfig field
_NET_KEYS = {
    "variant": "variant",
    "width": "width",
    "enc_blocks": "enc_blk_nums",
    "middle_blocks": "middle_blk_num",
    "dec_blocks": "dec_blk_nums",
    "seg_channel": "seg_channel",
    "mask_value": "mask_value",
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run. Batch sizes: ``batch`` is the GLOBAL batch of one
    optimiser step (upstream: 32); each of ``world_size`` processes runs micro-batches of
    ``batch // (world_size * accum)`` images, ``accum`` of them per step.

    ``net``: the network trained (what the exported model entry records; its
    ``mask_value`` is the value a mask pixel has at the MAP unit, float32 1/255 as
    upstream's loader fed it). ``mask_dropout`` None: 0.5 for map, 0 otherwise. ``ema`` 0:
    no EMA, else the decay. ``keep``: numbered checkpoints kept besides ``last`` and ``best``.
    """

    data: str
    run_dir: str
    net: NetConfig = field(default_factory=NetConfig)
    mask_dropout: float | None = None
    steps: int = 200_000
    batch: int = 32
    accum: int = 1
    crop: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.9)
    eta_min: float = 1e-7
    grad_clip: float = 0.01
    ema: float = 0.0
    precision: str = "fp32"
    device: str = "auto"
    init: str | None = None
    masks_from: str = "dataset"
    recipe: str = DEFAULT_RECIPE
    val: str | None = None
    val_every: int = 10_000
    save_every: int = 5_000
    log_every: int = 10
    keep: int = 2
    seed: int = 0
    workers: int = 4
    name: str | None = None
    tlc: bool = False
    skip_bad_pairs: bool = False

    @property
    def variant(self) -> str:
        """The network variant: plain, cat or map."""
        return self.net.variant

    @property
    def dropout(self) -> float:
        """The mask dropout actually used."""
        if self.mask_dropout is not None:
            return self.mask_dropout
        return 0.5 if self.variant == "map" else 0.0

    @property
    def model_name(self) -> str:
        """The name the exported model is registered under (default: the run folder's)."""
        return self.name or Path(self.run_dir).name

    def micro_batch(self, world_size: int) -> int:
        """Images per forward pass on one process."""
        return self.batch // (world_size * self.accum)

    def to_json(self) -> str:
        """config.json: every setting under its flat name (the network's too), sorted."""
        fields_ = asdict(self)
        net = fields_.pop("net")
        record = {"version": CONFIG_VERSION, **fields_}
        record |= {key: net[name] for key, name in _NET_KEYS.items()}
        return json.dumps(record, indent=2, sort_keys=True) + "\n"


def check(cfg: TrainConfig, world_size: int = 1) -> TrainConfig:
    """Refuse settings that cannot run (UsageError, one sentence); fill in mask dropout."""
    from sam_deblur_cli.nets import VARIANTS

    if cfg.variant not in VARIANTS:
        raise UsageError(f"Unknown variant {cfg.variant!r}; use plain, cat or map.")
    positive = {"steps": cfg.steps, "batch": cfg.batch, "accum": cfg.accum}
    positive |= {"width": cfg.net.width}
    positive |= {"val-every": cfg.val_every, "save-every": cfg.save_every}
    positive |= {"log-every": cfg.log_every}
    for name, value in positive.items():
        if value < 1:
            raise UsageError(f"--{name} must be at least 1, not {value}.")
    if cfg.crop < 16 or cfg.crop % 16:
        raise UsageError(f"--crop {cfg.crop} must be a multiple of 16 (the network's grid).")
    enc, dec = cfg.net.enc_blk_nums, cfg.net.dec_blk_nums
    if not enc or len(enc) != len(dec) or min(enc) < 0:
        raise UsageError("--enc-blocks needs one non-negative count per level, e.g. 1,1,1,28.")
    if cfg.batch % (world_size * cfg.accum):
        raise UsageError(
            f"The global batch {cfg.batch} does not split into {world_size} process(es) x "
            f"{cfg.accum} accumulation step(s); pick a multiple of {world_size * cfg.accum}."
        )
    dropout = cfg.dropout
    if not 0.0 <= dropout < 1.0:
        raise UsageError(f"--mask-dropout must be in [0, 1), not {dropout}.")
    if dropout and cfg.variant != "map":
        raise UsageError("Mask dropout applies to the map variant only; drop --mask-dropout.")
    if cfg.precision not in PRECISIONS:
        raise UsageError(f"Unknown precision {cfg.precision!r}; use fp32, bf16 or fp16.")
    if cfg.masks_from not in MASKS_FROM_CHOICES and not cfg.masks_from.startswith("predeblur:"):
        raise UsageError(
            f"Unknown --masks-from {cfg.masks_from!r}; use dataset, sam or predeblur:MODEL."
        )
    if not 0.0 <= cfg.ema < 1.0:
        raise UsageError(f"--ema must be a decay in [0, 1) (0: off), not {cfg.ema}.")
    if cfg.keep < 0 or cfg.workers < 0:
        raise UsageError("--keep and --workers must not be negative.")
    return replace(cfg, mask_dropout=dropout)


def save_config(cfg: TrainConfig, run_dir: Path) -> Path:
    """Write ``RUN_DIR/config.json`` atomically."""
    from sam_deblur_cli.files import write_text

    return write_text(run_dir / CONFIG_FILE, cfg.to_json())


def load_config(run_dir: Path) -> TrainConfig:
    """Read the config a run was started with; UsageError/CheckpointError if it is not one."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise UsageError(f"{run_dir} holds no {CONFIG_FILE}; pass the folder of a training run.")
    try:
        record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(TrainConfig)} - {"net"}
        args = {k: v for k, v in record.items() if k in known}
        args["betas"] = tuple(args["betas"])
        net = {name: record[key] for key, name in _NET_KEYS.items()}
        for name in ("enc_blk_nums", "dec_blk_nums"):
            net[name] = tuple(net[name])
        return TrainConfig(**args, net=NetConfig(**net))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path} is damaged ({exc}); restore it or start a new run.") from exc
