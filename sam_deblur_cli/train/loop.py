"""The training loop: AdamW, cosine schedule per step, PSNR loss in fp32, clipping, EMA,
accumulation, autocast, DDP, validation, checkpoints and exact resume.

Run folder (only rank 0 writes):

    config.json         the resolved TrainConfig (``config.save_config``)
    log.csv             step, loss, lr, images_per_s, val_psnr, val_ssim
    tensorboard/        the same rows as scalars, when TensorBoard is installed
    checkpoints/last.pt everything to resume: weights, optimiser, scheduler, grad scaler,
                        EMA, RNG states (torch CPU/CUDA, numpy, python) and the step, which
                        is the data position (``data.StepSampler``)
    checkpoints/step_NNNNNNN.pt   the ``keep`` newest numbered copies of last.pt
    best.pth            {"params": ...} of the best validation PSNR
    model.pth           {"params": ...} at the end (``export``)

A resumed run continues the same sequence: same samples, same dropout draws, same
updates, bit for bit (on the same device and software). Ctrl-C (``request_stop``) ends
at a step boundary with a resumable ``last.pt``. Progress goes through :class:`Callbacks`.

The loop's helpers live beside it: ``checkpoint`` (last.pt, numbered copies, RNG state),
``logs`` (log.csv, TensorBoard), ``dist`` (torchrun set-up, device choice), ``export``
(``{"params": ...}`` files).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sam_deblur_cli.errors import CheckpointError
from sam_deblur_cli.train.checkpoint import (
    LAST,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from sam_deblur_cli.train.config import TrainConfig
from sam_deblur_cli.train.data import TrainImage
from sam_deblur_cli.train.dist import Dist, check_precision, pick_device
from sam_deblur_cli.train.export import export_weights
from sam_deblur_cli.train.logs import CsvLog, TensorBoardLog

logger = logging.getLogger(__name__)

_PSNR_SCALE = 10.0 / math.log(10.0)


def psnr_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Upstream's PSNR loss, -PSNR at peak 1, hence negative: (10 / ln 10) * mean over the
    batch of ln(mean over C, H, W of (pred - target)^2 + 1e-8). Computed in float32 (the
    1e-8 underflows in fp16), whatever the network's precision."""
    diff = pred.float() - target.float()
    mse = diff.pow(2).flatten(1).mean(1)
    return _PSNR_SCALE * torch.log(mse + 1e-8).mean()


@dataclass
class Callbacks:
    """Hooks a front end may set; the library never prints.

    ``on_start(start_step, total_steps, description)``, ``on_step(step, total_steps)`` after
    every optimiser step, ``on_log(row)`` with each log.csv row, ``on_message(text)``.
    Only rank 0 calls them.
    """

    on_start: Callable[[int, int, str], None] | None = None
    on_step: Callable[[int, int], None] | None = None
    on_log: Callable[[dict[str, Any]], None] | None = None
    on_message: Callable[[str], None] | None = None


@dataclass
class TrainResult:
    """How a run ended: ``interrupted`` runs resume from ``checkpoint``."""

    step: int
    steps: int
    interrupted: bool
    checkpoint: Path | None
    best_psnr: float | None = None
    final_loss: float | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)


class Ema:
    """Exponential moving average of the weights (float32 copies, on the model's device)."""

    def __init__(self, net: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in net.state_dict().items()}

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        for key, value in net.state_dict().items():
            self.shadow[key].lerp_(value.float(), 1.0 - self.decay)


def _ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which stops at a step boundary."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Trainer:
    """One process of a run. Build with the resolved config and the decoded images, then
    ``run()``. ``resume`` continues from ``RUN_DIR/checkpoints/last.pt``."""

    def __init__(
        self,
        cfg: TrainConfig,
        images: Sequence[TrainImage],
        *,
        val_images: Sequence[TrainImage] = (),
        resume: bool = False,
        callbacks: Callbacks | None = None,
        dist: Dist | None = None,
        device: str | None = None,
    ) -> None:
        from sam_deblur_cli.train.models import build_model, init_state_dict, load_init

        self.cfg = cfg
        self.images = list(images)
        self.val_images = list(val_images)
        self.callbacks = callbacks or Callbacks()
        self.dist = dist or Dist()
        self.run_dir = Path(cfg.run_dir)
        self.device = torch.device(device or pick_device(cfg, self.dist))
        self._stop = False
        check_precision(cfg.precision, self.device)
        seed_everything(cfg.seed)  # the same initial weights on every rank
        self.net = build_model(cfg)
        if cfg.init and not resume:
            how = load_init(self.net, init_state_dict(cfg.init))
            self._message(f"initialised from {cfg.init} ({how})")
        self.net.to(self.device)
        self.model: nn.Module = self.net
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.net, device_ids=ids)
        self.optimizer = torch.optim.AdamW(
            self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=cfg.steps, eta_min=cfg.eta_min
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
        self.ema = Ema(self.net, cfg.ema) if cfg.ema else None
        self.step = 0
        self.best_psnr: float | None = None
        seed_everything(cfg.seed + self.dist.rank)  # mask dropout draws differ per rank
        if resume:
            self._load(self.run_dir / "checkpoints" / LAST)
        self._rng_at_step = rng_state()

    # ------------------------------------------------------------------ public

    def request_stop(self) -> None:
        """Stop at the next step boundary and save a resumable checkpoint (Ctrl-C)."""
        self._stop = True

    def run(self) -> TrainResult:
        """Train from the current step to ``cfg.steps``; returns how it ended."""
        from sam_deblur_cli.train.data import CropDataset, StepSampler, make_loader

        cfg, d = self.cfg, self.dist
        log = CsvLog(self.run_dir / "log.csv", self.step) if d.is_main else None
        board = TensorBoardLog.open(self.run_dir / "tensorboard") if d.is_main else None
        sampler = StepSampler(
            start=self.step,
            steps=cfg.steps,
            batch=cfg.batch,
            accum=cfg.accum,
            rank=d.rank,
            world=d.world,
        )
        loader = make_loader(
            CropDataset(self.images, cfg.crop, cfg.seed),
            sampler,
            workers=cfg.workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_ignore_sigint,
        )
        micro = cfg.micro_batch(d.world)
        self._start(
            f"global batch {cfg.batch} = {d.world} process(es) x {micro} per process "
            f"x {cfg.accum} accumulation step(s); {cfg.precision} on {self.device}"
        )
        rows: list[dict[str, Any]] = []
        window_loss = torch.zeros((), device=self.device)
        window_start, window_steps = time.perf_counter(), 0
        batches = iter(loader)
        interrupted = False
        while self.step < cfg.steps:
            loss = self._train_step(batches)
            if loss is None:
                interrupted = True
                break
            window_loss += loss
            window_steps += 1
            if self.callbacks.on_step and d.is_main:
                self.callbacks.on_step(self.step, cfg.steps)
            row = None
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                row = self._log_row(window_loss / window_steps, window_steps, window_start)
                window_loss.zero_()
                window_start, window_steps = time.perf_counter(), 0
            if self.val_images and (self.step % cfg.val_every == 0 or self.step == cfg.steps):
                row = {**(row or self._empty_row()), **self._validate()}
            if row is not None and d.is_main:
                rows.append(row)
                assert log is not None
                log.append(row)
                if board is not None:
                    board.append(row)
                if self.callbacks.on_log:
                    self.callbacks.on_log(row)
            if self.step % cfg.save_every == 0 and self.step < cfg.steps:
                self.save()
            if self._stop_agreed():
                interrupted = self.step < cfg.steps
                break
        del batches
        if board is not None:
            board.close()
        checkpoint = self.save()
        final = next((float(r["loss"]) for r in reversed(rows) if r["loss"] != ""), None)
        return TrainResult(
            self.step, cfg.steps, interrupted, checkpoint, self.best_psnr, final, rows
        )

    def final_state_dict(self) -> dict[str, Tensor]:
        """The weights to export: the EMA when there is one, else the trained weights
        (float32, on the CPU)."""
        source = self.ema.shadow if self.ema else self.net.state_dict()
        return {k: v.detach().float().cpu().clone() for k, v in source.items()}

    # ------------------------------------------------------------------ one step

    def _train_step(self, batches: Iterator[tuple[Tensor, ...]]) -> Tensor | None:
        """One optimiser step over ``accum`` micro-batches; None when stopped before it
        completed (nothing of it applied, the RNGs rewound to the last step's end)."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for a in range(cfg.accum):
            batch = self._next(batches)
            if batch is None:
                set_rng_state(self._rng_at_step)
                return None
            sync = a == cfg.accum - 1 or self.dist.world == 1
            context = contextlib.nullcontext() if sync else self.model.no_sync()  # type: ignore[operator]
            with context:
                loss = self._forward_loss(batch) / cfg.accum
                self.scaler.scale(loss).backward()
            total += loss.detach()
        self.scaler.unscale_(self.optimizer)
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.net)
        self.step += 1
        self._rng_at_step = rng_state()
        return total

    def _next(self, batches: Iterator[tuple[Tensor, ...]]) -> tuple[Tensor, ...] | None:
        if self._stop and self.dist.world == 1:
            return None
        try:
            return next(batches)
        except (RuntimeError, StopIteration):
            if self._stop:
                return None
            raise

    def _forward_loss(self, batch: tuple[Tensor, ...]) -> Tensor:
        blocking = self.device.type != "cuda"
        blurred, sharp = (
            t.to(self.device, non_blocking=not blocking).float() / 255 for t in batch[:2]
        )
        guide = None
        if len(batch) == 3:
            guide = batch[2].to(self.device, non_blocking=not blocking)
            if guide.dtype == torch.uint8:  # CAT: the segmask / 255
                guide = guide.float() / 255
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.precision)
        autocast = (
            torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        )
        with autocast:
            out = self.model(blurred, guide)
        return psnr_loss(out, sharp)

    def _stop_agreed(self) -> bool:
        """Whether every rank saw a stop request (so all stop at the same step)."""
        if self.dist.world == 1:
            return self._stop
        import torch.distributed as td

        flag = torch.tensor([1.0 if self._stop else 0.0], device=self.device)
        td.all_reduce(flag, op=td.ReduceOp.MAX)
        return bool(flag.item())

    # ------------------------------------------------------------------ logging

    def _empty_row(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "loss": "",
            "lr": "",
            "images_per_s": "",
            "val_psnr": "",
            "val_ssim": "",
        }

    def _log_row(self, mean_loss: Tensor, steps: int, since: float) -> dict[str, Any]:
        if self.dist.world > 1:
            import torch.distributed as td

            td.all_reduce(mean_loss)
            mean_loss = mean_loss / self.dist.world
        seconds = time.perf_counter() - since
        return {
            **self._empty_row(),
            "loss": f"{float(mean_loss):.4f}",
            "lr": f"{self.scheduler.get_last_lr()[0]:.6g}",
            "images_per_s": f"{steps * self.cfg.batch / max(seconds, 1e-9):.2f}",
        }

    def _start(self, description: str) -> None:
        if self.dist.is_main:
            logger.info("training: %s", description)
            if self.callbacks.on_start:
                self.callbacks.on_start(self.step, self.cfg.steps, description)

    def _message(self, text: str) -> None:
        logger.info("%s", text)
        if self.dist.is_main and self.callbacks.on_message:
            self.callbacks.on_message(text)

    # ------------------------------------------------------------------ validation

    def _validate(self) -> dict[str, Any]:
        """Mean PSNR / SSIM (eval's metrics) over the validation pairs, rank 0 only."""
        if not self.dist.is_main:
            return {}
        psnr, ssim = validate(self._eval_net(), self.val_images, self.device)
        if self.best_psnr is None or psnr > self.best_psnr:
            self.best_psnr = psnr
            export_weights(self.final_state_dict(), self.run_dir / "best.pth")
        return {"val_psnr": f"{psnr:.4f}", "val_ssim": f"{ssim:.5f}"}

    def _eval_net(self) -> nn.Module:
        from sam_deblur_cli.checkpoints import load_strict
        from sam_deblur_cli.weights.models import build_net

        net = build_net(self.cfg.net)
        load_strict(net, self.final_state_dict())
        return net

    # ------------------------------------------------------------------ checkpoints

    def save(self) -> Path | None:
        """Write ``checkpoints/last.pt`` (and a numbered copy when ``keep``); rank 0 only."""
        if not self.dist.is_main:
            return None
        folder = self.run_dir / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            "step": self.step,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.shadow if self.ema else {},
            "best_psnr": self.best_psnr if self.best_psnr is not None else float("nan"),
            "rng": self._rng_at_step,
        }
        return save_checkpoint(state, folder, step=self.step, keep=self.cfg.keep)

    def _load(self, path: Path) -> None:
        state = read_checkpoint(path)
        try:
            self.net.load_state_dict(state["model"], strict=True)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            if self.ema is not None:
                self.ema.shadow = {k: v.to(self.device) for k, v in state["ema"].items()}
            self.step = int(state["step"])
            best = float(state["best_psnr"])
            self.best_psnr = None if math.isnan(best) else best
            set_rng_state(state["rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(
                f"{path} does not match this run ({exc}); resume with the run's own folder."
            ) from None


def validate(
    net: nn.Module, images: Sequence[TrainImage], device: torch.device
) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM (the paper's 3-D variant) of ``net`` over whole images:
    fp32, no TF32, tiled only when an image would not fit (``restore``'s plan)."""
    from sam_deblur_cli import metrics
    from sam_deblur_cli.restore import restore

    psnrs, ssims = [], []
    for image in images:
        out = restore(
            net,
            image.blurred.astype(np.float32) / 255,
            image.guide,
            device=device,
            precision="fp32",
            tile="auto",
            tf32=False,
        )
        restored = metrics.to_uint8(out)
        psnrs.append(metrics.psnr(restored, image.sharp))
        ssims.append(metrics.ssim(restored, image.sharp))
    return metrics.mean_psnr(psnrs), float(np.mean(ssims))
