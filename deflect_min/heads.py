"""Task heads: a linear classifier on pooled tokens, and UPerNet for segmentation.

Both are written from the published descriptions (UPerNet: Xiao et al., ECCV 2018; the
ViT-to-pyramid neck and the settings follow PANGAEA's UPerNet configuration: four tapped blocks,
rescales 4, 2, 1, 0.5, pyramid pooling scales 1, 2, 3, 6, 512 channels). No code is copied from
PANGAEA (GPL-3.0) or mmsegmentation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import reduce

__all__ = ["ClassificationHead", "Feature2Pyramid", "UPerNetHead", "UPerNet"]


class ClassificationHead(nn.Module):
    """Linear layer on the mean of the encoder's patch tokens.

    Mean pooling of the patch tokens (not the CLS token) is the default because two of the three
    GFMs are masked autoencoders: their pretraining loss never reads the CLS token, so it carries
    no trained summary of the image, whereas every patch token is trained. It is also what
    PANGAEA's later linear classification uses (an average-pooled feature map followed by one
    ``Linear``), and it lets every patch, and hence every adapted patch embedding, reach the
    classifier directly. ``pool="cls"`` uses the CLS token instead (DINO-MC trains it).

    Args:
        embed_dim: token width ``D``.
        num_classes: number of outputs.
        num_prefix_tokens: how many leading tokens are not patches (CLS, registers).
        pool: ``"mean"`` (patch tokens) or ``"cls"`` (first token).

    Input ``(B, N, D)`` tokens as returned by ``forward_features`` (after the final norm);
    output ``(B, num_classes)`` logits.
    """

    def __init__(self, *, embed_dim: int, num_classes: int, num_prefix_tokens: int = 1,
                 pool: str = "mean") -> None:
        super().__init__()
        if pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {pool!r}")
        if pool == "cls" and num_prefix_tokens < 1:
            raise ValueError("pool='cls' needs a CLS token (num_prefix_tokens >= 1)")
        self.pool = pool
        self.num_prefix_tokens = num_prefix_tokens
        self.fc = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.pool == "cls":
            pooled = tokens[:, 0]
        else:
            pooled = reduce(tokens[:, self.num_prefix_tokens:], "b n d -> b d", "mean")
        return self.fc(pooled)


def _conv_norm_act(cin: int, cout: int, k: int, norm_layer: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), norm_layer(cout),
                         nn.ReLU(inplace=True))


class Feature2Pyramid(nn.Module):
    """Turn equal-resolution ViT feature maps into a pyramid by fixed rescaling.

    A ViT's tapped blocks all have the patch grid's resolution ``H/p``. Each map ``i`` is
    resampled by ``rescales[i]``: a factor ``2**k > 1`` is ``k`` stride-2 transposed convolutions
    (with BatchNorm + GELU between them), ``1`` is the identity and ``1/2**k`` is max pooling with
    stride ``2**k``. With patch 16 and the default ``(4, 2, 1, 0.5)`` the maps come out at strides
    4, 8, 16 and 32, the pyramid a UPerNet decoder expects. Channels are unchanged.
    """

    def __init__(self, *, embed_dim: int, rescales: Sequence[float] = (4, 2, 1, 0.5),
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.rescales = tuple(rescales)
        branches = []
        for r in self.rescales:
            if r == 1:
                branches.append(nn.Identity())
            elif r > 1:
                k = round(math.log2(r))
                if 2**k != r:
                    raise ValueError(f"upscaling factors must be powers of 2, got {r}")
                layers: list[nn.Module] = []
                for j in range(k):
                    layers.append(nn.ConvTranspose2d(embed_dim, embed_dim, 2, stride=2))
                    if j < k - 1:
                        layers += [norm_layer(embed_dim), nn.GELU()]
                branches.append(nn.Sequential(*layers))
            else:
                s = int(round(1 / r))
                if s * r != 1:
                    raise ValueError(f"downscaling factors must be 1/n, got {r}")
                branches.append(nn.MaxPool2d(s, stride=s))
        self.branches = nn.ModuleList(branches)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(feats) != len(self.branches):
            raise ValueError(f"expected {len(self.branches)} feature maps, got {len(feats)}")
        return [b(f) for b, f in zip(self.branches, feats)]


class UPerNetHead(nn.Module):
    """UPerNet decoder: pyramid pooling on the coarsest map, then a feature pyramid network.

    1. Pyramid pooling module (PPM) on the coarsest map: average-pool it to ``s x s`` for each
       ``s`` in ``pool_scales``, 1x1 conv-BN-ReLU each to ``channels``, upsample back, concatenate
       with the map itself and fuse with a 3x3 conv-BN-ReLU.
    2. FPN: a 1x1 conv-BN-ReLU brings every finer map to ``channels``; going from coarse to fine,
       each level adds the upsampled level above it; a 3x3 conv-BN-ReLU smooths every level but
       the PPM one.
    3. Fusion: all levels upsampled to the finest, concatenated, 3x3 conv-BN-ReLU, dropout, 1x1
       conv to ``num_classes``.

    Input: maps ordered fine to coarse. Output: logits at the finest map's resolution.
    """

    def __init__(self, *, in_channels: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        in_channels = list(in_channels)
        top = in_channels[-1]
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), _conv_norm_act(top, channels, 1, norm_layer))
            for s in pool_scales
        )
        self.ppm_fuse = _conv_norm_act(top + len(pool_scales) * channels, channels, 3, norm_layer)
        self.lateral = nn.ModuleList(_conv_norm_act(c, channels, 1, norm_layer)
                                     for c in in_channels[:-1])
        self.smooth = nn.ModuleList(_conv_norm_act(channels, channels, 3, norm_layer)
                                    for _ in in_channels[:-1])
        self.fuse = _conv_norm_act(len(in_channels) * channels, channels, 3, norm_layer)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    @staticmethod
    def _up(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        top = feats[-1]
        pooled = [self._up(p(top), top.shape[-2:]) for p in self.ppm]
        levels = [lat(f) for lat, f in zip(self.lateral, feats[:-1])]
        levels.append(self.ppm_fuse(torch.cat([top, *pooled], dim=1)))
        for i in range(len(levels) - 1, 0, -1):  # top-down pathway
            levels[i - 1] = levels[i - 1] + self._up(levels[i], levels[i - 1].shape[-2:])
        outs = [s(lv) for s, lv in zip(self.smooth, levels[:-1])] + [levels[-1]]
        size = outs[0].shape[-2:]
        fused = self.fuse(torch.cat([self._up(o, size) for o in outs], dim=1))
        return self.classifier(self.dropout(fused))


class UPerNet(nn.Module):
    """Segmentation head for a ViT: :class:`Feature2Pyramid` neck + :class:`UPerNetHead`.

    ``forward(feats, out_size)`` takes the tapped blocks' ``(B, D, h, w)`` maps (fine to coarse
    order does not matter here: all share the patch grid) and returns ``(B, num_classes, *out_size)``
    logits, bilinearly upsampled to the input resolution.
    """

    def __init__(self, *, embed_dim: int, num_classes: int, channels: int = 512,
                 rescales: Sequence[float] = (4, 2, 1, 0.5),
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.neck = Feature2Pyramid(embed_dim=embed_dim, rescales=rescales, norm_layer=norm_layer)
        self.decoder = UPerNetHead(in_channels=[embed_dim] * len(rescales),
                                   num_classes=num_classes, channels=channels,
                                   pool_scales=pool_scales, dropout=dropout, norm_layer=norm_layer)

    def forward(self, feats: Sequence[torch.Tensor],
                out_size: torch.Size | tuple[int, int]) -> torch.Tensor:
        logits = self.decoder(self.neck(feats))
        return F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)
