r"""Embedding deflection, Eq. (R6) (reconstructed from the poster's description).

The poster: "we *constrain the norm of the displacement* computed by adapted uAtt blocks to
match the one pretrained standard attention blocks would have computed". Per token n:

.. math::
    \Delta_n = \Delta_{u,n} \, \frac{\lVert \Delta_{\mathrm{ref},n} \rVert}
               {\max(\lVert \Delta_{u,n} \rVert, \varepsilon_n)}, \qquad
    \varepsilon_n = \varepsilon_{\mathrm{rel}} \lVert \Delta_{\mathrm{ref},n} \rVert

Only the direction of each attention update is learned; its length is the pretrained one.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["deflect"]


def deflect(delta_u: Tensor, delta_ref: Tensor, *, eps_rel: float = 1e-4) -> Tensor:
    r"""Rescale each token of ``delta_u`` to the norm of the same token of ``delta_ref``.

    Args:
        delta_u: untangled displacement :math:`\Delta_u`, ``(..., d)``.
        delta_ref: reference displacement :math:`\Delta_{\mathrm{ref}}` of the pretrained
            attention on the same state, same shape.
        eps_rel: :math:`\varepsilon` relative to :math:`\lVert\Delta_{\mathrm{ref}}\rVert`,
            so the gradient with respect to ``delta_u`` is bounded by ``1 / eps_rel`` even
            when :math:`\Delta_u` vanishes.

    The norms are computed in (at least) float32, also under fp16/bf16 autocast.
    """
    dtype = torch.promote_types(delta_u.dtype, torch.float32)
    u, ref = delta_u.to(dtype), delta_ref.to(dtype)
    norm_u = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
    norm_ref = torch.linalg.vector_norm(ref, dim=-1, keepdim=True)
    eps = eps_rel * norm_ref + torch.finfo(dtype).tiny
    return (u * (norm_ref / torch.maximum(norm_u, eps))).to(delta_u.dtype)
