r"""Embedding decomposition, Eq. (3) of the paper: :math:`x = x_P + x_A`.

* :math:`x_P` (Eq. (R1)) is the frozen pretrained patch embedding applied to the standardised
  RGB bands: it carries the radiometry and the geometry of RGB.
* :math:`x_A` (Eqs. (R2)-(R3), reconstructed) carries the spectral information beyond RGB,
  radiometric only: a pixel-set encoder reads every pixel's bands and spectral indices,
  applies a small shared MLP and pools mean and standard deviation inside each patch, so the
  arrangement of pixels inside a patch is discarded.

Axis names: ``b`` batch, ``c`` band, ``f`` per-pixel feature, ``gh gw`` patch grid,
``p1 p2`` pixels inside a patch, ``n`` patch tokens, ``d`` token width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .indices import DEFAULT_INDICES, SpectralIndices

__all__ = ["REFLECTANCE_MAX", "Standardize", "PixelSetEncoder", "SpectralEmbedding",
           "DecomposedPatchEmbed", "SideStream", "NewParameters", "patch_size_of"]

BandStats = Mapping[str, tuple[float, float]] | tuple[Sequence[float], Sequence[float]] | None

#: Largest input value an adapted model accepts as reflectance. Reflectance lies in [0, 1] and
#: clouds, snow and glint reach about 1.5; digital numbers (reflectance x 10^4, the most common
#: mistake) exceed 10 for any pixel brighter than 0.001, and 8-bit values for any above 10/255.
REFLECTANCE_MAX = 10.0


def patch_size_of(patch_embed: nn.Module) -> int:
    """The (square) patch size of a timm ``PatchEmbed``, which stores it as an int or a pair."""
    p = patch_embed.patch_size
    return p if isinstance(p, int) else p[0]


class NewParameters(nn.Module):
    """Marker base class: every parameter below such a module is added by an adaptation
    method (it is tuned, and it is not part of the pretrained encoder's parameter count)."""


class Standardize(nn.Module):
    r"""Per-band standardisation :math:`z = (X - \mu) / \sigma` (identity without statistics).

    Args:
        bands: band names in channel order.
        band_stats: ``{band: (mean, std)}`` in reflectance units, or ``(means, stds)`` in
            channel order, or ``None`` (standardise nothing).
    """

    def __init__(self, *, bands: Sequence[str], band_stats: BandStats = None):
        super().__init__()
        self.enabled = band_stats is not None
        mean, std = [0.0] * len(bands), [1.0] * len(bands)
        if isinstance(band_stats, Mapping):
            missing = [b for b in bands if b not in band_stats]
            if missing:
                raise ValueError(f"band_stats has no (mean, std) for {missing}; give one per band "
                                 f"of {list(bands)}.")
            mean = [float(band_stats[b][0]) for b in bands]
            std = [float(band_stats[b][1]) for b in bands]
        elif band_stats is not None:
            mean, std = ([float(v) for v in torch.as_tensor(s).flatten().tolist()]
                         for s in band_stats)
            if len(mean) != len(bands) or len(std) != len(bands):
                raise ValueError(f"band_stats must hold {len(bands)} means and {len(bands)} stds "
                                 f"(one per band), got {len(mean)} and {len(std)}.")
        bad_mean = [b for b, m in zip(bands, mean) if not math.isfinite(m)]
        if bad_mean:
            raise ValueError(f"band_stats has a NaN or infinite mean for {bad_mean} (means "
                             f"{mean}); recompute the statistics over finite pixels (mask "
                             f"nodata first, e.g. with numpy.nanmean).")
        bad_std = [b for b, s in zip(bands, std) if not (math.isfinite(s) and s > 0)]
        if bad_std:
            raise ValueError(f"band_stats has a std that is not a positive finite number for "
                             f"{bad_std} (stds {std}); a NaN std comes from nodata pixels "
                             f"(recompute over finite pixels, e.g. with numpy.nanstd), a zero "
                             f"std from a constant band (recompute over more images, or drop "
                             f"that band).")
        mean, std = torch.tensor(mean), torch.tensor(std)
        self.register_buffer("mean", rearrange(mean, "c -> c 1 1"), persistent=False)
        self.register_buffer("std", rearrange(std, "c -> c 1 1"), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std if self.enabled else x


class PixelSetEncoder(NewParameters):
    r"""Pixel-set encoder, Eq. (R3) (reconstructed after Garnot et al. 2020's PSE).

    .. math::
        m_n = \operatorname{mean}_{u \in \Omega_n} \varphi(s_u), \quad
        \sigma_n = \sqrt{\operatorname{var}_{u \in \Omega_n} \varphi(s_u) + 10^{-6}}, \quad
        x_{A,n} = W_A [m_n ; \sigma_n] + b_A

    Args:
        in_features: per-pixel descriptor size :math:`C + K`.
        dim: token width :math:`D`.
        hidden: widths of the shared per-pixel MLP :math:`\varphi`.
        zero_init: start :math:`W_A, b_A` at zero (single-stream, where :math:`x_A` enters
            the residual stream); random otherwise.
        recompute: recompute :math:`\varphi` in the backward pass instead of storing its
            per-pixel activations (saves memory at 224 px, costs one extra small MLP pass).
        chunk_pixels: on CPU, encode the patches in chunks of about this many pixels (the
            same result): each chunk's per-pixel activations stay in the CPU cache, which
            makes the element-wise LayerNorm / GELU / pooling passes several times faster.
            ``0``: one pass over all patches (always so on GPU).
    """

    def __init__(self, *, in_features: int, dim: int, hidden: tuple[int, int] = (32, 64),
                 zero_init: bool = False, recompute: bool = True, chunk_pixels: int = 8192):
        super().__init__()
        h1, h2 = hidden
        self.phi = nn.Sequential(
            nn.Linear(in_features, h1), nn.LayerNorm(h1), nn.GELU(),
            nn.Linear(h1, h2), nn.LayerNorm(h2), nn.GELU(),
        )
        self.to_token = nn.Linear(2 * h2, dim)  # W_A, b_A
        if zero_init:
            nn.init.zeros_(self.to_token.weight)
            nn.init.zeros_(self.to_token.bias)
        self.recompute = recompute
        self.chunk_pixels = chunk_pixels

    def _pool(self, s: Tensor) -> Tensor:
        # s: (b, n, pixels, f) -> mean and std of phi over the pixels of each patch
        e = self.phi(s)
        m = e.mean(dim=2, keepdim=True)
        # two-pass variance mean((e - m)^2) = e.var(unbiased=False), several times faster on CPU
        sigma = torch.sqrt((e - m).square().mean(dim=2) + 1e-6)
        return torch.cat([rearrange(m, "b n 1 f -> b n f"), sigma], dim=-1)

    def forward(self, s: Tensor) -> Tensor:
        """``s``: pixel sets ``(b, n, pixels, f)`` -> ``x_A`` ``(b, n, d)``."""
        b, n, pixels, _ = s.shape
        recompute = self.recompute and torch.is_grad_enabled() and any(
            p.requires_grad for p in self.phi.parameters())
        sets = rearrange(s, "b n p f -> 1 (b n) p f")  # every patch of the batch in a row
        per_chunk = b * n
        if self.chunk_pixels and s.device.type == "cpu":
            per_chunk = max(1, self.chunk_pixels // pixels)
        pooled = [checkpoint(self._pool, chunk, use_reentrant=False) if recompute
                  else self._pool(chunk) for chunk in sets.split(per_chunk, dim=1)]
        pooled = rearrange(torch.cat(pooled, dim=1), "1 (b n) f -> b n f", b=b)
        return self.to_token(pooled)


class SpectralEmbedding(NewParameters):
    r"""The spectral token :math:`x_A` of every patch, Eqs. (R2)-(R3).

    Per pixel, :math:`s_u = [z_u ; \iota_u]`: all C standardised bands and the K spectral
    indices (from reflectance); then the pixel-set encoder pools each P x P patch.

    Args:
        bands: band names in channel order.
        patch_size: the ViT's patch size P.
        dim: token width D.
        indices: spyndex index names to try.
        zero_init: see :class:`PixelSetEncoder`.
    """

    def __init__(self, *, bands: Sequence[str], patch_size: int, dim: int,
                 indices: tuple[str, ...] = DEFAULT_INDICES, zero_init: bool = False):
        super().__init__()
        self.patch_size = patch_size
        self.indices = SpectralIndices(bands=list(bands), names=indices)
        self.encoder = PixelSetEncoder(in_features=len(bands) + len(self.indices.names), dim=dim,
                                       zero_init=zero_init)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        """``x``: reflectance, ``z``: standardised bands, both ``(b, c, h, w)``.
        Returns ``x_A`` as ``(b, gh, gw, d)``."""
        s = torch.cat([z, self.indices(x)], dim=1)
        p = self.patch_size
        gh, gw = s.shape[-2] // p, s.shape[-1] // p
        sets = rearrange(s, "b f (gh p1) (gw p2) -> b (gh gw) (p1 p2) f", p1=p, p2=p)
        x_A = self.encoder(sets)
        return rearrange(x_A, "b (gh gw) d -> b gh gw d", gh=gh, gw=gw)


class SideStream:
    """The spectral side stream ``a = [0; x_A]`` shared by the adapted blocks (dual-stream).

    The decomposed patch embedding writes ``x_A`` here at every forward pass; each untangled
    attention reads it, with zero vectors in the prefix (CLS / register) slots.
    """

    def __init__(self) -> None:
        self.x_A: Tensor | None = None

    def tokens(self, num_tokens: int, transform: nn.Module | None = None) -> Tensor:
        """``a`` as ``(b, num_tokens, d)``: zeros for the prefix tokens, then ``x_A``
        (passed through ``transform`` first, so a LayerNorm cannot fill the CLS slot)."""
        if self.x_A is None:
            raise RuntimeError("the spectral side stream is empty: call the adapted model on a "
                               "multispectral image (B, C, H, W), not its blocks alone.")
        b, n, d = self.x_A.shape
        prefix = num_tokens - n
        if prefix < 0:
            raise RuntimeError(f"the block sees {num_tokens} tokens but x_A has {n} patch tokens; "
                               f"call the adapted model on the whole image, not its blocks on "
                               f"tokens from another input.")
        x_A = self.x_A if transform is None else transform(self.x_A)
        return torch.cat([x_A.new_zeros(b, prefix, d), x_A], dim=1)


class DecomposedPatchEmbed(nn.Module):
    r"""Drop-in replacement of a timm ``PatchEmbed`` that takes all C bands (Eq. (3)).

    * standardises (``band_stats``) and selects the RGB bands, in the model's pretraining
      order, for the frozen pretrained embedding: :math:`x_P`, Eq. (R1);
    * with a :class:`SpectralEmbedding`, computes :math:`x_A` and either stores it in the
      side stream (``stream="dual"``, returns :math:`x_P`) or also adds it
      (``stream="single"``, returns :math:`x_P + x_A`);
    * without one (the baselines) it only selects the RGB bands.

    Attribute lookups it does not define (``num_patches``, ``grid_size``, ``patch_size`` ...)
    go to the pretrained embedding, so timm's and torchgeo's ViT code keep working.
    """

    def __init__(self, *, rgb_embed: nn.Module, bands: Sequence[str], rgb_bands: Sequence[str],
                 band_stats: BandStats = None, spectral: SpectralEmbedding | None = None,
                 stream: str | None = None, side: SideStream | None = None):
        super().__init__()
        self.rgb_embed = rgb_embed
        self.patch = patch_size_of(rgb_embed)
        self.bands = list(bands)
        self.register_buffer("rgb_index", torch.tensor([self.bands.index(b) for b in rgb_bands]),
                             persistent=False)
        self.standardize = Standardize(bands=self.bands, band_stats=band_stats)
        self.spectral = spectral
        self.stream = stream
        self.side = side

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("rgb_embed"), name)

    def check_input(self, x: Tensor) -> None:
        """Raise a ``ValueError`` that says what is wrong with ``x`` and what to do."""
        if x.ndim != 4:
            raise ValueError(f"expected a batch of images (B, C, H, W), got shape {tuple(x.shape)}.")
        if x.shape[0] == 0:
            raise ValueError(f"the batch is empty (shape {tuple(x.shape)}); pass at least one "
                             f"image (is the data split or the DataLoader empty?).")
        if not x.is_floating_point():
            raise TypeError(f"the input is {x.dtype}, not float reflectance; convert it first, "
                            f"e.g. x.float() / 10000 for Sentinel-2 / HLS digital numbers, "
                            f"x.float() / 255 for 8-bit images.")
        if x.shape[1] != len(self.bands):
            raise ValueError(f"the model was adapted to {len(self.bands)} bands {self.bands} but "
                             f"the input has {x.shape[1]} channels; pass the bands in that order.")
        p = self.patch
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of the patch size "
                             f"{p}; crop or resize it (e.g. to {p * (x.shape[-1] // p)} px).")
        if x.is_meta:  # shapes only (FLOP counting): there are no values to check
            return
        if not torch.isfinite(x).all():
            raise ValueError("the input holds NaN or inf values; fill nodata pixels with a finite "
                             "value (e.g. 0) and mask them out of the loss.")
        if self.standardize.enabled:  # band_stats are reflectance: so must the input be
            peak = float(x.detach().abs().amax())
            if peak > REFLECTANCE_MAX:
                raise ValueError(
                    f"the input reaches {peak:g}, which cannot be reflectance (at most "
                    f"{REFLECTANCE_MAX:g}; surface reflectance rarely exceeds 1.5): these look "
                    f"like digital numbers. Divide by the sensor's scale first (Sentinel-2 / HLS "
                    f"L2A: x / 10000; 8-bit images: x / 255).")

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        z = self.standardize(x)
        x_P = self.rgb_embed(z[:, self.rgb_index])
        if self.spectral is None:
            return x_P
        x_A = self.spectral(x, z)  # (b, gh, gw, d)
        if self.side is not None:
            self.side.x_A = rearrange(x_A, "b gh gw d -> b (gh gw) d")
        if self.stream != "single":
            return x_P
        if x_P.ndim == 3:  # timm flattens to (b, n, d) unless dynamic_img_size
            x_A = rearrange(x_A, "b gh gw d -> b (gh gw) d")
        return x_P + x_A.to(x_P.dtype)
