"""Backbone + adapter + head in one call: :func:`build_model`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from einops import rearrange

from deflect_min.heads import ClassificationHead, UPerNet
from deflect_min.models import default_taps, load_gfm

__all__ = ["TASKS", "GFMClassifier", "GFMSegmenter", "build_model"]

#: Task names ``build_model`` accepts.
TASKS = ("classification", "segmentation")


class _GFMTaskModel(nn.Module):
    encoder: nn.Module
    head: nn.Module

    def parameter_counts(self) -> dict[str, int]:
        """Tuned and total parameters, encoder (backbone + adapter) and head separately."""
        from deflect_min.tuning import count_parameters

        et, en = count_parameters(self.encoder)  # pretrained total; added adapter params tuned
        ht = sum(p.numel() for p in self.head.parameters() if p.requires_grad)
        hn = sum(p.numel() for p in self.head.parameters())
        return {"encoder_tuned": et, "encoder_total": en, "head_tuned": ht, "head_total": hn}


class GFMClassifier(_GFMTaskModel):
    """``encoder.forward_features`` -> :class:`~deflect_min.heads.ClassificationHead`."""

    def __init__(self, *, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.forward_features(x))


class GFMSegmenter(_GFMTaskModel):
    """Tapped encoder blocks -> :class:`~deflect_min.heads.UPerNet`, logits at input size.

    The blocks in ``taps`` are read with timm's ``forward_intermediates`` (which adapted encoders
    keep). As in PANGAEA, only a tap on the last block goes through the encoder's final norm.
    """

    def __init__(self, *, encoder: nn.Module, head: nn.Module, taps: Sequence[int]) -> None:
        super().__init__()
        depth = len(encoder.blocks)
        taps = tuple(int(t) for t in taps)
        if any(not 0 <= t < depth for t in taps):
            raise ValueError(f"taps {taps} must be block indices in [0, {depth - 1}]")
        self.encoder = encoder
        self.head = head
        self.taps = taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        uniq = sorted(set(self.taps))
        feats = self.encoder.forward_intermediates(x, indices=uniq, output_fmt="NCHW",
                                                   intermediates_only=True)
        by_block = dict(zip(uniq, feats))
        last = len(self.encoder.blocks) - 1
        if last in by_block:
            f = by_block[last]
            tokens = self.encoder.norm(rearrange(f, "b d h w -> b h w d"))
            by_block[last] = rearrange(tokens, "b h w d -> b d h w")
        return self.head([by_block[t] for t in self.taps], x.shape[-2:])


def build_model(
    task: str,
    gfm: str | nn.Module,
    method: str,
    *,
    bands: list[str],
    num_classes: int,
    weights: Any = None,
    img_size: int = 224,
    band_stats: Any = None,
    taps: Sequence[int] | None = None,
    head_kwargs: dict[str, Any] | None = None,
    **method_kwargs: Any,
) -> GFMClassifier | GFMSegmenter:
    """A foundation model adapted to ``bands`` by ``method``, with a fresh task head.

    Args:
        task: ``"classification"`` (linear head on mean-pooled patch tokens) or
            ``"segmentation"`` (UPerNet, logits at input resolution).
        gfm: a :data:`~deflect_min.models.GFM_NAMES` name, loaded with
            ``load_gfm(gfm, weights, img_size)``, or an already built timm ViT (tests, custom
            encoders).
        method: adaptation method passed to :func:`deflect_min.adapt` (``"full"``,
            ``"frozen"``, ``"norm"``, ``"bitfit"``, ``"lora"``, ``"slr"``, ``"deflect"``,
            ``"deflect+lora"``).
        bands: sensor-qualified names of the input channels, in input order.
        num_classes: outputs of the head.
        weights: for a named ``gfm``: ``None`` (random init, the default, so that nothing is
            downloaded by surprise), ``"download"`` or a checkpoint path.
        img_size: input size the encoder is built for.
        band_stats: per-band statistics passed to ``adapt``.
        taps: segmentation: the four encoder blocks UPerNet reads (default: the GFM card's
            ``default_taps``, e.g. Scale-MAE 7, 11, 15, 23).
        head_kwargs: extra head arguments (``pool`` for classification; ``channels``,
            ``rescales``, ``pool_scales``, ``dropout``, ``norm_layer`` for UPerNet).
        **method_kwargs: passed to ``adapt`` (``rgb_bands``, ranks, adapted blocks ...).

    Returns:
        A module with ``.encoder`` (adapted in place) and ``.head`` (all parameters trainable);
        ``.parameter_counts()`` reports both separately.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks are {', '.join(TASKS)}")
    if isinstance(gfm, str):
        encoder = load_gfm(gfm, weights=weights, img_size=img_size)
    elif isinstance(gfm, nn.Module):
        if weights is not None:
            raise ValueError("weights= only applies when gfm is a name; this encoder is built")
        encoder = gfm
    else:
        raise TypeError(f"gfm must be a GFM name or a timm VisionTransformer, got {type(gfm)}")

    from deflect_min.adaptation import adapt

    encoder = adapt(encoder, method, bands=list(bands), band_stats=band_stats, **method_kwargs)

    head_kwargs = dict(head_kwargs or {})
    embed_dim = encoder.embed_dim
    if task == "classification":
        head = ClassificationHead(embed_dim=embed_dim, num_classes=num_classes,
                                  num_prefix_tokens=getattr(encoder, "num_prefix_tokens", 1),
                                  **head_kwargs)
        model = GFMClassifier(encoder=encoder, head=head)
        model.build_spec = dict(task=task, num_classes=num_classes, head_kwargs=head_kwargs)
        return model
    if taps is None:
        card = getattr(encoder, "gfm_card", None)
        taps = card.default_taps if card is not None else default_taps(len(encoder.blocks))
    head = UPerNet(embed_dim=embed_dim, num_classes=num_classes, **head_kwargs)
    model = GFMSegmenter(encoder=encoder, head=head, taps=taps)
    # what save_adapter records to rebuild the head (deflect_min.adapters)
    model.build_spec = dict(task=task, num_classes=num_classes, taps=list(model.taps),
                            head_kwargs=head_kwargs)
    return model
