"""TTA views live in the neutral `trashseg.tta` (training's distillation uses them too, and
training may not import inference); the names stay importable from here."""

from trashseg.tta import TTA_MODES, View, tta_views  # noqa: F401
