"""deflect_min: DEFLECT (Thoreau, Marsocci, Derksen, ICCV 2025) in a few small modules.

* :mod:`deflect_min.bands` -- sensor-qualified band names and spectral roles
* :mod:`deflect_min.indices` -- spectral indices from the spyndex catalogue
* :mod:`deflect_min.embedding` -- the embedding decomposition x = x_P + x_A
* :mod:`deflect_min.attention` -- untangled attention (uAtt)
* :mod:`deflect_min.deflection` -- embedding deflection
* :mod:`deflect_min.adaptation` -- ``adapt``: every method through one entry point
* :mod:`deflect_min.methods` -- the registry of methods, each with a typed config
* :mod:`deflect_min.baselines` -- the layers of Norm tuning, BitFit, LoRA, SLR; ``merge``
* :mod:`deflect_min.budget` -- tuned parameters and GFLOPs of every method
* :mod:`deflect_min.samples` -- 30 real BigEarthNet Sentinel-2 patches shipped in ``data/``
* :mod:`deflect_min.data` -- the five benchmark datasets
* :mod:`deflect_min.models`, :mod:`deflect_min.heads`, :mod:`deflect_min.build` -- the three GFMs, task heads, ``build_model``
* :mod:`deflect_min.training` -- ``train(TrainConfig)``: Lightning training, evaluation, resume, Table 1 aggregation
* :mod:`deflect_min.paper` -- the paper's Table 1 numbers
* :mod:`deflect_min.cli` -- the ``deflect-train`` and ``deflect-table`` commands
"""

from ._version import __version__
from .adaptation import METHODS, adapt, default_layers
from .adapters import load_adapter, save_adapter
from .baselines import input_adapter_parameters, merge
from .bands import BANDS, SENSORS, resolve_bands, rgb_of
from .build import TASKS, GFMClassifier, GFMSegmenter, build_model
from .budget import budget
from .deflection import deflect
from .heads import ClassificationHead, UPerNet
from .methods import (BitFitConfig, DeflectConfig, DeflectLoraConfig, FrozenConfig, FullConfig,
                      LoraConfig, MethodConfig, NormConfig, SLRConfig)
from .models import GFM_NAMES, GFMCard, gfm_card, load_gfm
from .samples import BEN19_CLASSES, BigEarthNetSamples, load_samples
from .trace import trace
from .tuning import count_parameters, load_peft_state_dict, peft_state_dict

__all__ = [
    "BANDS",
    "BEN19_CLASSES",
    "BigEarthNetSamples",
    "BitFitConfig",
    "ClassificationHead",
    "DeflectConfig",
    "DeflectLoraConfig",
    "FrozenConfig",
    "FullConfig",
    "GFMCard",
    "GFMClassifier",
    "GFMSegmenter",
    "GFM_NAMES",
    "LoraConfig",
    "METHODS",
    "MethodConfig",
    "NormConfig",
    "SENSORS",
    "SLRConfig",
    "TASKS",
    "UPerNet",
    "adapt",
    "budget",
    "build_model",
    "count_parameters",
    "default_layers",
    "deflect",
    "gfm_card",
    "input_adapter_parameters",
    "load_adapter",
    "load_gfm",
    "load_peft_state_dict",
    "load_samples",
    "merge",
    "peft_state_dict",
    "resolve_bands",
    "save_adapter",
    "rgb_of",
    "trace",
]
