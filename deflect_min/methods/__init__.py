"""Every adaptation method: a typed config and an ``apply`` function, in one registry.

====================  =========================  ==============================================
name                  config                     module
====================  =========================  ==============================================
``full``              :class:`FullConfig`        :mod:`~deflect_min.methods.encoder`
``frozen``            :class:`FrozenConfig`      :mod:`~deflect_min.methods.encoder`
``norm``              :class:`NormConfig`        :mod:`~deflect_min.methods.selective`
``bitfit``            :class:`BitFitConfig`      :mod:`~deflect_min.methods.selective`
``lora``              :class:`LoraConfig`        :mod:`~deflect_min.methods.lora`
``slr``               :class:`SLRConfig`         :mod:`~deflect_min.methods.slr`
``deflect``           :class:`DeflectConfig`     :mod:`~deflect_min.methods.deflect`
``deflect+lora``      :class:`DeflectLoraConfig` :mod:`~deflect_min.methods.deflect`
====================  =========================  ==============================================

Adding a method is one module (a frozen :class:`MethodConfig` dataclass that validates its
options, and ``apply(vit, config, *, bands, rgb_bands, band_stats)``, which replaces or wraps
modules and unfreezes what it tunes) and one line in :data:`METHODS`. The book's developer notes
show a worked example.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._config import INFLATE_INITS, INPUTS, BaselineConfig, MethodConfig
from .deflect import STREAMS, DeflectConfig, DeflectLoraConfig, apply_deflect, default_layers
from .encoder import FrozenConfig, FullConfig, apply_frozen, apply_full
from .lora import LoraConfig, apply_lora
from .selective import BitFitConfig, NormConfig, apply_bitfit, apply_norm
from .slr import SLRConfig, apply_slr

__all__ = ["METHODS", "Method", "MethodConfig", "BaselineConfig", "FullConfig", "FrozenConfig",
           "NormConfig", "BitFitConfig", "LoraConfig", "SLRConfig", "DeflectConfig",
           "DeflectLoraConfig", "config_of", "default_layers", "INPUTS", "INFLATE_INITS",
           "STREAMS"]


@dataclass(frozen=True)
class Method:
    """One registry entry: the config class, what applies it, and one line for listings."""

    config: type[MethodConfig]
    apply: Callable[..., None]
    summary: str

    @property
    def name(self) -> str:
        return self.config.method


#: Every method by name, in the order of the paper's Table 1, then DEFLECT with LoRA.
METHODS: dict[str, Method] = {m.name: m for m in (
    Method(FullConfig, apply_full, "full fine-tuning (the oracle)"),
    Method(FrozenConfig, apply_frozen, "frozen encoder: only the task head learns"),
    Method(NormConfig, apply_norm, "Norm tuning: LayerNorm weights and biases"),
    Method(BitFitConfig, apply_bitfit, "BitFit: every bias"),
    Method(LoraConfig, apply_lora, "LoRA on qkv, proj, fc1, fc2"),
    Method(SLRConfig, apply_slr, "SLR: scaled low-rank adapters + LayerNorms"),
    Method(DeflectConfig, apply_deflect, "DEFLECT: x_A, untangled attention, deflection"),
    Method(DeflectLoraConfig, apply_deflect, "DEFLECT with LoRA on W_Q, W_V inside uAtt"),
)}


def config_of(method: str | MethodConfig, **options) -> MethodConfig:
    """The typed config of ``method`` (a name and keyword options, or a config already)."""
    if isinstance(method, MethodConfig):
        if options:
            raise ValueError(f"pass the options of {method.method!r} in its config or as "
                             f"keywords, not both (got config and {sorted(options)}).")
        return method
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods are {sorted(METHODS)}.")
    return METHODS[method].config.from_options(**options)
