"""Bookkeeping of tuned parameters: counting them and saving only them."""

from __future__ import annotations

import torch
from torch import nn

from .embedding import NewParameters

__all__ = ["encoder_of", "encoder_parameters", "count_parameters", "peft_state_dict",
           "load_peft_state_dict"]


def encoder_of(model: nn.Module) -> tuple[nn.Module, str]:
    """The encoder of ``model`` and the name prefix of its task head.

    ``model`` is either an adapted ViT (its ``head`` is the task head) or a model from
    :func:`deflect_min.build_model` (``model.encoder`` + ``model.head``).
    """
    if hasattr(model, "encoder") and isinstance(model.encoder, nn.Module):
        return model.encoder, "head."
    return model, "head."


def encoder_parameters(vit: nn.Module):
    """``(name, module, parameter)`` of the pretrained encoder: no task head, no parameter an
    adaptation method added (:class:`~deflect_min.embedding.NewParameters`), nothing listed in
    ``vit.unused_parameters``. What the baselines choose their tuned parameters from."""
    unused = set(getattr(vit, "unused_parameters", ()))
    new = {id(p) for m in vit.modules() if isinstance(m, NewParameters) for p in m.parameters()}
    for mod_name, module in vit.named_modules():
        if mod_name == "head" or mod_name.startswith("head."):
            continue
        for p_name, p in module.named_parameters(recurse=False):
            name = f"{mod_name}.{p_name}" if mod_name else p_name
            if id(p) not in new and name not in unused:
                yield name, module, p


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(tuned, total)`` encoder parameters; the task head is never counted.

    ``tuned``: encoder parameters with ``requires_grad``. ``total``: the pretrained encoder's
    parameters that its forward pass uses (the parameters added by an adaptation method are
    not part of it, nor are those the model lists in ``unused_parameters``, such as
    Scale-MAE's stored but recomputed ``pos_embed``), so ``tuned / total`` is the "Encoder
    Tuned Params" column of the paper's Table 1.
    """
    encoder, head = encoder_of(model)
    unused = set(getattr(encoder, "unused_parameters", ()))
    new = {id(p) for m in encoder.modules() if isinstance(m, NewParameters)
           for p in m.parameters()}
    tuned = total = 0
    for name, p in encoder.named_parameters():
        if name.startswith(head) or name in unused:
            continue
        tuned += p.numel() if p.requires_grad else 0
        total += 0 if id(p) in new else p.numel()
    return tuned, total


def peft_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the tuned tensors (``requires_grad``; the task head included): a few MB."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_peft_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load tensors saved by :func:`peft_state_dict` into a model adapted the same way."""
    params = dict(model.named_parameters())
    tuned = {n for n, p in params.items() if p.requires_grad}
    missing, unexpected = sorted(tuned - state_dict.keys()), sorted(state_dict.keys() - tuned)
    if missing or unexpected:
        raise ValueError(f"this state dict does not fit the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}; adapt the model with the same method, "
                         f"bands and options as the one that was saved.")
    with torch.no_grad():
        for name, tensor in state_dict.items():
            if params[name].shape != tensor.shape:
                raise ValueError(f"{name}: saved shape {tuple(tensor.shape)} differs from the "
                                 f"model's {tuple(params[name].shape)}.")
            params[name].copy_(tensor)
