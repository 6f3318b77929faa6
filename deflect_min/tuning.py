"""Bookkeeping of tuned parameters: the one place that says which parameters a method tunes,
which it added, and which tensors an adapter saves.

* trainable: ``requires_grad`` (set by each method's ``apply``, :mod:`deflect_min.methods`);
* added ("new"): under a :class:`~deflect_min.embedding.NewParameters` module;
* saved in an adapter (:func:`adapter_state_dict`): the trainable parameters, and the persistent
  buffers of the task head and of every module that owns a trainable parameter (e.g. UPerNet's
  BatchNorm running statistics).
"""

from __future__ import annotations

import torch
from torch import nn

from .embedding import NewParameters

__all__ = ["encoder_of", "encoder_parameters", "count_parameters", "adapter_state_dict",
           "peft_state_dict", "load_peft_state_dict"]


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


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors an adapter consists of, by state-dict name, sharing the model's storage.

    Every trainable parameter, plus the persistent buffers of the task head and of each module
    that directly owns a trainable parameter (BatchNorm statistics, ...).
    """
    _, head = encoder_of(model)
    out: dict[str, torch.Tensor] = {}
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        params = dict(module.named_parameters(recurse=False))
        trainable = {n: p for n, p in params.items() if p.requires_grad}
        out.update({prefix + n: p.detach() for n, p in trainable.items()})
        if trainable or prefix.startswith(head):  # head: "head." of the model's own head
            persistent = set(module.state_dict(keep_vars=True).keys()) - set(params)
            out.update({prefix + n: b.detach() for n, b in module.named_buffers(recurse=False)
                        if n in persistent})
    return out


def peft_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of :func:`adapter_state_dict`: the tuned tensors and the buffers they need."""
    return {n: t.clone() for n, t in adapter_state_dict(model).items()}


def load_peft_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load tensors saved by :func:`peft_state_dict` into a model adapted the same way."""
    target = adapter_state_dict(model)
    missing = sorted(target.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - target.keys())
    if missing or unexpected:
        raise ValueError(f"this state dict does not fit the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}; adapt the model with the same method, "
                         f"bands and options as the one that was saved.")
    with torch.no_grad():
        for name, tensor in state_dict.items():
            if target[name].shape != tensor.shape:
                raise ValueError(f"{name}: saved shape {tuple(tensor.shape)} differs from the "
                                 f"model's {tuple(target[name].shape)}.")
            target[name].copy_(tensor)
