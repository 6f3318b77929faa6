r"""Untangled attention (uAtt), Eqs. (1), (R4), (R5).

The pretrained attention, Eq. (1) of the paper, computes on the RGB stream :math:`h = LN_1(x)`
the displacement :math:`\Delta_{\mathrm{ref}}` (here per head, :math:`d_h = D / H`):

.. math::
    \Delta_{\mathrm{ref}} = \operatorname{softmax}\!\big(q_0 k_0^\top / \sqrt{d_h}\big)\, v_0 W_O + b_O,
    \quad q_0 = h W_Q,\; k_0 = h W_K,\; v_0 = h W_V .

In uAtt the RGB-stream projections are :math:`q_P = q_0`, :math:`k_P = k_0`, :math:`v_P = v_0`,
plus LoRA updates of :math:`W_Q` and :math:`W_V` when they are enabled (``deflect+lora``);
:math:`\Delta_{\mathrm{ref}}` always uses the frozen :math:`q_0, k_0, v_0`.
uAtt keeps :math:`W_Q, W_K, W_V, W_O` frozen and gives the spectral side stream
:math:`\tilde a = LN_A(a)` its own low-rank projections :math:`U = A B` (B zero at
initialisation), so the logits are the sum of four products under one softmax, Eq. (R4):

.. math::
    S = \big(\underbrace{q_P k_P^\top}_{\text{RGB}\to\text{RGB}}
      + \underbrace{q_P k_A^\top}_{\text{RGB}\to\text{spectral}}
      + \underbrace{q_A k_P^\top}_{\text{spectral}\to\text{RGB}}
      + \underbrace{q_A k_A^\top}_{\text{spectral}\to\text{spectral}}\big) / \sqrt{d_h}
      = (q_P + q_A)(k_P + k_A)^\top / \sqrt{d_h}

and, Eq. (R5), :math:`\Delta_u = \operatorname{softmax}(S)\,(v_P + v_A) W_O + b_O` with
:math:`v_A = \tilde a U_V` (dual-stream only). The module returns the deflected displacement
(Eq. (R6), :func:`deflect_min.deflection.deflect`) in place of the attention output.

Axis names: ``b`` batch, ``n``/``m`` query/key tokens, ``h`` heads, ``d`` head dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor, nn

from .deflection import deflect
from .embedding import NewParameters, SideStream

__all__ = ["LowRank", "SpectralLayerNorm", "UntangledAttention"]


class SpectralLayerNorm(nn.LayerNorm, NewParameters):
    """LN_A: the new LayerNorm of the spectral side stream (weight 1, bias 0 at start)."""


class LowRank(NewParameters):
    r"""A low-rank linear map :math:`x \mapsto s\, x A^\top B^\top` with ``B`` zero-initialised.

    ``A`` is initialised as a LoRA down-projection (Kaiming-uniform), ``B`` at zero, so the map
    is exactly zero at initialisation while both factors receive gradients after one step.
    """

    def __init__(self, *, dim_in: int, dim_out: int, rank: int, scale: float = 1.0):
        super().__init__()
        if rank <= 0:
            raise ValueError(f"rank must be a positive integer, got {rank}.")
        self.A = nn.Parameter(torch.empty(rank, dim_in))
        self.B = nn.Parameter(torch.zeros(dim_out, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        y = (x @ self.A.T) @ self.B.T
        return y if self.scale == 1.0 else y * self.scale  # skip a full-width pass when s = 1

    def delta(self) -> Tensor:
        r"""The update as a full matrix, :math:`\Delta W = s\, B A` (``dim_out x dim_in``)."""
        return self.scale * self.B @ self.A

    def extra_repr(self) -> str:
        return f"dim_in={self.A.shape[1]}, dim_out={self.B.shape[0]}, rank={self.A.shape[0]}, scale={self.scale}"


class UntangledAttention(nn.Module):
    r"""Replaces ``Attention.forward`` of an adapted timm block with uAtt + deflection.

    Args:
        attn: the pretrained timm ``Attention`` (kept frozen, its weights are reused).
        side: the spectral side stream written by the decomposed patch embedding.
        rank: rank r of :math:`U_Q, U_K, U_V`.
        stream: ``"dual"`` (values also get :math:`v_A`) or ``"single"`` (only q and k).
        lora_rank: rank of optional LoRA updates of :math:`W_Q, W_V` (0: none).
        lora_alpha: LoRA :math:`\alpha` (scale :math:`\alpha / r`); defaults to ``lora_rank``.
        deflect: apply the deflection Eq. (R6) (``False`` for the "uAtt without deflection"
            ablation).
        eps_rel: see :func:`deflect_min.deflection.deflect`.

    ``forward`` keeps timm's call contract ``(x, attn_mask=None, is_causal=False, **kw)`` and
    returns the displacement that the block adds to its residual stream.
    """

    def __init__(self, *, attn: nn.Module, side: SideStream, rank: int = 8, stream: str = "dual",
                 lora_rank: int = 0, lora_alpha: float | None = None, deflect: bool = True,
                 eps_rel: float = 1e-4):
        super().__init__()
        for part in ("q_norm", "k_norm", "norm"):
            if not isinstance(getattr(attn, part, nn.Identity()), nn.Identity):
                raise ValueError(f"uAtt supports the plain ViT attention; this one has a {part} "
                                 f"({type(getattr(attn, part)).__name__}), which is not supported: "
                                 f"adapt a ViT built without qk_norm / scale_norm, or use a baseline.")
        if getattr(attn, "gate", None) is not None:
            raise ValueError("uAtt does not support gated attention: adapt a ViT built without "
                             "attention gates, or use a baseline method.")
        if stream not in ("dual", "single"):
            raise ValueError(f"stream must be 'dual' or 'single', got {stream!r}.")
        self.attn = attn
        self.side = side
        self.stream = stream
        self.num_heads = attn.num_heads
        dim = attn.qkv.in_features
        self.U_q = LowRank(dim_in=dim, dim_out=dim, rank=rank)
        self.U_k = LowRank(dim_in=dim, dim_out=dim, rank=rank)
        self.U_v = LowRank(dim_in=dim, dim_out=dim, rank=rank) if stream == "dual" else None
        self.norm_a = SpectralLayerNorm(dim, eps=1e-6)  # LN_A
        if lora_rank:
            scale = (lora_alpha if lora_alpha is not None else lora_rank) / lora_rank
            self.lora_q = LowRank(dim_in=dim, dim_out=dim, rank=lora_rank, scale=scale)
            self.lora_v = LowRank(dim_in=dim, dim_out=dim, rank=lora_rank, scale=scale)
        else:
            self.lora_q = self.lora_v = None
        self.deflect = deflect
        self.eps_rel = eps_rel
        self.explicit = False  # True: the four-product teaching path
        self.record: list | None = None  # a list to append trace records to, or None

    def _heads(self, t: Tensor) -> Tensor:
        return rearrange(t, "b n (h d) -> b h n d", h=self.num_heads)

    def projections(self, h: Tensor) -> dict[str, Tensor]:
        """All per-head projections: frozen ``q0 k0 v0``; ``q_P k_P v_P`` (with LoRA);
        spectral ``q_A k_A v_A``."""
        q0, k0, v0 = rearrange(self.attn.qkv(h), "b n (three h d) -> three b h n d", three=3,
                               h=self.num_heads)
        q_P, v_P = q0, v0
        if self.lora_q is not None:
            q_P = q0 + self._heads(self.lora_q(h))
            v_P = v0 + self._heads(self.lora_v(h))
        # a~ = LN_A(a), with the CLS / register slots kept exactly zero
        a_tilde = self.side.tokens(h.shape[1], transform=self.norm_a).to(h.dtype)
        q_A, k_A = self._heads(self.U_q(a_tilde)), self._heads(self.U_k(a_tilde))
        v_A = self._heads(self.U_v(a_tilde)) if self.U_v is not None else torch.zeros_like(v0)
        return dict(q0=q0, k0=k0, v0=v0, q_P=q_P, k_P=k0, v_P=v_P, q_A=q_A, k_A=k_A, v_A=v_A)

    def _out(self, o: Tensor) -> Tensor:
        return self.attn.proj(rearrange(o, "b h n d -> b n (h d)"))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False,
                **kwargs) -> Tensor:
        if is_causal:
            raise ValueError("untangled attention is a ViT's bidirectional attention; "
                             "is_causal=True is not supported (pass an attn_mask instead).")
        t = self.projections(x)
        if self.explicit or self.record is not None:
            delta_u, delta_ref = self._explicit(t, attn_mask)
        else:
            drop = self.attn.attn_drop.p if self.training else 0.0
            sdpa = dict(attn_mask=attn_mask, dropout_p=drop, scale=self.attn.scale)
            # Eq. (R4)-(R5): one softmax over the sum of the four products.
            o_u = F.scaled_dot_product_attention(t["q_P"] + t["q_A"], t["k_P"] + t["k_A"],
                                                 t["v_P"] + t["v_A"], **sdpa)
            # Eq. (1): the pretrained attention on the same state.
            o_ref = F.scaled_dot_product_attention(t["q0"], t["k0"], t["v0"], **sdpa)
            delta_u, delta_ref = self._out(o_u), self._out(o_ref)
        delta = deflect(delta_u, delta_ref, eps_rel=self.eps_rel) if self.deflect else delta_u
        if self.record is not None:
            self.record[-1]["delta"] = delta.detach()
        return self.attn.proj_drop(delta)

    def _explicit(self, t: dict[str, Tensor], attn_mask: Tensor | None):
        """The four products written out one by one (teaching path, materialises n x n)."""
        s = self.attn.scale
        products = {  # Eq. (R4), term by term: (b, h, n, m) each
            "rgb_to_rgb": einsum(t["q_P"], t["k_P"], "b h n d, b h m d -> b h n m") * s,
            "rgb_to_spectral": einsum(t["q_P"], t["k_A"], "b h n d, b h m d -> b h n m") * s,
            "spectral_to_rgb": einsum(t["q_A"], t["k_P"], "b h n d, b h m d -> b h n m") * s,
            "spectral_to_spectral": einsum(t["q_A"], t["k_A"], "b h n d, b h m d -> b h n m") * s,
        }
        logits = sum(products.values())
        logits_ref = einsum(t["q0"], t["k0"], "b h n d, b h m d -> b h n m") * s
        bias = _mask_bias(attn_mask, logits)
        attn_u = (logits + bias).softmax(dim=-1)
        attn_ref = (logits_ref + bias).softmax(dim=-1)
        drop = self.attn.attn_drop.p if self.training else 0.0  # as the fused path
        v_u = t["v_P"] + t["v_A"]
        delta_u = self._out(einsum(F.dropout(attn_u, drop), v_u, "b h n m, b h m d -> b h n d"))
        delta_ref = self._out(einsum(F.dropout(attn_ref, drop), t["v0"],
                                     "b h n m, b h m d -> b h n d"))
        if self.record is not None:
            self.record.append(dict(products={k: v.detach() for k, v in products.items()},
                                    logits=logits.detach(), attention=attn_u.detach(),
                                    logits_ref=logits_ref.detach(), attention_ref=attn_ref.detach(),
                                    delta_u=delta_u.detach(), delta_ref=delta_ref.detach()))
        return delta_u, delta_ref


def _mask_bias(attn_mask: Tensor | None, logits: Tensor) -> Tensor | float:
    """The additive bias that ``scaled_dot_product_attention`` applies for a mask."""
    if attn_mask is None:
        return 0.0
    if attn_mask.dtype == torch.bool:
        return torch.zeros_like(attn_mask, dtype=logits.dtype).masked_fill(~attn_mask, -math.inf)
    return attn_mask
