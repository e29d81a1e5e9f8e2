"""freezable: freeze parts of a PyTorch model so that they stay frozen."""

__version__ = "0.1.0"

from .audit import CheckReport as CheckReport
from .audit import check as check
from .cache import FeatureCache as FeatureCache
from .distributed import rewrap_ddp as rewrap_ddp
from .errors import BuiltFrozenWarning as BuiltFrozenWarning
from .errors import DDPFreezeStateError as DDPFreezeStateError
from .errors import FreezableError as FreezableError
from .errors import FreezableTypeError as FreezableTypeError
from .errors import FreezeStateError as FreezeStateError
from .errors import PrefixWarning as PrefixWarning
from .errors import PresetError as PresetError
from .errors import SpecError as SpecError
from .errors import UnknownGroupError as UnknownGroupError
from .errors import UnknownNameError as UnknownNameError
from .groups import Group as Group
from .inplace import freezable as freezable
from .inplace import freeze as freeze
from .inplace import plain as plain
from .mixin import Freezable as Freezable
from .optim import release_optimizer_state as release_optimizer_state
from .presets import Preset as Preset
from .presets import apply_preset as apply_preset
from .presets import get_preset as get_preset
from .presets import list_presets as list_presets
from .presets import register_preset as register_preset
from .progressive import ProgressiveFreezing as ProgressiveFreezing
from .schedule import UnfreezeSchedule as UnfreezeSchedule
from .wrapper import FrozenBackbone as FrozenBackbone

__all__ = [
    "__version__",
    "BuiltFrozenWarning",
    "CheckReport",
    "DDPFreezeStateError",
    "FeatureCache",
    "Freezable",
    "FreezableError",
    "FreezableTypeError",
    "FreezeStateError",
    "FrozenBackbone",
    "Group",
    "PrefixWarning",
    "Preset",
    "PresetError",
    "ProgressiveFreezing",
    "SpecError",
    "UnfreezeSchedule",
    "UnknownGroupError",
    "UnknownNameError",
    "apply_preset",
    "check",
    "freezable",
    "freeze",
    "get_preset",
    "list_presets",
    "plain",
    "register_preset",
    "release_optimizer_state",
    "rewrap_ddp",
]
