r"""The competing PEFT methods of the paper's Table 1, through :func:`deflect_min.adapt`.

======================  ======================================================================
method                  tuned encoder parameters (the task head is never counted)
======================  ======================================================================
``norm``                LayerNorm weights and biases (Norm tuning, Zhao et al. 2024)
``bitfit``              every bias (BitFit, Ben Zaken et al. 2022)
``lora``                :math:`A, B` on ``qkv``, ``proj``, ``fc1``, ``fc2`` of every block (Hu et al.
                        2021)
``slr``                 scaled low-rank adapters on the same layers + every LayerNorm (GDA's SLR)
======================  ======================================================================

This module holds the layers; :mod:`deflect_min.methods` holds each method's typed config and
the function that applies it (``frozen`` and ``full`` included).

**Input.** By default a baseline sees the three RGB bands of the C-band input, as an
RGB-pretrained encoder does in PANGAEA; only DEFLECT reads the other bands. With
``input="inflated"`` (every baseline, ``frozen`` and ``full`` included) it reads all C bands
through an inflated, trainable patch embedding :math:`W = [W_{RGB} \mid W_{extra}]`, whose
parameters :func:`input_adapter_parameters` reports apart from the tuned encoder parameters.
Both are our reading of the protocol (the book's method page, "How deflect-min relates
to the baselines").

Every wrapper keeps the frozen pretrained layer inside as ``base``; the parameters it adds
live in a :class:`~deflect_min.embedding.NewParameters` submodule, so
:func:`~deflect_min.tuning.count_parameters` keeps the pretrained total unchanged.
:func:`merge` folds the low-rank updates back into the frozen weights for inference.

Axis names: ``d`` output width, ``c`` input bands, ``r`` rank, ``i j`` up-conv kernel,
``u v`` down-conv kernel.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor, nn

from .attention import LowRank, UntangledAttention
from .embedding import BandStats, DecomposedPatchEmbed, NewParameters

__all__ = ["TARGETS", "INPUTS", "INFLATE_INITS", "LoRALinear", "SLRAdapter", "SLRLinear",
           "SLRPatchAdapter", "InflatedConv", "InflatedPatchEmbed", "baseline_input",
           "input_adapter_parameters", "merge", "wrap_targets"]

#: The linear layers that LoRA and SLR adapt, matched against the full module name. A bare
#: ``proj`` would also match ``patch_embed.proj``; inside an untangled attention the paths are
#: ``blocks.i.attn.attn.qkv``, which this pattern deliberately does not match.
TARGETS = re.compile(r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.fc[12])")
#: Values of the baselines' ``input`` option.
INPUTS = ("rgb", "inflated")
#: Values of ``inflate_init``: how the kernels of the bands beyond RGB start.
INFLATE_INITS = ("zeros", "repeat", "random")


# ---- input: RGB bands only, or all bands through an inflated patch embedding ---------------

class ExtraBandKernels(NewParameters):
    r""":math:`W_{extra}`: the patch-embedding kernels of the bands beyond RGB,
    ``(d, c - 3, P, P)``."""

    def __init__(self, *, rgb: nn.Conv2d, extra_bands: int, init: str = "zeros"):
        super().__init__()
        d, _, ph, pw = rgb.weight.shape
        like = dict(device=rgb.weight.device, dtype=rgb.weight.dtype)
        self.weight = nn.Parameter(torch.zeros(d, extra_bands, ph, pw, **like))
        with torch.no_grad():
            if init == "repeat":  # band 3 + k gets the RGB kernel k mod 3, unscaled (as GDA tiles)
                self.weight.copy_(rgb.weight[:, torch.arange(extra_bands) % 3])
            elif init == "random":  # Conv2d's default initialisation
                nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))


class InflatedConv(nn.Module):
    r"""An inflated patch embedding for C bands, trainable (the "input adapter").

    .. math::
        \mathrm{Conv}_P(z) = W_{RGB} * z_{RGB} + W_{extra} * z_{extra} + b

    ``rgb`` is the pretrained 3-band ``Conv2d`` (pretrained values, now trainable; still
    counted in the pretrained total), ``extra`` the kernels of the other ``c - 3`` bands
    (``zeros``: the model starts as the RGB one; ``repeat``; ``random``). The input holds
    the RGB bands first, in pretraining order, then the others.
    """

    def __init__(self, *, rgb: nn.Conv2d, extra_bands: int, init: str = "zeros"):
        super().__init__()
        self.rgb = rgb
        self.extra = ExtraBandKernels(rgb=rgb, extra_bands=extra_bands, init=init)

    def forward(self, z: Tensor) -> Tensor:
        out = self.rgb(z[:, :3])
        if self.extra.weight.shape[1] == 0:
            return out
        # W_extra * z_extra (no bias: b is in the RGB conv)
        return out + F.conv2d(z[:, 3:], self.extra.weight, stride=self.rgb.stride)


class InflatedPatchEmbed(DecomposedPatchEmbed):
    """A :class:`DecomposedPatchEmbed` whose pretrained embedding reads all C bands
    (standardised, RGB first) through an :class:`InflatedConv`."""

    def __init__(self, *, rgb_embed: nn.Module, bands, rgb_bands, band_stats: BandStats = None,
                 init: str = "zeros"):
        super().__init__(rgb_embed=rgb_embed, bands=bands, rgb_bands=rgb_bands,
                         band_stats=band_stats)
        rgb_index = [self.bands.index(b) for b in rgb_bands]
        extra = [i for i in range(len(self.bands)) if i not in rgb_index]
        self.register_buffer("input_index", torch.tensor(rgb_index + extra), persistent=False)
        self.rgb_embed.proj = InflatedConv(rgb=self.rgb_embed.proj, extra_bands=len(extra),
                                           init=init)
        self.rgb_embed.proj.requires_grad_(True)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.rgb_embed(self.standardize(x)[:, self.input_index])


def baseline_input(vit: nn.Module, *, bands, rgb_bands, band_stats: BandStats = None,
                   input: str = "rgb",  # noqa: A002 - the baselines' option keeps its name
                   inflate_init: str = "zeros") -> None:
    """Replace ``vit.patch_embed``: RGB bands only (``input="rgb"``) or all bands
    (``input="inflated"``, kernels beyond RGB initialised by ``inflate_init``)."""
    if input not in INPUTS:
        raise ValueError(f"input must be one of {list(INPUTS)}, got {input!r}.")
    if inflate_init not in INFLATE_INITS:
        raise ValueError(f"inflate_init must be one of {list(INFLATE_INITS)}, "
                         f"got {inflate_init!r}.")
    if input == "rgb":
        vit.patch_embed = DecomposedPatchEmbed(rgb_embed=vit.patch_embed, bands=bands,
                                               rgb_bands=rgb_bands, band_stats=band_stats)
    else:
        vit.patch_embed = InflatedPatchEmbed(rgb_embed=vit.patch_embed, bands=bands,
                                             rgb_bands=rgb_bands, band_stats=band_stats,
                                             init=inflate_init)


def input_adapter_parameters(model: nn.Module) -> int:
    """Trainable parameters of the inflated patch embedding (0 with RGB input).

    :func:`~deflect_min.tuning.count_parameters` counts them as tuned (they are), so the
    paper-comparable "tuned encoder parameters" are ``count_parameters(model)[0] -
    input_adapter_parameters(model)``; :func:`deflect_min.budget` reports both columns.
    """
    return sum(p.numel() for m in model.modules() if isinstance(m, InflatedConv)
               for p in m.parameters() if p.requires_grad)


# ---- LoRA ------------------------------------------------------------------------------------

class LoRALinear(nn.Module):
    r"""LoRA (Hu et al. 2021, Eq. (3)) around a frozen ``nn.Linear``:

    .. math::
        y = W x + b + \frac{\alpha}{r} B A x, \qquad A \in \mathbb{R}^{r \times d_{in}}
        \text{ (Kaiming-uniform)}, \quad B \in \mathbb{R}^{d_{out} \times r} = 0 .

    The same initialisation and scaling as HF peft's ``LoraConfig(r, lora_alpha)``.
    """

    def __init__(self, *, base: nn.Linear, rank: int = 16, alpha: float | None = None):
        super().__init__()
        self.base = base
        scale = (alpha if alpha is not None else rank) / rank
        self.lora = LowRank(dim_in=base.in_features, dim_out=base.out_features, rank=rank,
                            scale=scale).to(base.weight)

    def forward(self, x: Tensor) -> Tensor:
        # W x + b + (alpha / r) B A x
        return self.base(x) + self.lora(x)

    def merged(self) -> nn.Linear:
        r"""``base`` with :math:`W \leftarrow W + \frac{\alpha}{r} B A`."""
        with torch.no_grad():
            self.base.weight += self.lora.delta()
        return self.base


# ---- SLR (GDA, Scheibenreif et al. 2024) -----------------------------------------------------

class SLRAdapter(NewParameters):
    r"""SLR's new parameters for one linear layer ``d_in -> d_out`` (the exact GDA form, see
    the book's method page, "How deflect-min relates to the baselines"):
    scales :math:`s_{in}, s_{out}` (ones), a down-projection ``A`` (weights
    :math:`\mathcal{N}(0, 1)`, PyTorch's default bias) and an up-projection ``B`` (zero)."""

    def __init__(self, *, dim_in: int, dim_out: int, rank: int = 16):
        super().__init__()
        self.s_in = nn.Parameter(torch.ones(dim_in))
        self.s_out = nn.Parameter(torch.ones(dim_out))
        self.A = nn.Linear(dim_in, rank)
        nn.init.normal_(self.A.weight, 0.0, 1.0)
        self.B = nn.Linear(rank, dim_out)
        nn.init.zeros_(self.B.weight)
        nn.init.zeros_(self.B.bias)


class SLRLinear(nn.Module):
    r"""Scaled low-rank adaptation of a frozen linear layer :math:`y = W x + b`, exact GDA form:

    .. math::
        \tilde x = s_{in} \odot x, \qquad
        y = s_{out} \odot \big(W \tilde x + b + B(A \tilde x + b_A) + b_B\big)

    with no :math:`\alpha / r` scaling.
    """

    def __init__(self, *, base: nn.Linear, rank: int = 16):
        super().__init__()
        self.base = base
        self.slr = SLRAdapter(dim_in=base.in_features, dim_out=base.out_features,
                              rank=rank).to(base.weight)

    def forward(self, x: Tensor) -> Tensor:
        # x~ = s_in * x
        x_s = self.slr.s_in * x
        # y = s_out * (W x~ + b + B(A x~))
        return self.slr.s_out * (self.base(x_s) + self.slr.B(self.slr.A(x_s)))

    def merged(self) -> nn.Linear:
        r""":math:`W \leftarrow \mathrm{diag}(s_{out}) (W + B A) \mathrm{diag}(s_{in})`,
        :math:`b \leftarrow s_{out} \odot (b + B b_A + b_B)`."""
        a, s_in, s_out = self.slr, self.slr.s_in, self.slr.s_out
        with torch.no_grad():
            w = self.base.weight + a.B.weight @ a.A.weight
            self.base.weight.copy_(s_out[:, None] * w * s_in[None, :])
            b = a.B.weight @ a.A.bias + a.B.bias
            if self.base.bias is not None:
                b = b + self.base.bias
                self.base.bias.copy_(s_out * b)
            else:
                self.base.bias = nn.Parameter(s_out * b, requires_grad=False)
        return self.base


class SLRPatchAdapter(nn.Module):
    r"""GDA's conv adapter of the patch embedding (``patch_adapter=True``):

    .. math::
        y = s \odot \big(\mathrm{Conv}_P(x) + \mathrm{Up}(\mathrm{Down}(x))\big)

    ``Down``: ``c -> r``, kernel 4, stride 4; ``Up``: ``r -> D``, kernel and stride ``P / 4``
    (4 for GDA's P = 16); both keep PyTorch's default (non-zero) initialisation, so the model
    does **not** start at the pretrained one; :math:`s \in \mathbb{R}^D` starts at ones.
    """

    def __init__(self, *, base: nn.Module, in_channels: int, dim: int, patch_size: int,
                 rank: int = 16):
        super().__init__()
        if patch_size % 4:
            raise ValueError(f"the SLR patch adapter needs a patch size divisible by 4 (kernel-4 "
                             f"down conv), got {patch_size}; use patch_adapter=False.")
        self.base = base
        like = next(base.parameters())
        self.adapter = NewParameters()
        self.adapter.down = nn.Conv2d(in_channels, rank, kernel_size=4, stride=4)
        self.adapter.up = nn.Conv2d(rank, dim, kernel_size=patch_size // 4, stride=patch_size // 4)
        self.adapter.s = nn.Parameter(torch.ones(dim))
        self.adapter.to(like)

    def forward(self, x: Tensor) -> Tensor:
        s = rearrange(self.adapter.s, "d -> d 1 1")
        # s * (Conv_P(x) + Up(Down(x)))
        return s * (self.base(x) + self.adapter.up(self.adapter.down(x)))

    def merged(self) -> nn.Module:
        r"""Up after Down is one P x P, stride-P conv: :math:`K[d, c, 4i+u, 4j+v] = \sum_r
        U[d, r, i, j] D[r, c, u, v]`. Folded into ``base`` when it is a plain ``Conv2d``."""
        if not isinstance(self.base, nn.Conv2d):
            return self  # an inflated embedding: left as it is
        down, up, s = self.adapter.down, self.adapter.up, self.adapter.s
        with torch.no_grad():
            k = einsum(up.weight, down.weight, "d r i j, r c u v -> d c i u j v")
            k = rearrange(k, "d c i u j v -> d c (i u) (j v)")
            b = up.bias + einsum(up.weight, down.bias, "d r i j, r -> d")
            self.base.weight.copy_(s[:, None, None, None] * (self.base.weight + k))
            self.base.bias.copy_(s * (self.base.bias + b))
        return self.base


# ---- wrapping the target layers ------------------------------------------------------------

def wrap_targets(vit: nn.Module, wrap) -> None:
    """Replace every linear layer that :data:`TARGETS` matches by ``wrap(linear)``."""
    targets = [(n, m) for n, m in vit.named_modules()
               if TARGETS.fullmatch(n) and isinstance(m, nn.Linear)]
    if not targets:
        raise ValueError("no layer of this model matches blocks.<i>.attn.qkv / attn.proj / "
                         "mlp.fc1 / mlp.fc2: LoRA and SLR need a timm ViT.")
    for name, linear in targets:
        parent, child = name.rsplit(".", 1)
        setattr(vit.get_submodule(parent), child, wrap(linear))


# ---- merge -----------------------------------------------------------------------------------

def merge(model: nn.Module) -> nn.Module:
    r"""Fold the low-rank updates into the frozen weights for inference (in place; returns it).

    * ``lora``: :math:`W \leftarrow W + \frac{\alpha}{r} BA`; ``slr``: :math:`W \leftarrow
      \mathrm{diag}(s_{out})(W + BA)\mathrm{diag}(s_{in})` and the biases; the SLR patch
      adapter when the patch embedding is a plain ``Conv2d``. Each wrapper is replaced by its
      (updated) ``nn.Linear``, so the merged model costs what the pretrained one does.
    * ``deflect+lora``: the LoRA of :math:`W_Q, W_V` inside uAtt is folded into the q and v
      slices of ``qkv`` **only without deflection** (``deflect=False``). With deflection the
      reference pass :math:`\Delta_{ref}` (Eq. (1)) needs the pretrained :math:`W_Q, W_V` in
      the same block, so folding would change the output; those updates stay unmerged.

    The merged outputs equal the unmerged ones up to rounding.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, (LoRALinear, SLRLinear, SLRPatchAdapter)):
            merged = module.merged()
            if merged is not module:
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, merged)
        elif isinstance(module, UntangledAttention) and module.lora_q is not None \
                and not module.deflect:
            qkv = module.attn.qkv.weight
            dim = qkv.shape[1]
            with torch.no_grad():
                for i, lora in ((0, module.lora_q), (2, module.lora_v)):
                    qkv[i * dim:(i + 1) * dim] += lora.delta()
            module.lora_q = module.lora_v = None
    return model
