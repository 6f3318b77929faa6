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
* :mod:`deflect_min.samples` -- 60 real BigEarthNet Sentinel-2 patches shipped in ``data/``
* :mod:`deflect_min.data` -- the five benchmark datasets
* :mod:`deflect_min.models`, :mod:`deflect_min.heads`, :mod:`deflect_min.build` -- the GFMs, task heads, ``build_model``
* :mod:`deflect_min.training` -- ``train(TrainConfig)``: Lightning training, evaluation, resume, Table 1 aggregation
* :mod:`deflect_min.paper` -- the paper's Table 1 numbers
* :mod:`deflect_min.backbones` -- any timm ViT as the backbone (``load_backbone``)
* :mod:`deflect_min.adapters` -- ``save_adapter`` and ``load_adapter``
* :mod:`deflect_min.predict`, :mod:`deflect_min.plotting` -- ``deflect-predict``, ``deflect-plot``
* :mod:`deflect_min.cli` -- the ``deflect-train`` and ``deflect-table`` commands
"""

import sys
import types

from ._version import __version__

#: Where each public name lives: imported on first use (PEP 562), so that `deflect-train --help`
#: and `import deflect_min` stay fast (torch, timm and Lightning load only when needed).
_LAZY = {
    "BANDS": "bands",
    "BEN19_CLASSES": "samples",
    "BigEarthNetSamples": "samples",
    "BitFitConfig": "methods",
    "ClassificationHead": "heads",
    "DeflectConfig": "methods",
    "DeflectLoraConfig": "methods",
    "FrozenConfig": "methods",
    "FullConfig": "methods",
    "GFMCard": "models",
    "GFMClassifier": "build",
    "GFMSegmenter": "build",
    "GFM_NAMES": "models",
    "LoraConfig": "methods",
    "METHODS": "adaptation",
    "MethodConfig": "methods",
    "NormConfig": "methods",
    "SENSORS": "bands",
    "SLRConfig": "methods",
    "TASKS": "build",
    "UPerNet": "heads",
    "adapt": "adaptation",
    "budget": "budget",
    "build_model": "build",
    "count_parameters": "tuning",
    "default_layers": "adaptation",
    "deflect": "deflection",
    "gfm_card": "models",
    "input_adapter_parameters": "baselines",
    "load_adapter": "adapters",
    "load_gfm": "models",
    "load_peft_state_dict": "tuning",
    "load_samples": "samples",
    "merge": "baselines",
    "peft_state_dict": "tuning",
    "resolve_bands": "bands",
    "rgb_of": "bands",
    "save_adapter": "adapters",
    "trace": "trace",
}


#: Public functions named like the submodule that defines them: the package attribute stays the
#: function when the submodule is imported later (``from deflect_min.budget import S2_10``).
_SHADOWED = {"budget", "trace"}


def __getattr__(name: str):
    import importlib
    import importlib.util

    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif name.isidentifier() and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)  # a submodule: dm.tuning ...
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    object.__setattr__(sys.modules[__name__], name, value)
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return  # the import system binding the submodule: keep the function (lazily)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "__version__",
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
