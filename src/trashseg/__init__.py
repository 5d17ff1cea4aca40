"""trashseg: semantic segmentation of recycling waste for the COCO trash competition."""

__version__ = "0.1.0"
