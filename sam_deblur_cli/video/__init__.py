"""Video in and out through PyAV: probing, decoding frames with their timestamps, encoding.

``probe``/``read``/``write`` are PyAV in and out (no torch), ``convert`` re-encodes the
streams an output container cannot hold; ``engine`` is the engine that feeds frames to a
Deblurrer, with ``keyframes`` (which frames get fresh masks, scene cuts) and ``resume``
(the work folder of finished segments and its fingerprint). Nothing here imports ``av``
at module level, so the CLI's ``--help`` stays instant; this module only names the video
containers we read (defined in :mod:`sam_deblur_cli.naming`, beside the output names that
depend on them).
"""

from __future__ import annotations

from sam_deblur_cli.naming import VIDEO_SUFFIXES, is_video_path

__all__ = ["VIDEO_SUFFIXES", "is_video_path"]
