"""Test helpers: fixture paths, tiny timm ViTs, real band sets, random reflectance."""

from __future__ import annotations

from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer

#: Fixture trees in the real on-disk formats (written by each folder's data.py).
DATA = Path(__file__).parent / "data"
GEOBENCH = DATA / "geobench"
HLS = DATA / "hls_burn_scars"
MADOS_ROOT = DATA / "mados"

#: Real sensors' band sets (the benchmarks' inputs).
BAND_SETS = {
    "so2sat_s2_10": ["S2_B02", "S2_B03", "S2_B04", "S2_B05", "S2_B06", "S2_B07", "S2_B08",
                     "S2_B8A", "S2_B11", "S2_B12"],
    "brick_kiln_s2_13": ["S2_B01", "S2_B02", "S2_B03", "S2_B04", "S2_B05", "S2_B06", "S2_B07",
                         "S2_B08", "S2_B8A", "S2_B09", "S2_B10", "S2_B11", "S2_B12"],
    "forestnet_l8_6": ["L8_B04", "L8_B03", "L8_B02", "L8_B05", "L8_B06", "L8_B07"],
    "hls_6": ["HLS_B02", "HLS_B03", "HLS_B04", "HLS_B8A", "HLS_B11", "HLS_B12"],
    "mados_s2_11": ["S2_B01", "S2_B02", "S2_B03", "S2_B04", "S2_B05", "S2_B06", "S2_B07",
                    "S2_B08", "S2_B8A", "S2_B11", "S2_B12"],
}
S2_7 = ["S2_B02", "S2_B03", "S2_B04", "S2_B05", "S2_B08", "S2_B11", "S2_B12"]


def tiny_vit(*, img_size: int = 32, patch_size: int = 8, dim: int = 32, depth: int = 3,
             heads: int = 4, num_classes: int = 0, seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=dim, depth=depth,
                             num_heads=heads, num_classes=num_classes).eval()


def reflectance(batch: int, bands: list[str], size: int, seed: int = 0) -> torch.Tensor:
    """Random, physically plausible reflectance in [0.01, 0.6]."""
    g = torch.Generator().manual_seed(seed)
    return 0.01 + 0.59 * torch.rand(batch, len(bands), size, size, generator=g)


def perturb_new_parameters(model: torch.nn.Module, scale: float = 0.3, seed: int = 1) -> None:
    """Give every tuned parameter a random offset (so B factors are no longer zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))



class Interrupted(RuntimeError):
    """Raised by the callback of :func:`interrupt_at`."""


def interrupt_at(k: int):
    """A Lightning callback that simulates a dead Colab session at the start of epoch ``k``
    (epochs 0 .. k - 1 are done)."""
    from lightning.pytorch.callbacks import Callback

    class InterruptAt(Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == k:
                raise Interrupted(f"interrupted before epoch {k}")

    return InterruptAt()
