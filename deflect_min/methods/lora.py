"""LoRA (Hu et al. 2021) on the attention and MLP projections of every block."""

from __future__ import annotations

import dataclasses

from torch import nn

from ..baselines import LoRALinear, baseline_input, wrap_targets
from ._config import BaselineConfig

__all__ = ["LoraConfig", "apply_lora"]


@dataclasses.dataclass(frozen=True)
class LoraConfig(BaselineConfig):
    """LoRA on ``qkv``, ``proj``, ``fc1``, ``fc2`` of every block, as HF peft's
    ``LoraConfig(r=rank, lora_alpha=alpha)``.

    Attributes:
        rank: the rank ``r`` of each update ``B A``.
        alpha: the scale numerator: updates are scaled by ``alpha / rank`` (``None``: ``alpha =
            rank``, a scale of 1).
    """

    method = "lora"
    rank: int = 16
    alpha: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._positive_int("rank")
        self._positive_or_none("alpha")


def apply_lora(vit: nn.Module, config: LoraConfig, *, bands, rgb_bands, band_stats) -> None:
    baseline_input(vit, bands=bands, rgb_bands=rgb_bands, band_stats=band_stats,
                   input=config.input, inflate_init=config.inflate_init)
    wrap_targets(vit, lambda linear: LoRALinear(base=linear, rank=config.rank, alpha=config.alpha))
    for m in vit.modules():
        if isinstance(m, LoRALinear):
            m.lora.requires_grad_(True)
