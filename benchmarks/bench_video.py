"""Video: frames/s of `run_video` per model and mask strategy, with a flicker number, against
the naive loop (decode everything, `Deblurrer.deblur` per frame, encode) in one run.

Models are the tiny random-weight models of the test suite (``tests/tiny_models.py``: NAFNet
width 8 and a tiny SAM behind a test manifest), so the numbers measure the video machinery
(decode, masks, threads, encode) more than a real network; the SAM runs per strategy carry
over to real models, their cost does not (the tiny SAM is cheap). The first rows run no
network at all (each frame
as it is: decoding, colour conversion, queues and encoding only). The clip is the astronaut
photo, upscaled: its left half still, its right half sliding 4 px a frame under a 9 px box
blur, encoded with libx264 (crf 23). Flicker: the mean absolute frame-to-frame change over
the still half, in 8-bit levels, of the decoded output (and, in the config, of the decoded
input); the no-network rows show what re-encoding alone adds. ``batch``: frames per network
batch (``1`` one at a time, ``auto`` up to 8 as memory allows). The last two rows run SAM
in turn with the network and beside it (a masks thread; on CUDA its own stream), both ways on
every device; the rows above take the device's default (beside on CUDA, in turn on the CPU).

    python -m benchmarks.bench_video [--quick] [--frames N] [--device cpu|cuda] [--real]
                                     [--json PATH]

``--real`` runs the published ``nafnet-gopro`` and ``segnafnet-gopro`` (and SAM vit_b) from
the user's weights cache instead: the run that can rank the mask strategies by flicker.

The JSON holds ``{"config": {...}, "rows": [{"model", "masks", "batch", "frames_per_s",
"sam_runs", "flicker"}, ...]}``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


IN_TURN, BESIDE = "every frame, SAM in turn", "every frame, SAM beside"


def make_clip(path: Path, frames: int, width: int, height: int) -> list[np.ndarray]:
    import cv2
    from tiny_models import small_photo
    from video_clips import make_clip as encode

    photo = cv2.resize(small_photo(step=1), (width, height), interpolation=cv2.INTER_AREA)
    images = []
    for i in range(frames):
        moved = photo.astype(np.float32)
        right = np.roll(moved[:, width // 2 :], 4 * i, axis=1)
        moved[:, width // 2 :] = sum(np.roll(right, s, axis=1) for s in range(-4, 5)) / 9
        images.append(np.clip(np.rint(moved), 0, 255).astype(np.uint8))
    encode(path, images, audio=True)
    return images


def flicker(path: Path) -> float:
    """Mean absolute change from one decoded frame to the next over the still left half, in
    8-bit levels."""
    from video_clips import decoded

    _, frames, _ = decoded(path)
    half = frames[0].shape[1] // 2
    still = [f[:, :half].astype(np.float32) for f in frames]
    return float(np.mean([np.abs(b - a).mean() for a, b in itertools.pairwise(still)]))


IDENTITY = "identity (no network)"


def _identity(rgb: np.ndarray, masks: object = None) -> np.ndarray:
    return rgb.astype(np.float32) / np.float32(255)


def naive(
    frame_fn: Callable[[np.ndarray], np.ndarray],
    src: Path,
    dst: Path,
    *,
    budget_s: float | None = None,
) -> int:
    """Decode every frame, run ``frame_fn`` (H x W x 3 uint8 RGB -> the same) on each, encode:
    with the engine's default encoder settings (libx264 yuv420p, crf 18, preset medium), so
    the two differ only in how they run. ``budget_s``: stop after the frame that spends it
    (at least 2 frames). Returns the frames encoded."""
    import av

    from sam_deblur_cli.video.probe import probe
    from sam_deblur_cli.video.write import EncodeOptions, resolve_encoding

    start = time.perf_counter()
    encoding = resolve_encoding(probe(src), dst, EncodeOptions())

    with av.open(str(src)) as container:
        stream = container.streams.video[0]
        frames = [(f.pts, f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
        tb = stream.time_base
    done = 0
    with av.open(str(dst), "w") as out:
        video = out.add_stream(encoding.codec)
        video.width, video.height, video.pix_fmt = (
            frames[0][1].shape[1],
            frames[0][1].shape[0],
            encoding.pix_fmt,
        )
        video.time_base = video.codec_context.time_base = tb
        video.codec_context.options = dict(encoding.options)
        for done, (pts, rgb) in enumerate(frames, 1):
            frame = av.VideoFrame.from_ndarray(frame_fn(rgb), format="rgb24")
            frame.pts, frame.time_base = pts, tb
            out.mux(video.encode(frame))
            if budget_s is not None and done >= 2 and time.perf_counter() - start > budget_s:
                break
        out.mux(video.encode(None))
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="640 x 360, 6 frames")
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--real",
        action="store_true",
        help="the published weights from your cache (downloaded on first use), not tiny ones",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    width, height = (640, 360) if args.quick else (1280, 720)
    frames = args.frames or (6 if args.quick else 12)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if not args.real:
            os.environ["SAM_DEBLUR_HOME"] = str(root / "home")
            from tiny_models import build_checkpoints, make_tiny_env

            env = make_tiny_env(root / "tiny", build_checkpoints(root / "ckpt"))
            os.environ["SAM_DEBLUR_WEIGHTS"] = str(env.manifest)
        from sam_deblur_cli.amg import RecipeOverrides
        from sam_deblur_cli.imageio import to_uint8
        from sam_deblur_cli.pipeline import Deblurrer, DeblurSettings
        from sam_deblur_cli.video.engine import VideoSettings, run_video

        src = root / "clip.mp4"
        make_clip(src, frames, width, height)
        input_flicker = flicker(src)
        rows: list[dict[str, Any]] = []
        from sam_deblur_cli.video.keyframes import SCENE_CUT

        cut_label = f"every 4 + cut {SCENE_CUT}"
        cases: list[tuple[str, str, tuple[int, float | None] | None, int | str]] = [
            (IDENTITY, "-", None, 1),
            ("nafnet-gopro", "-", None, 1),
            ("nafnet-gopro", "-", None, "auto"),
            ("segnafnet-gopro", "every frame", (1, None), 1),
            ("segnafnet-gopro", "every frame", (1, None), "auto"),
            ("segnafnet-gopro", "every 4", (4, None), "auto"),
            ("segnafnet-gopro", cut_label, (4, SCENE_CUT), "auto"),
            # SAM of the next frames beside the network, and in turn with it (the default is
            # beside on CUDA, in turn on the CPU: the rows above)
            ("segnafnet-gopro", IN_TURN, (1, None), "auto"),
            ("segnafnet-gopro", BESIDE, (1, None), "auto"),
        ]
        deblurrers: dict[str, Deblurrer] = {}
        warm: set[tuple[str, int | str]] = set()
        for model, label, keys, batch in cases:
            if model not in deblurrers:  # loaded once per model
                name = "nafnet-gopro" if model == IDENTITY else model
                deblurrer = Deblurrer(
                    DeblurSettings(
                        recipe=RecipeOverrides(model=name), device=args.device, tlc=False, tile=None
                    )
                )
                if model == IDENTITY:  # the machinery alone: no network at all
                    deblurrer.deblur = _identity  # type: ignore[method-assign]
                if deblurrer.needs_masks:  # no mask cache: each strategy pays for its SAM runs
                    deblurrer._mask_generator().cache = None
                deblurrers[model] = deblurrer
            deblurrer = deblurrers[model]
            if (model, batch) not in warm:  # untimed: lazy loading, imports, first kernels
                warm.add((model, batch))
                settings = VideoSettings(batch_frames=batch)  # type: ignore[arg-type]
                run_video(deblurrer, src, root / f"warm-{model}-{batch}.mp4", settings=settings)
            every, cut = keys or (1, None)
            dst = root / f"{model}-{label.replace(' ', '')}-{batch}.mp4"
            settings = VideoSettings(
                mask_every=every,
                scene_cut=cut,
                batch_frames=batch,  # type: ignore[arg-type]
                masks_beside_network={IN_TURN: False, BESIDE: True}.get(label),
            )
            start = time.perf_counter()
            record = run_video(deblurrer, src, dst, settings=settings)
            seconds = time.perf_counter() - start
            rows.append(
                _row(
                    model,
                    label,
                    batch,
                    frames / seconds,
                    record["key_frames"],
                    flicker(dst),
                )
            )
            if keys in (None, (1, None)) and batch == 1:
                dst = root / f"naive-{model}.mp4"
                start = time.perf_counter()
                naive(lambda rgb, d=deblurrer: to_uint8(d.deblur(rgb)), src, dst)
                seconds = time.perf_counter() - start
                sam_runs = frames if keys else 0
                rows.append(_row(model, "naive loop", 1, frames / seconds, sam_runs, flicker(dst)))
    config = {
        "models": "published" if args.real else "tiny random-weight",
        "width": width,
        "height": height,
        "frames": frames,
        "device": args.device,
        "cpus": os.cpu_count(),
        "input_flicker": round(input_flicker, 4),
    }
    print(
        f"{width} x {height}, {frames} frames, {config['models']} models, {args.device} "
        f"({os.cpu_count()} CPU cores); input flicker {config['input_flicker']:.4f} levels"
    )
    print(render(rows))
    write_json(args.json, {"config": config, "rows": rows})


def _row(
    model: str, masks: str, batch: int | str, fps: float, sam_runs: int, flick: float
) -> dict[str, Any]:
    return {
        "model": model,
        "masks": masks,
        "batch": batch,
        "frames_per_s": round(fps, 3),
        "sam_runs": sam_runs,
        "flicker": round(flick, 4),
    }


def render(rows: list[dict[str, Any]]) -> str:
    """The README's table: one line per model, mask strategy and batch size."""
    from benchmarks.common import markdown_table

    head = ["model", "masks", "batch", "frames/s", "SAM runs", "flicker (levels, still half)"]
    body = [
        [
            r["model"],
            r["masks"],
            r["batch"],
            f"{r['frames_per_s']:.2f}",
            r["sam_runs"],
            f"{r['flicker']:.4f}",
        ]
        for r in rows
    ]
    return markdown_table(head, body)


if __name__ == "__main__":
    main()
