"""``trace``: look inside the adapted blocks (the four products, the displacements)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import UntangledAttention

__all__ = ["trace"]


@torch.no_grad()
def trace(model: nn.Module, x: Tensor) -> list[dict]:
    """Run ``model`` on ``x`` and return one record per adapted block, in block order.

    Each record holds ``block`` (its index when found), ``products`` (the four logit terms of
    Eq. (R4), each ``(b, heads, n, n)``: ``rgb_to_rgb``, ``rgb_to_spectral``,
    ``spectral_to_rgb``, ``spectral_to_spectral``), ``logits`` and ``attention`` (untangled),
    ``logits_ref`` and ``attention_ref`` (pretrained, Eq. (1)), and the displacements
    ``delta_ref``, ``delta_u`` and the deflected ``delta``, each ``(b, n, d)``. The explicit
    four-product path is used, so memory grows with n^2: use small inputs.
    """
    names = {m: n for n, m in model.named_modules()}
    modules = [m for m in model.modules() if isinstance(m, UntangledAttention)]
    if not modules:
        raise ValueError("the model has no untangled attention: adapt it with method='deflect' "
                         "or 'deflect+lora' first.")
    records: list[list[dict]] = [[] for _ in modules]
    was_training = model.training
    model.eval()
    try:
        for module, rec in zip(modules, records):
            module.record = rec
        model(x)
    finally:
        for module in modules:
            module.record = None
        model.train(was_training)
    out = []
    for module, rec in zip(modules, records):
        parts = names[module].split(".")
        block = int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" else None
        out.append(dict(block=block, **rec[-1]))
    return out
