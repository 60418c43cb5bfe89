"""One exception family for the whole library.

Library code raises these with a plain sentence that says what to do next; only
``sam_deblur_cli.cli`` turns them into one red line on stderr and an exit code.

Exit codes (documented in the README):
    0  everything worked
    1  at least one input failed (bad image, bad mask file, ...); the others were done
    2  usage or set-up error (bad option, missing weights, no GPU with --require-gpu, ...)
    3  nothing to do: no input was found (an empty folder, a dataset without images)
    130 interrupted (Ctrl-C)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INPUT = 1
EXIT_SETUP = 2
EXIT_NOTHING = 3
EXIT_INTERRUPTED = 130


class SamDeblurError(Exception):
    """Base class: every error the library raises on purpose."""

    exit_code: int = EXIT_INPUT


class InputError(SamDeblurError):
    """One input is unusable (unreadable image, mask of the wrong size...). A batch goes on."""

    exit_code = EXIT_INPUT


class ImageReadError(InputError):
    """An image file could not be decoded (missing, empty, truncated, not an image...)."""


class PixelLimitError(ImageReadError):
    """An image's header names more pixels than the decompression-bomb guard allows."""


class ImageWriteError(InputError):
    """An output file could not be written."""


class MaskError(InputError):
    """A mask file is unusable or does not fit the image or the model."""


class VideoError(InputError):
    """A video could not be read, deblurred or written (one input of a run)."""


class TooLargeError(InputError):
    """One image does not fit the device's memory in the run's settings (no tiling)."""


class NothingToDoError(SamDeblurError):
    """The run found no input at all; not a failure, but not the success of doing work."""

    exit_code = EXIT_NOTHING


class SetupError(SamDeblurError):
    """The run cannot start: fix the command line or the installation first."""

    exit_code = EXIT_SETUP


class UsageError(SetupError):
    """Options that are invalid or do not go together."""


class WeightsError(SetupError):
    """A weights file is missing, unverifiable or unreadable."""


class WeightsNotFoundError(WeightsError):
    """Weights are not in the cache and cannot be downloaded (offline, drive-hosted...)."""


class DownloadError(WeightsError):
    """The Hub (or a mirror) refused or broke off a download."""


class ChecksumError(WeightsError):
    """A file's sha256 differs from the one the manifest pins."""


class CheckpointError(WeightsError):
    """A checkpoint is unsafe (pickled code) or does not fit the architecture."""


class DeviceError(SetupError):
    """The requested device or precision is not available."""


class OutOfSpaceError(SetupError):
    """A write met a full disk, a quota or a file-size limit (ENOSPC, EDQUOT, EFBIG): the
    run stops there, since every later write would fail too; nothing is left half-written."""
