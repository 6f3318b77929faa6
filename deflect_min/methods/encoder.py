"""The two ends of the scale: the frozen encoder (only the head learns) and full fine-tuning."""

from __future__ import annotations

import dataclasses

from torch import nn

from ..baselines import baseline_input
from ._config import BaselineConfig

__all__ = ["FrozenConfig", "FullConfig", "apply_frozen", "apply_full"]


@dataclasses.dataclass(frozen=True)
class FrozenConfig(BaselineConfig):
    """Frozen encoder: only the task head is trained (options: :class:`BaselineConfig`)."""

    method = "frozen"


@dataclasses.dataclass(frozen=True)
class FullConfig(BaselineConfig):
    """Full fine-tuning, the paper's oracle (options: :class:`BaselineConfig`)."""

    method = "full"


def apply_frozen(vit: nn.Module, config: FrozenConfig, *, bands, rgb_bands, band_stats) -> None:
    baseline_input(vit, bands=bands, rgb_bands=rgb_bands, band_stats=band_stats,
                   input=config.input, inflate_init=config.inflate_init)


def apply_full(vit: nn.Module, config: FullConfig, *, bands, rgb_bands, band_stats) -> None:
    """Every encoder parameter the forward pass uses (not those in ``vit.unused_parameters``)."""
    apply_frozen(vit, config, bands=bands, rgb_bands=rgb_bands, band_stats=band_stats)
    unused = set(getattr(vit, "unused_parameters", ()))
    for name, p in vit.named_parameters():
        p.requires_grad_(name not in unused)
