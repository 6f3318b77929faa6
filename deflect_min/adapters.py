"""Self-describing adapters: :func:`save_adapter` and :func:`load_adapter`.

An adapter is a folder of two files:

* ``adapter.safetensors``: what the adaptation added or changed, as chosen by
  :func:`deflect_min.tuning.adapter_state_dict` (the tuned parameters, the task head's and the
  tuned modules' buffers, e.g. UPerNet's BatchNorm statistics): a few MB for DEFLECT;
* ``adapter.json``: everything needed to rebuild the model around them from a fresh base ViT:
  the method and its typed config, the bands, the RGB bands, the band statistics, the task head,
  the base model's name, architecture and :class:`~deflect_min.models.GFMCard`, the image size,
  the package version and (optionally) how to rebuild the base model itself.

:func:`load_adapter` checks everything it can before loading a tensor (the base model's name
and architecture, the bands and band statistics a caller expects, every tensor's name and
shape) and says which one differs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ._version import __version__
from .adaptation import adapt
from .embedding import DecomposedPatchEmbed
from .methods import METHODS
from .tuning import adapter_state_dict, encoder_of

__all__ = ["ADAPTER_FORMAT", "save_adapter", "load_adapter", "read_adapter_config"]

#: The ``format`` value of ``adapter.json`` (bumped when the layout changes).
ADAPTER_FORMAT = "deflect-min adapter v1"
TENSORS, CONFIG = "adapter.safetensors", "adapter.json"


def _architecture(vit: nn.Module) -> dict[str, Any]:
    embed = vit.patch_embed
    if isinstance(embed, DecomposedPatchEmbed):
        embed = embed.rgb_embed
    patch = embed.patch_size if isinstance(embed.patch_size, int) else embed.patch_size[0]
    img = getattr(embed, "img_size", None)
    return {"class": type(vit).__name__, "embed_dim": int(vit.embed_dim),
            "depth": len(vit.blocks), "num_heads": int(vit.blocks[0].attn.num_heads
                                                      if hasattr(vit.blocks[0].attn, "num_heads")
                                                      else vit.blocks[0].attn.attn.num_heads),
            "patch_size": int(patch), "img_size": list(img) if img is not None else None,
            "num_prefix_tokens": int(getattr(vit, "num_prefix_tokens", 1))}


def _base_name(vit: nn.Module) -> str:
    card = getattr(vit, "gfm_card", None)
    if card is not None:
        return card.name
    cfg = getattr(vit, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(vit).__name__


def _band_stats(encoder: nn.Module) -> dict[str, list[float]] | None:
    embed = encoder.patch_embed
    if not embed.standardize.enabled:
        return None
    mean, std = embed.standardize.mean.flatten().tolist(), embed.standardize.std.flatten().tolist()
    return {b: [m, s] for b, m, s in zip(embed.bands, mean, std)}


def _head(model: nn.Module) -> dict[str, Any]:
    spec = getattr(model, "build_spec", None)
    if spec is not None:  # deflect_min.build_model
        return {"kind": "build_model", **spec}
    return {"kind": "vit", "num_classes": int(getattr(model, "num_classes", 0))}


def save_adapter(model: nn.Module, path: str | os.PathLike, *,
                 base: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s adapter to the folder ``path`` (created; files replaced atomically).

    Args:
        model: an adapted ViT (:func:`deflect_min.adapt`) or a model of
            :func:`deflect_min.build_model`.
        path: the adapter folder.
        base: how to rebuild the base ViT, so that :func:`load_adapter` can work from the folder
            alone: ``{"backbone": spec, "weights": "pretrained" | None | path, "img_size": int,
            "seed": int}`` with ``spec`` as :func:`deflect_min.backbones.load_backbone` takes it
            (the seed matters for a randomly initialised base, whose frozen weights are not
            saved). Optional.

    Returns:
        The folder.
    """
    encoder, _ = encoder_of(model)
    info = getattr(encoder, "adaptation", None)
    if info is None or "config" not in info:
        raise ValueError("this model is not adapted: adapt it with deflect_min.adapt (or build it "
                         "with deflect_min.build_model) before saving its adapter.")
    card = getattr(encoder, "gfm_card", None)
    config = {
        "format": ADAPTER_FORMAT,
        "package_version": __version__,
        "method": info["method"],
        "config": info["config"],
        "bands": list(info["bands"]),
        "rgb_bands": list(info["rgb_bands"]),
        "band_stats": _band_stats(encoder),
        "head": _head(model),
        "base": {"name": _base_name(encoder), "architecture": _architecture(encoder),
                 "card": dataclasses.asdict(card) if card is not None else None,
                 "rebuild": dict(base) if base is not None else None},
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in adapter_state_dict(model).items()}
    config["tensors"] = {k: list(v.shape) for k, v in tensors.items()}
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        text = json.dumps(config, indent=1)
    except TypeError as e:
        raise ValueError(f"the adapter's description is not JSON-serialisable ({e}): pass "
                         f"head_kwargs to build_model as plain numbers and strings.") from e
    for name, write in ((TENSORS, lambda p: save_file(tensors, str(p))),
                        (CONFIG, lambda p: p.write_text(text))):
        tmp = folder / f".{name}.part"
        write(tmp)
        os.replace(tmp, folder / name)
    return folder


def read_adapter_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``adapter.json`` of an adapter folder, checked for its format."""
    file = Path(path) / CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"no adapter at {path}: expected {CONFIG} and {TENSORS} there "
                                f"(written by deflect_min.save_adapter).")
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON ({e}); the adapter is damaged: save it "
                         f"again.") from e
    if not isinstance(config, dict) or config.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{file} is not a {ADAPTER_FORMAT!r} file (format "
                         f"{config.get('format') if isinstance(config, dict) else None!r}).")
    return config


def _rebuild_base(config: Mapping[str, Any]) -> nn.Module:
    recipe = config["base"].get("rebuild")
    if not recipe:
        raise ValueError(f"this adapter does not say how to rebuild its base model "
                         f"({config['base']['name']}): pass the base ViT, "
                         f"load_adapter(vit, path).")
    from .backbones import load_backbone
    from .models import load_gfm

    torch.manual_seed(int(recipe.get("seed", 0)))
    if recipe.get("arch_overrides"):  # a smoke run's tiny version of a GFM
        return load_gfm(recipe["backbone"], weights=recipe.get("weights"),
                        img_size=int(recipe.get("img_size", 224)),
                        _arch_overrides=recipe["arch_overrides"])
    return load_backbone(recipe["backbone"], weights=recipe.get("weights"),
                         img_size=int(recipe.get("img_size", 224)))


def _check_base(vit: nn.Module, config: Mapping[str, Any]) -> None:
    if not hasattr(vit, "blocks") or not hasattr(vit, "patch_embed"):
        raise ValueError(f"load_adapter expects a timm VisionTransformer, got {type(vit).__name__}.")
    if isinstance(vit.patch_embed, DecomposedPatchEmbed):
        raise ValueError("this ViT is already adapted: pass a fresh base model to load_adapter.")
    saved, ours = config["base"]["architecture"], _architecture(vit)
    diff = [f"{k}: adapter {saved[k]!r}, this ViT {ours[k]!r}"
            for k in saved if k in ours and saved[k] != ours[k]]
    name, want = _base_name(vit), config["base"]["name"]
    if name != want and getattr(vit, "gfm_card", None) is not None:
        diff.insert(0, f"base model: adapter {want!r}, this ViT {name!r}")
    if diff:
        raise ValueError(f"this adapter was trained on another base model ({want}); "
                         + "; ".join(diff) + ". Pass the base model it was trained on"
                         + (f", e.g. load_gfm({want!r}, img_size=...)." if config["base"]["card"]
                            else "."))


def _check_expected(config: Mapping[str, Any], bands, band_stats) -> None:
    if bands is not None and list(bands) != config["bands"]:
        raise ValueError(f"the adapter was trained on the bands {config['bands']} (in that order), "
                         f"not {list(bands)}: reorder or select your input's bands to match.")
    if band_stats is not None:
        saved = config["band_stats"] or {}
        wrong = [b for b in config["bands"] if b not in band_stats or saved.get(b) is None
                 or any(abs(float(x) - float(y)) > 1e-6 * max(1.0, abs(float(y)))
                        for x, y in zip(band_stats[b], saved[b]))]
        if wrong:
            raise ValueError(f"the adapter standardises the bands {wrong} with other statistics "
                             f"than the band_stats you pass (saved: "
                             f"{ {b: saved.get(b) for b in wrong} }); its model expects its own "
                             f"statistics, so normalise your data as it was trained.")


def load_adapter(vit: nn.Module | None, path: str | os.PathLike, *,
                 bands: Sequence[str] | None = None,
                 band_stats: Mapping[str, Sequence[float]] | None = None) -> nn.Module:
    """Rebuild the adapted model of ``path`` around a fresh base ViT, in eval mode.

    Args:
        vit: the base model the adapter was trained on, as loaded (e.g.
            ``load_gfm("scalemae", img_size=...)``); ``None`` rebuilds it from the adapter's own
            recipe (``save_adapter(..., base=...)``).
        path: the adapter folder.
        bands, band_stats: what your data has; if given, each must equal the adapter's (the
            error says which band differs).

    Raises:
        ValueError: another base model or architecture, other bands or band statistics, tensors
            that do not fit (each message names the mismatch).
    """
    config = read_adapter_config(path)
    _check_expected(config, bands, band_stats)
    if config["method"] not in METHODS:
        raise ValueError(f"the adapter's method {config['method']!r} is not known to this version "
                         f"of deflect_min (saved with {config['package_version']}); known: "
                         f"{list(METHODS)}.")
    if vit is None:
        vit = _rebuild_base(config)
    _check_base(vit, config)
    method = METHODS[config["method"]].config.from_dict(config["config"])
    stats = config["band_stats"]
    stats = {b: tuple(v) for b, v in stats.items()} if stats else None
    head = config["head"]
    if head["kind"] == "build_model":
        from .build import build_model

        spec = {k: v for k, v in head.items() if k != "kind"}
        model = build_model(spec.pop("task"), vit, method, bands=config["bands"],
                            band_stats=stats, rgb_bands=config["rgb_bands"], **spec)
    else:
        if head["num_classes"] != getattr(vit, "num_classes", 0):
            vit.reset_classifier(head["num_classes"])
        model = adapt(vit, method, bands=config["bands"], rgb_bands=config["rgb_bands"],
                      band_stats=stats)
    expected = adapter_state_dict(model)
    tensors = load_file(str(Path(path) / TENSORS))
    missing, unexpected = sorted(expected.keys() - tensors.keys()), sorted(tensors.keys() - expected.keys())
    shapes = [f"{k}: saved {tuple(tensors[k].shape)}, model {tuple(expected[k].shape)}"
              for k in expected.keys() & tensors.keys() if tensors[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"the tensors in {path} do not fit the rebuilt model: missing {missing[:5]},"
                         f" unexpected {unexpected[:5]}, shapes {shapes[:5]}; the adapter was "
                         f"saved by another version of its method (package "
                         f"{config['package_version']}).")
    with torch.no_grad():
        for name, target in expected.items():
            target.copy_(tensors[name])
    return model.eval()
