"""Presets: named freezing recipes (:mod:`.registry`), applied to a model (:mod:`.apply`), and the built-in
ones (:mod:`.catalogue`, with the recipes of torchvision detection, open_clip and ultralytics beside it)."""

from . import catalogue as catalogue
from .apply import apply_preset as apply_preset
from .apply import hold_body_norms as hold_body_norms
from .apply import install as install
from .apply import resolve_preset as resolve_preset
from .registry import Alias as Alias
from .registry import Preset as Preset
from .registry import PresetFamily as PresetFamily
from .registry import get_preset as get_preset
from .registry import list_presets as list_presets
from .registry import register_preset as register_preset

__all__ = ["Preset", "PresetFamily", "Alias", "register_preset", "get_preset", "list_presets", "apply_preset",
           "resolve_preset", "install", "hold_body_norms"]
