"""The tuned-parameter and compute budget of every method: the paper's Table 1 column.

:func:`budget` builds each model on the ``meta`` device (shapes only: ViT-L/16 costs no
memory), adapts it with each method's default configuration, and counts

* the tuned encoder parameters and their percentage of the pretrained encoder
  (:func:`~deflect_min.tuning.count_parameters`, without the input adapter);
* the input-adapter parameters (inflated patch embedding, ``input="inflated"`` only);
* the forward GFLOPs per image, as adapted and after :func:`~deflect_min.baselines.merge`.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``: matrix products,
convolutions and attention (2 FLOPs per multiply-add); element-wise work (norms, softmax,
GELU, the spectral indices) is not counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from .adaptation import METHODS, adapt
from .baselines import input_adapter_parameters, merge
from .tuning import count_parameters

__all__ = ["budget", "BUDGET_MODELS", "BUDGET_METHODS", "S2_10"]

#: The paper's three GFMs as timm architectures: DINO-MC (ViT-S/8), Cross-Scale MAE (ViT-B/16),
#: Scale-MAE (ViT-L/16).
BUDGET_MODELS = ("vit_small_patch8_224", "vit_base_patch16_224", "vit_large_patch16_224")
#: The methods that take the baselines' ``input`` option.
_BASELINES = ("full", "frozen", "norm", "bitfit", "lora", "slr")
#: Table 1's rows in its order, then DEFLECT with LoRA inside uAtt.
BUDGET_METHODS = (*_BASELINES, "deflect", "deflect+lora")
#: The ten Sentinel-2 bands of So2Sat (GEO-Bench).
S2_10 = ("S2_B02", "S2_B03", "S2_B04", "S2_B05", "S2_B06", "S2_B07", "S2_B08", "S2_B8A",
         "S2_B11", "S2_B12")


def _gflops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Forward GFLOPs per image of ``model`` on the meta tensor ``x``."""
    # On the meta device F.scaled_dot_product_attention has no fused kernel and decomposes
    # into the math path (two bmm that FlopCounterMode counts: 4 n^2 d per head), so both
    # attention passes of uAtt (Eqs. (R4)-(R5) and the reference Eq. (1)) are counted. On CPU
    # the fused kernel (aten._scaled_dot_product_flash_attention_for_cpu) has no FLOP formula
    # and would count as 0, hiding exactly DEFLECT's extra attention: never count there.
    if x.device.type != "meta":
        raise ValueError("count FLOPs on the meta device (see the comment above).")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / x.shape[0] / 1e9


def budget(models: Sequence[str] = BUDGET_MODELS, methods: Sequence[str] = BUDGET_METHODS, *,
           bands: Sequence[str] = S2_10, img_size: int = 224,
           input: str = "rgb",  # noqa: A002 - the baselines' option keeps its name
           flops: bool = True) -> pd.DataFrame:
    """One row per (model, method), each with its default configuration.

    Args:
        models: timm ViT names (built without weights, on the meta device).
        methods: names in :data:`deflect_min.METHODS`.
        bands: the input bands (sensor-qualified names).
        img_size: the image size of the FLOP count.
        input: the baselines' input, ``"rgb"`` (paper-comparable) or ``"inflated"``.
        flops: also count GFLOPs (a meta forward pass per row).

    Returns:
        a DataFrame with columns ``model``, ``method``, ``tuned`` (tuned encoder parameters,
        input adapter excluded), ``total`` (pretrained encoder), ``tuned_pct``
        (``100 * tuned / total``), ``input_adapter``, ``gflops`` and ``gflops_merged`` (per
        image, after :func:`~deflect_min.merge`).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; valid methods are {sorted(METHODS)}.")
    rows = []
    for name in models:
        for method in methods:
            options = dict(input=input) if method in _BASELINES else {}
            with torch.device("meta"):
                vit = timm.create_model(name, pretrained=False, num_classes=0, img_size=img_size)
                adapt(vit, method, bands=list(bands), **options)
                x = torch.empty(1, len(bands), img_size, img_size)
            tuned, total = count_parameters(vit)
            extra = input_adapter_parameters(vit)
            row = dict(model=name, method=method, tuned=tuned - extra, total=total,
                       tuned_pct=100 * (tuned - extra) / total, input_adapter=extra)
            if flops:
                row["gflops"] = _gflops(vit.eval(), x)
                before = sum(1 for _ in vit.modules())
                merge(vit)  # a merge that folds something replaces wrappers: fewer modules
                changed = sum(1 for _ in vit.modules()) != before
                row["gflops_merged"] = _gflops(vit, x) if changed else row["gflops"]
            rows.append(row)
    return pd.DataFrame(rows)
