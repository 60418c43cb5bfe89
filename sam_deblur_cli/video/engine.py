"""The video engine: one Deblurrer over every frame of a video, and SAM masks of a video.

Which frames get fresh masks is :mod:`.keyframes`'s; the work folder and what lets a run
resume are :mod:`.resume`'s.

Decoding (a reader thread), the network (this thread) and encoding (a writer thread)
overlap. Masks come from key frames: every ``mask_every``-th frame, the first frame of each
segment and any frame whose colours differ from the frame before's by more than
``scene_cut`` (a cut, see :func:`scene_change`); frames in between reuse the key frame's
MaskResult. The network takes ``batch_frames`` consecutive frames at a time
(restore_batch: as many as fit in memory; "auto": up to 8 on a GPU, 1 on the CPU); a batch
that fails is redone frame by frame, so a failing frame is still named. Frames are encoded
into segment files in a hidden work folder beside the output; a run that stops (Ctrl-C, a
failing frame) keeps the finished segments and the next run with the same settings starts
after them.
The final file is written atomically from the segments and the input's audio and subtitle
packets. With ``masks_beside_network`` (by default on CUDA) a masks thread between the reader
and the network makes every frame's masks in frame order, on a CUDA stream of its own, so
SAM of the next frames runs while the network works on the current ones; the network takes
each frame's masks (or the error making them raised) as if it had made them itself.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from sam_deblur_cli.errors import SetupError, UsageError, VideoError
from sam_deblur_cli.video.keyframes import SCENE_CUT, KeyFrames
from sam_deblur_cli.video.resume import fingerprint, finished_segments, prepare_work
from sam_deblur_cli.video.write import EncodeOptions

if TYPE_CHECKING:
    from sam_deblur_cli.masks import MaskGenerator, MaskResult
    from sam_deblur_cli.pipeline import Deblurrer, Record
    from sam_deblur_cli.video.probe import VideoInfo
    from sam_deblur_cli.video.read import Frame

logger = logging.getLogger(__name__)

MASKS_AHEAD = 2  # frames with masks made, waiting for the network (the masks thread's lead)
# on_frame(frames done, frames expected or None, frames per second of this run)
FrameCallback = Callable[[int, int | None, float], None]


@dataclass(frozen=True)
class VideoSettings:
    """How videos are deblurred and encoded (the same for every video of a run)."""

    mask_every: int = 1  # SAM on every K-th frame; the frames between reuse its masks
    # frames per network batch, or "auto" (on a GPU up to 8, as many as fit; 1 on the CPU).
    # 1 (the library's default) gives each frame exactly its photo result; batches agree with
    # it to float rounding.
    batch_frames: int | Literal["auto"] = 1
    scene_cut: float | None = SCENE_CUT  # force a key frame above this scene_change
    keep_going_frames: bool = False  # a failing frame keeps its input pixels instead of stopping
    segment_frames: int = 48  # frames per resumable segment
    # SAM of the next frames in a thread of its own beside the network (same frames out);
    # None: the Deblurrer's default (on CUDA, see Deblurrer.masks_beside_network)
    masks_beside_network: bool | None = None
    encode: EncodeOptions = field(default_factory=EncodeOptions)

    def check(self) -> None:
        if self.mask_every < 1:
            raise UsageError(f"--mask-every {self.mask_every} must be 1 or more.")
        if self.batch_frames != "auto" and (
            not isinstance(self.batch_frames, int) or self.batch_frames < 1
        ):
            raise UsageError(f"--batch-frames {self.batch_frames} must be auto or 1 or more.")
        if self.segment_frames < 1:
            raise UsageError(f"Segments of {self.segment_frames} frames are impossible; use 1+.")


def parse_batch_frames(value: str | int) -> int | Literal["auto"]:
    """``--batch-frames``: "auto" or a count of 1 or more; UsageError otherwise."""
    if isinstance(value, int):
        count = value
    elif value.strip().lower() == "auto":
        return "auto"
    else:
        try:
            count = int(value)
        except ValueError:
            raise UsageError(f"--batch-frames {value!r}: use auto or a number of frames.") from None
    if count < 1:
        raise UsageError(f"--batch-frames {count} must be auto or 1 or more.")
    return count


def run_video(
    deblurrer: Deblurrer,
    src: Path,
    dst: Path,
    *,
    settings: VideoSettings | None = None,
    overwrite: bool = False,
    on_frame: FrameCallback | None = None,
) -> Record:
    """Deblur every frame of ``src`` into ``dst``; returns the run's record.

    Same frame count and timestamps as ``src``, the rotation, colour tags, audio/subtitle
    packets and container tags kept; ``record["notes"]`` lists (one line each) the streams
    that ``dst``'s container could not hold and that were converted, and colour tags it
    could not keep. An existing ``dst``
    is skipped unless ``overwrite``. A frame that fails raises a VideoError naming it, or
    with ``keep_going_frames`` keeps its input pixels and is listed in
    ``record["kept_frames"]``. ``dst`` appears only when complete.
    """
    from sam_deblur_cli.files import remove_stale_temporaries
    from sam_deblur_cli.video.probe import probe
    from sam_deblur_cli.video.write import assemble, muxer_for, output_colour, resolve_encoding

    settings = settings or VideoSettings()
    settings.check()
    src, dst = Path(src), Path(dst)
    record = deblurrer.new_record(src, dst)
    if dst.exists() and not overwrite:
        record["status"] = "skipped"
        return record
    remove_stale_temporaries(dst.parent)  # a killed run's final file, never a live one's
    started = time.perf_counter()
    info = probe(src)
    encoding = resolve_encoding(info, dst, settings.encode)
    muxer = muxer_for(dst)
    colour_note = output_colour(info, encoding, muxer)[1]
    if colour_note:
        logger.warning("%s", colour_note)
    work = prepare_work(dst, fingerprint(deblurrer, info, settings, encoding))
    done = finished_segments(work, dst.suffix)
    start = len(done) * settings.segment_frames
    engine = _Engine(deblurrer, info, settings, work, dst.suffix, encoding, muxer, on_frame)
    engine.run(start, len(done))
    segments = finished_segments(work, dst.suffix)
    if engine.frames == 0 and start == 0:
        raise VideoError(f"{src} has no video frames; pass a video with at least one frame.")
    t0 = time.perf_counter()
    notes = ([colour_note] if colour_note else []) + assemble(src, segments, dst, info)
    shutil.rmtree(work, ignore_errors=True)
    record["seconds"] = {**engine.seconds, "write": round(time.perf_counter() - t0, 4)}
    total = time.perf_counter() - started
    record.update(
        {
            "status": "ok",
            "frames": start + engine.frames,
            "resumed_from": start,
            "key_frames": engine.key_frames,
            "kept_frames": engine.kept,
            "fps": round(engine.frames / max(total, 1e-9), 3),
            "encoding": encoding.describe(),
            "notes": notes,
        }
    )
    if engine.kept:
        record["error"] = f"frames {engine.kept} failed and kept their input pixels"
    return record


class _Engine:
    """One pass over the frames still to do: reader thread -> network -> writer thread."""

    def __init__(
        self,
        deblurrer: Deblurrer,
        info: VideoInfo,
        settings: VideoSettings,
        work: Path,
        suffix: str,
        encoding: Any,
        muxer: str,
        on_frame: FrameCallback | None,
    ) -> None:
        self.deblurrer, self.info, self.settings = deblurrer, info, settings
        self.work, self.suffix, self.encoding, self.muxer = work, suffix, encoding, muxer
        self.on_frame = on_frame
        self.frames, self.key_frames, self.kept = 0, 0, list[int]()
        self.seconds: dict[str, float] = {"masks": 0.0, "deblur": 0.0}

    def run(self, start: int, first_segment: int) -> None:
        stop = threading.Event()
        frames: queue.Queue[Frame | BaseException | None] = queue.Queue(maxsize=4)
        outputs: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=4)
        reader = threading.Thread(target=self._read, args=(start, frames, stop), daemon=True)
        writer_error: list[BaseException] = []
        writer = threading.Thread(
            target=self._write, args=(first_segment, outputs, writer_error), daemon=True
        )
        source, masker = frames, None
        if self._beside():
            self._ahead = {}
            source = queue.Queue(maxsize=MASKS_AHEAD)
            masker = threading.Thread(
                target=self._mask_ahead, args=(frames, source, stop), daemon=True
            )
        reader.start()
        writer.start()
        if masker is not None:
            masker.start()
        began = time.perf_counter()
        try:
            for group in _groups(_drain(source), self._batch_size()):
                if writer_error:
                    break
                for frame, rgb in zip(group, self._deblur_group(group), strict=True):
                    outputs.put(("frame", (frame, rgb)))
                    self.frames += 1
                    if self.on_frame is not None:
                        fps = self.frames / max(time.perf_counter() - began, 1e-9)
                        self.on_frame(start + self.frames, self.info.frames or None, fps)
        except BaseException:
            stop.set()
            outputs.put(("abort", None))
            writer.join()
            raise
        finally:
            stop.set()
            if masker is not None:
                masker.join()  # its frame in SAM ends: no thread uses the models after this
            reader.join()
        outputs.put(("end", None))
        writer.join()
        if writer_error:
            raise writer_error[0]

    def _read(self, start: int, frames: queue.Queue[Any], stop: threading.Event) -> None:
        from sam_deblur_cli.video.read import iter_frames

        try:
            for frame in iter_frames(self.info, start=start):
                if not _put(frames, frame, stop):
                    return
            _put(frames, None, stop)
        except BaseException as exc:  # handed to the main thread, which re-raises it
            _put(frames, exc, stop)

    def _beside(self) -> bool:
        """Whether a masks thread runs beside the network (see the module docstring)."""
        if not self.deblurrer.needs_masks:
            return False
        beside = self.settings.masks_beside_network
        return self.deblurrer.masks_beside_network if beside is None else beside

    def _mask_ahead(
        self, frames: queue.Queue[Any], ready: queue.Queue[Any], stop: threading.Event
    ) -> None:
        """The masks thread: each frame, in order, passes on to ``ready`` once its masks (or
        what making them raised) are in ``self._ahead``; the reader's end or error follows."""
        import torch

        from sam_deblur_cli.devices import side_stream

        stream = side_stream(self.deblurrer.placement.device)
        ahead = self._ahead
        assert ahead is not None
        try:
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                for frame in _drain(frames, stop):
                    try:
                        ahead[frame.index] = self._make_masks(frame)
                    except BaseException as exc:  # the network's thread raises it there
                        ahead[frame.index] = exc
                    if not _put(ready, frame, stop):
                        return
            _put(ready, None, stop)
        except BaseException as exc:  # the reader's error: handed on
            _put(ready, exc, stop)

    def _batch_size(self) -> int:
        """Frames per network call: "auto" is up to MAX_AUTO_BATCH on a GPU (restore_batch
        fits it to memory) and 1 on the CPU, where a batch only adds memory traffic
        (benchmarks/bench_video.py measured batches slower there)."""
        from sam_deblur_cli.restore import MAX_AUTO_BATCH

        size = self.settings.batch_frames
        if size != "auto":
            return size
        return MAX_AUTO_BATCH if self.deblurrer.placement.is_gpu else 1

    def _deblur_group(self, group: list[Frame]) -> list[np.ndarray]:
        """Output pixels of consecutive frames: one network batch, masks per frame in order;
        a batch that fails is redone frame by frame (which names the failing frame)."""
        if len(group) == 1:
            return [self._deblur(group[0])]
        d = self.deblurrer
        done: dict[int, np.ndarray] = {}
        ready: list[tuple[int, MaskResult | None]] = []
        for i, frame in enumerate(group):
            try:
                ready.append((i, self._masks(frame) if d.needs_masks else None))
            except (SetupError, KeyboardInterrupt, MemoryError):
                raise
            except Exception as exc:
                done[i] = self._failed(frame, exc)
        try:
            t0 = time.perf_counter()
            outs = d.deblur_batch(
                [_net_input(group[i].rgb) for i, _ in ready],
                [m for _, m in ready] if d.needs_masks else None,
            )
            self.seconds["deblur"] = round(self.seconds["deblur"] + time.perf_counter() - t0, 4)
        except (SetupError, KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:
            logger.info("a batch of %d frames failed (%s): one frame at a time", len(ready), exc)
            for i, masks in ready:
                done[i] = self._deblur(group[i], (masks,))
        else:
            for (i, _), out in zip(ready, outs, strict=True):
                done[i] = _pixels(out, group[i].rgb.dtype)
        return [done[i] for i in range(len(group))]

    def _deblur(self, frame: Frame, masks: tuple[MaskResult | None] | None = None) -> np.ndarray:
        """One frame's output pixels; ``masks``: the frame's masks when already made."""
        d = self.deblurrer
        try:
            if masks is None:
                masks = (self._masks(frame) if d.needs_masks else None,)
            t0 = time.perf_counter()
            out = d.deblur(_net_input(frame.rgb), masks[0])
            self.seconds["deblur"] = round(self.seconds["deblur"] + time.perf_counter() - t0, 4)
        except (SetupError, KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:
            return self._failed(frame, exc)
        return _pixels(out, frame.rgb.dtype)

    def _failed(self, frame: Frame, exc: Exception) -> np.ndarray:
        """A VideoError naming ``frame``, or with keep_going_frames its input pixels."""
        where = f"frame {frame.index} (at {frame.seconds:.3f} s) of {self.info.path}"
        if not self.settings.keep_going_frames:
            raise VideoError(
                f"{where} failed ({exc}); fix the cause, or rerun with --keep-going-frames "
                "to keep such frames as they are (the finished segments are reused)."
            ) from exc
        logger.warning("%s failed (%s); its input pixels are kept", where, exc)
        self.kept.append(frame.index)
        return frame.rgb

    _keys: KeyFrames | None = None
    _masks_now: MaskResult | None = None
    _ahead: dict[int, MaskResult | BaseException] | None = None  # the masks thread's results

    def _masks(self, frame: Frame) -> MaskResult:
        """``frame``'s masks: the masks thread's, or made here. Called once per frame, in
        frame order."""
        if self._ahead is None:
            return self._make_masks(frame)
        made = self._ahead.pop(frame.index)
        if isinstance(made, BaseException):
            raise made
        return made

    def _make_masks(self, frame: Frame) -> MaskResult:
        from sam_deblur_cli.pipeline import as_uint8_rgb

        if self._keys is None:
            self._keys = KeyFrames(self.settings.mask_every, self.settings.scene_cut)
        segment_start = frame.index % self.settings.segment_frames == 0
        if self._keys.is_key(frame.index, frame.rgb, force=segment_start) or not self._masks_now:
            t0 = time.perf_counter()
            rgb8 = frame.rgb if frame.rgb.dtype == np.uint8 else _to_uint8(frame.rgb)
            self._masks_now = self.deblurrer.compute_masks(as_uint8_rgb(rgb8))
            self.key_frames += 1
            self.seconds["masks"] = round(self.seconds["masks"] + time.perf_counter() - t0, 4)
        return self._masks_now

    def _write(
        self, segment: int, outputs: queue.Queue[tuple[str, Any]], errors: list[Any]
    ) -> None:
        from sam_deblur_cli.video.write import SegmentWriter

        writer: SegmentWriter | None = None
        count = self.settings.segment_frames
        try:
            while True:
                kind, item = outputs.get()
                if kind == "abort":
                    if writer is not None:
                        writer.abort()
                    return
                if kind == "end":
                    if writer is not None:
                        writer.close()
                    return
                frame, rgb = item
                if writer is None:
                    path = self.work / f"seg-{segment:06d}{self.suffix}"
                    writer = SegmentWriter(path, self.info, self.encoding, self.muxer)
                writer.write(rgb, frame.pts)
                if writer.frames == count:
                    writer.close()
                    writer, segment = None, segment + 1
        except BaseException as exc:
            errors.append(exc)
            if writer is not None:
                writer.abort()
            while outputs.get()[0] not in ("end", "abort"):
                pass  # let the main thread finish putting


def _drain(frames: queue.Queue[Any], stop: threading.Event | None = None) -> Iterator[Frame]:
    """The frames put in ``frames`` until its None; an exception put there is raised. With
    ``stop``, waiting ends (and the frames with it) once it is set."""
    while True:
        try:
            item = frames.get(timeout=None if stop is None else 0.1)
        except queue.Empty:
            if stop is not None and stop.is_set():
                return
            continue
        if item is None:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def _put(items: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Put ``item`` once there is room; False (not put) once ``stop`` is set."""
    while not stop.is_set():
        try:
            items.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _groups(frames: Iterator[Frame], size: int) -> Iterator[list[Frame]]:
    """Consecutive frames in lists of ``size`` (the last one shorter)."""
    group: list[Frame] = []
    for frame in frames:
        group.append(frame)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _net_input(rgb: np.ndarray) -> np.ndarray:
    """A decoded frame as the Deblurrer takes it: uint8 as is, uint16 (deep sources) as
    float32 [0, 1] so that no precision is lost on the way in."""
    return rgb if rgb.dtype == np.uint8 else rgb.astype(np.float32) / np.float32(65535.0)


def _pixels(out: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """float32 [0, 1] network output -> the frame's own depth (uint8 or uint16)."""
    from sam_deblur_cli.imageio import to_uint8, to_uint16

    return to_uint8(out) if dtype == np.uint8 else to_uint16(out)


def _to_uint8(rgb16: np.ndarray) -> np.ndarray:
    return ((rgb16.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


# --------------------------------------------------------------------------- masks


def video_masks(
    generator: MaskGenerator,
    src: Path,
    out_dir: Path,
    *,
    mask_every: int = 1,
    scene_cut: float | None = SCENE_CUT,
    on_frame: FrameCallback | None = None,
) -> dict[str, Any]:
    """SAM segmasks of a video's key frames into ``out_dir`` (created): ``frame_NNNNNN.png``
    per key frame (display orientation) and ``frames.csv`` mapping every frame (index, pts,
    seconds) to the segmask it uses. Returns a JSON-able record."""
    import csv
    import io

    from sam_deblur_cli.files import write_text
    from sam_deblur_cli.masks.formats import write_segmask_png
    from sam_deblur_cli.video.probe import probe
    from sam_deblur_cli.video.read import iter_frames

    info = probe(src)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = KeyFrames(mask_every, scene_cut)
    rows, current, key_count = io.StringIO(), "", 0
    table = csv.writer(rows, lineterminator="\n")
    table.writerow(["frame", "pts", "seconds", "key_frame", "segmask"])
    began = time.perf_counter()
    count = 0
    for frame in iter_frames(info):
        rgb8 = frame.rgb if frame.rgb.dtype == np.uint8 else _to_uint8(frame.rgb)
        key = keys.is_key(frame.index, rgb8)
        if key:
            result = generator(rgb8)
            current = f"frame_{frame.index:06d}.png"
            assert result.segmask is not None
            write_segmask_png(out_dir / current, result.segmask)
            key_count += 1
        table.writerow([frame.index, frame.pts, f"{frame.seconds:.6f}", int(key), current])
        count += 1
        if on_frame is not None:
            on_frame(count, info.frames or None, count / max(time.perf_counter() - began, 1e-9))
    write_text(out_dir / "frames.csv", rows.getvalue())
    return {
        "input": str(src),
        "status": "ok",
        "frames": count,
        "key_frames": key_count,
        "output": str(out_dir),
    }
