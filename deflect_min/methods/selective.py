"""Selective fine-tuning: Norm tuning (LayerNorm affine parameters) and BitFit (every bias)."""

from __future__ import annotations

import dataclasses

from torch import nn

from ..baselines import baseline_input
from ..tuning import encoder_parameters
from ._config import BaselineConfig

__all__ = ["NormConfig", "BitFitConfig", "apply_norm", "apply_bitfit", "unfreeze_layer_norms"]


@dataclasses.dataclass(frozen=True)
class NormConfig(BaselineConfig):
    """Norm tuning (Zhao et al. 2024) (options: :class:`BaselineConfig`)."""

    method = "norm"


@dataclasses.dataclass(frozen=True)
class BitFitConfig(BaselineConfig):
    """BitFit (Ben Zaken et al. 2022) (options: :class:`BaselineConfig`)."""

    method = "bitfit"


def unfreeze_layer_norms(vit: nn.Module) -> None:
    """Every LayerNorm weight and bias of the pretrained encoder."""
    for _, module, p in encoder_parameters(vit):
        if isinstance(module, nn.LayerNorm):
            p.requires_grad_(True)


def apply_norm(vit: nn.Module, config: NormConfig, *, bands, rgb_bands, band_stats) -> None:
    baseline_input(vit, bands=bands, rgb_bands=rgb_bands, band_stats=band_stats,
                   input=config.input, inflate_init=config.inflate_init)
    unfreeze_layer_norms(vit)


def apply_bitfit(vit: nn.Module, config: BitFitConfig, *, bands, rgb_bands, band_stats) -> None:
    baseline_input(vit, bands=bands, rgb_bands=rgb_bands, band_stats=band_stats,
                   input=config.input, inflate_init=config.inflate_init)
    for name, _, p in encoder_parameters(vit):
        if name.rsplit(".", 1)[-1] == "bias":
            p.requires_grad_(True)
