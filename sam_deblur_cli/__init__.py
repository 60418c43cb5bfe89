"""SAM-Deblur: Segment Anything masks guiding a NAFNet deblurring network."""

__version__ = "0.1.0"
