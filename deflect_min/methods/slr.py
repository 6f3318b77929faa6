"""SLR (Scheibenreif et al., CVPR 2024): scaled low-rank adapters + LayerNorms, exact GDA form."""

from __future__ import annotations

import dataclasses

from torch import nn

from ..baselines import SLRLinear, SLRPatchAdapter, baseline_input, wrap_targets
from ._config import BaselineConfig
from .selective import unfreeze_layer_norms

__all__ = ["SLRConfig", "apply_slr"]


@dataclasses.dataclass(frozen=True)
class SLRConfig(BaselineConfig):
    """SLR on ``qkv``, ``proj``, ``fc1``, ``fc2`` of every block, and every LayerNorm.

    Attributes:
        rank: the rank of each adapter's down- and up-projection.
        patch_adapter: also GDA's convolutional adapter of the patch embedding (its
            initialisation is not zero, so the model no longer starts at the pretrained one).
    """

    method = "slr"
    rank: int = 16
    patch_adapter: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self._positive_int("rank")
        if not isinstance(self.patch_adapter, bool):
            raise ValueError(f"slr: patch_adapter must be True or False, got {self.patch_adapter!r}.")


def apply_slr(vit: nn.Module, config: SLRConfig, *, bands, rgb_bands, band_stats) -> None:
    baseline_input(vit, bands=bands, rgb_bands=rgb_bands, band_stats=band_stats,
                   input=config.input, inflate_init=config.inflate_init)
    wrap_targets(vit, lambda linear: SLRLinear(base=linear, rank=config.rank))
    unfreeze_layer_norms(vit)
    for m in vit.modules():
        if isinstance(m, SLRLinear):
            m.slr.requires_grad_(True)
    if config.patch_adapter:
        embed = vit.patch_embed.rgb_embed
        patch = embed.patch_size if isinstance(embed.patch_size, int) else embed.patch_size[0]
        channels = len(vit.patch_embed.input_index) if config.input == "inflated" else 3
        embed.proj = SLRPatchAdapter(base=embed.proj, in_channels=channels, dim=vit.embed_dim,
                                     patch_size=patch, rank=config.rank)
        embed.proj.adapter.requires_grad_(True)
