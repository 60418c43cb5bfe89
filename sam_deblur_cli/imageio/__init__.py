"""Image files in and out: orientation, ICC, EXIF, alpha, 8/16-bit, atomic writes. No torch.

Reading gives a :class:`Picture` whose ``rgb`` is display-ready (EXIF orientation applied) and
keeps everything a photographer expects back: the alpha channel, 8 or 16 bits per channel, the
ICC profile, the EXIF block (orientation reset to 1), the DPI, and whether it was grayscale.
Pixel values are kept as stored (no colour management), except CMYK, which is converted to RGB
through its embedded ICC profile (to sRGB, and the output is tagged sRGB) or, without a usable
profile, by Pillow's plain conversion (output untagged RGB).

Decoders: Pillow for 8-bit images; OpenCV for 16-bit PNG and TIFF, because Pillow silently
truncates 48/64-bit PNGs and TIFFs to 8 bits. HEIF/HEIC needs the optional ``pillow-heif``.
OpenCV cannot write ICC profiles or EXIF, so 16-bit PNGs get ``iCCP``/``pHYs``/``eXIf`` chunks
inserted after encoding and 16-bit TIFFs get an ICC tag; EXIF is not carried into 16-bit TIFFs,
and 8-bit TIFFs keep only its descriptive IFD0 tags (libtiff cannot write the Exif sub-IFD).
XMP and IPTC blocks are not carried. Multi-frame files (animated WebP/PNG, multi-page TIFF)
give their first frame, with a logged warning.

Safety: images above ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`, 200 MP) are refused
from the header, before any pixel is decoded. Truncated files are refused, never padded.
Writes go to a temporary file in the destination folder, are fsynced and renamed into place,
so a failure leaves no partial output; a write over the picture's own input is refused.

Modules by job: ``formats`` (names, suffixes, layouts), ``picture`` (:class:`Picture`, pixel
conversions), ``read`` (decoding), ``metadata`` (EXIF/ICC/DPI byte surgery), ``write``
(encoding); the public names are re-exported here.
"""

from __future__ import annotations

from sam_deblur_cli.imageio.formats import (
    SUPPORTED_SUFFIXES,
    is_image_path,
    output_format_for,
    suffix_for_format,
)
from sam_deblur_cli.imageio.picture import Picture, picture_with, to_uint8, to_uint16
from sam_deblur_cli.imageio.read import DEFAULT_MAX_PIXELS, read_header, read_image
from sam_deblur_cli.imageio.write import write_image

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_SUFFIXES",
    "Picture",
    "is_image_path",
    "output_format_for",
    "picture_with",
    "read_header",
    "read_image",
    "suffix_for_format",
    "to_uint8",
    "to_uint16",
    "write_image",
]
