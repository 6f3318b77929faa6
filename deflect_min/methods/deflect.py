"""DEFLECT: the spectral embedding x_A (Eqs. (R2)-(R3)), untangled attention (Eqs. (R4)-(R5))
and embedding deflection (Eq. (R6)) in the adapted blocks; optionally with LoRA inside uAtt."""

from __future__ import annotations

import dataclasses

from torch import nn

from ..attention import UntangledAttention
from ..embedding import DecomposedPatchEmbed, NewParameters, SideStream, SpectralEmbedding, patch_size_of
from ..indices import DEFAULT_INDICES
from ._config import MethodConfig

__all__ = ["DeflectConfig", "DeflectLoraConfig", "apply_deflect", "default_layers", "STREAMS"]

#: Values of ``stream``, Eq. (R7).
STREAMS = ("dual", "single")


def default_layers(depth: int) -> list[int]:
    """The first ``3/8`` of the blocks (ViT-L/16: 9 of 24, ViT-B and ViT-S: 4 of 12).

    Reconstructed choice: the paper names the choice of layers as a sensitivity but its
    setting was not available; this one gives about 0.2 % of ViT-L/16's parameters at rank 8.
    """
    return list(range(max(1, depth * 3 // 8)))


@dataclasses.dataclass(frozen=True)
class DeflectConfig(MethodConfig):
    """DEFLECT's options (every default is a reconstructed choice, see the method page).

    Attributes:
        layers: the adapted blocks (``None``: :func:`default_layers`, the first 3/8).
        rank: rank of the new factors of uAtt, Eq. (R4).
        stream: ``"dual"`` (x_A a side input of the adapted blocks) or ``"single"`` (x = x_P +
            x_A at the input), Eq. (R7).
        deflect: rescale each displacement to the reference norm, Eq. (R6) (``False``: uAtt
            alone, the ablation).
        lora_rank: rank of LoRA on W_Q and W_V inside uAtt (0: none).
        lora_alpha: LoRA's scale numerator (``None``: ``alpha = lora_rank``).
        indices: spectral indices of the per-pixel descriptor, Eq. (R2) (spyndex names).
        eps_rel: relative floor of the norm in Eq. (R6), against division by zero.
    """

    method = "deflect"
    layers: tuple[int, ...] | None = None
    rank: int = 8
    stream: str = "dual"
    deflect: bool = True
    lora_rank: int = 0
    lora_alpha: float | None = None
    indices: tuple[str, ...] = DEFAULT_INDICES
    eps_rel: float = 1e-4

    def __post_init__(self) -> None:
        if self.layers is not None:
            layers = tuple(sorted({int(i) for i in self.layers}))
            if not layers or layers[0] < 0 or any(int(i) != i for i in self.layers):
                raise ValueError(f"deflect: layers must be a non-empty list of block indices "
                                 f"(>= 0), or None for the default, got {self.layers!r}.")
            self._set("layers", layers)
        self._positive_int("rank")
        self._choice("stream", STREAMS)
        if not isinstance(self.deflect, bool):
            raise ValueError(f"deflect: deflect must be True or False, got {self.deflect!r}.")
        self._positive_int("lora_rank", allow_zero=True)
        self._positive_or_none("lora_alpha")
        if isinstance(self.indices, str) or not all(isinstance(i, str) for i in self.indices):
            raise ValueError(f"deflect: indices must be a list of spyndex index names, "
                             f"got {self.indices!r}.")
        self._set("indices", tuple(self.indices))
        if not (isinstance(self.eps_rel, (int, float)) and 0 < self.eps_rel < 1):
            raise ValueError(f"deflect: eps_rel must be a number in (0, 1), got {self.eps_rel!r}.")


@dataclasses.dataclass(frozen=True)
class DeflectLoraConfig(DeflectConfig):
    """DEFLECT with LoRA updates of W_Q and W_V inside uAtt ("combined with low-rank updates")."""

    method = "deflect+lora"
    lora_rank: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lora_rank == 0:
            raise ValueError("deflect+lora: lora_rank must be a positive integer (default 8); "
                             "for DEFLECT without LoRA use method='deflect'.")


def apply_deflect(vit: nn.Module, config: DeflectConfig, *, bands, rgb_bands, band_stats) -> None:
    depth = len(vit.blocks)
    layers = default_layers(depth) if config.layers is None else list(config.layers)
    if layers[-1] >= depth:
        raise ValueError(f"deflect: layers must be block indices in [0, {depth - 1}] for this "
                         f"{depth}-block ViT, got {layers}.")
    like = dict(device=vit.patch_embed.proj.weight.device, dtype=vit.patch_embed.proj.weight.dtype)
    side = SideStream()
    spectral = SpectralEmbedding(bands=bands, patch_size=patch_size_of(vit.patch_embed),
                                 dim=vit.embed_dim, indices=config.indices,
                                 zero_init=config.stream == "single").to(**like)
    vit.patch_embed = DecomposedPatchEmbed(rgb_embed=vit.patch_embed, bands=bands,
                                           rgb_bands=rgb_bands, band_stats=band_stats,
                                           spectral=spectral, stream=config.stream, side=side)
    for i in layers:
        block = vit.blocks[i]
        block.attn = UntangledAttention(attn=block.attn, side=side, rank=config.rank,
                                        stream=config.stream, lora_rank=config.lora_rank,
                                        lora_alpha=config.lora_alpha, deflect=config.deflect,
                                        eps_rel=config.eps_rel).to(**like)
    for module in vit.modules():  # what DEFLECT added; the wrapped pretrained attention stays frozen
        if isinstance(module, NewParameters):
            module.requires_grad_(True)
