"""segstream: streaming video instance segmentation (sources -> Mask R-CNN -> Redis)."""

__version__ = "0.1.0"
