"""Apply a trained adapter to a multi-band GeoTIFF: ``deflect-predict`` and :func:`predict_geotiff`.

The scene is read with rasterio, its bands put in the adapter's order (named by the file's band
descriptions or by the caller), scaled to reflectance, and cut into windows of the model's input
size that go through the model ``batch_size`` at a time:

* **segmentation**: overlapping windows (stride: half a window by default) whose logits are
  averaged where they overlap, exactly as the evaluation does
  (:func:`deflect_min.data.sliding_window_logits`); the output is a ``uint8`` class map of the
  scene's size, with the input's CRS and transform, and ``255`` (nodata) where every input band
  is nodata;
* **classification**: one window per tile (no overlap; the last row and column of tiles are
  zero-padded), and the output has one pixel per tile holding the ``num_classes`` softmax scores
  (``float32`` bands), with the transform scaled by the window size.

The whole scene is held in memory (as float32: a 10 980 x 10 980 Sentinel-2 tile of 12 bands is
5.8 GB); cut larger scenes first (``gdal_translate -srcwin``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["predict_geotiff", "main", "NODATA_CLASS"]

#: The class-map value written where the input has no data.
NODATA_CLASS = 255


def _read_scene(path: Path, bands: Sequence[str] | None, wanted: Sequence[str], scale: float):
    import numpy as np
    import rasterio

    with rasterio.open(path) as src:
        names = list(bands) if bands is not None else list(src.descriptions)
        if bands is not None and len(names) != src.count:
            raise ValueError(f"--bands names {len(names)} bands but {path} has {src.count}.")
        if any(n is None for n in names):
            raise ValueError(f"{path} does not name its bands (no band descriptions): pass their "
                             f"names in file order, e.g. --bands {','.join(wanted)}.")
        missing = [b for b in wanted if b not in names]
        if missing:
            raise ValueError(f"the model needs the bands {list(wanted)}; {path} has {names}, "
                             f"without {missing}: pass --bands if the file names them otherwise.")
        index = [names.index(b) + 1 for b in wanted]
        data = src.read(index, masked=True)
        profile = src.profile
    nodata = np.ma.getmaskarray(data).all(axis=0)
    image = np.ma.filled(data, 0).astype(np.float32) * float(scale)
    return image, nodata, profile


def predict_geotiff(model, input_path: str | os.PathLike, out_path: str | os.PathLike, *,
                    bands: Sequence[str] | None = None, scale: float = 1.0,
                    window: int | None = None, stride: int | None = None, batch_size: int = 8,
                    device: str = "cpu", progress: bool = True) -> Path:
    """Predict ``input_path`` with an adapted model and write ``out_path`` (GeoTIFF).

    Args:
        model: a model of :func:`deflect_min.load_adapter` (segmentation or classification).
        input_path: a multi-band GeoTIFF.
        out_path: the GeoTIFF to write (class map, or per-tile scores).
        bands: the file's band names in file order (default: its band descriptions).
        scale: factor from the file's values to reflectance (``1e-4`` for digital numbers of
            reflectance x 10^4).
        window: the model's input size (default: the size its base ViT was built for).
        stride: segmentation windows' step (default: half a window).
        batch_size: windows per forward pass.
        device: where the model runs.
        progress: show a progress bar.
    """
    import numpy as np
    import rasterio
    import torch
    from rasterio.transform import Affine

    from .data.loaders import sliding_window_logits
    from .tuning import encoder_of

    encoder, _ = encoder_of(model)
    wanted = encoder.adaptation["bands"]
    window = window or int(encoder.patch_embed.img_size[0])  # the size the ViT was built for
    spec = getattr(model, "build_spec", None) or {"task": "classification"}
    image, nodata, profile = _read_scene(Path(input_path), bands, wanted, scale)
    x = torch.from_numpy(image)[None].to(device)
    model = model.to(device).eval()
    with torch.no_grad():
        if spec["task"] == "segmentation":
            logits = sliding_window_logits(model, x, spec["num_classes"], window=window,
                                           stride=stride, batch_size=batch_size,
                                           progress=progress)
            out = logits[0].argmax(0).to(torch.uint8).cpu().numpy()
            out[nodata] = NODATA_CLASS
            profile.update(count=1, dtype="uint8", nodata=NODATA_CLASS)
            out = out[None]
        else:
            scores = _tile_scores(model, x, window=window, batch_size=batch_size,
                                  progress=progress)
            out = scores.cpu().numpy().astype(np.float32)
            t = profile["transform"]  # composed with a scaling by the window size
            profile.update(count=out.shape[0], dtype="float32", nodata=None,
                           height=out.shape[1], width=out.shape[2],
                           transform=Affine(t.a * window, t.b * window, t.c,
                                            t.d * window, t.e * window, t.f))
    profile.update(driver="GTiff", compress="deflate")
    for key in ("blockxsize", "blockysize", "tiled"):  # the input's tiling may not fit the output
        profile.pop(key, None)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".part")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(out)
    os.replace(tmp, out_path)
    return out_path


def _tile_scores(model, x, *, window: int, batch_size: int, progress: bool):
    """Softmax scores of each ``window`` x ``window`` tile: ``(num_classes, rows, cols)``."""
    import torch
    import torch.nn.functional as F
    from einops import rearrange

    _, _, h, w = x.shape
    rows, cols = -(-h // window), -(-w // window)
    x = F.pad(x, (0, cols * window - w, 0, rows * window - h))
    tiles = rearrange(x, "1 c (r h) (s w) -> (r s) c h w", h=window, w=window)
    batches = list(torch.split(tiles, batch_size))
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="tiles", unit="batch")
    scores = torch.cat([model(t).softmax(-1) for t in batches])
    return rearrange(scores, "(r s) k -> k r s", r=rows, s=cols)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deflect-predict",
        description="Apply a trained adapter to a multi-band GeoTIFF and write the prediction "
                    "as a GeoTIFF (class map, or per-tile class scores), with the input's CRS.")
    p.add_argument("--run", required=True, type=Path,
                   help="an adapter folder (adapter.json + adapter.safetensors), or a run folder "
                        "holding one in adapter/")
    p.add_argument("--input", required=True, type=Path, help="the multi-band GeoTIFF to predict")
    p.add_argument("--out", required=True, type=Path, help="the GeoTIFF to write")
    p.add_argument("--bands", type=lambda s: [b.strip() for b in s.split(",")], default=None,
                   help="the file's band names in file order, comma-separated (default: the "
                        "file's band descriptions)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="factor from file values to reflectance (1e-4 for reflectance x 10^4)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="windows per forward pass (8; on a small CPU 1 was measured faster, see "
                        "the book's cost page)")
    p.add_argument("--window", type=int, default=None, help="window size (default: the model's)")
    p.add_argument("--stride", type=int, default=None,
                   help="segmentation: step between windows (default: half a window)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``deflect-predict``: one line on stderr and exit status 2 for every user error."""
    args = _parser().parse_args(argv)
    folder = args.run / "adapter" if (args.run / "adapter" / "adapter.json").is_file() else args.run
    try:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}.")
        if not args.input.is_file():
            raise FileNotFoundError(f"no input file {args.input}.")
        from .adapters import load_adapter

        model = load_adapter(None, folder)
        out = predict_geotiff(model, args.input, args.out, bands=args.bands, scale=args.scale,
                              window=args.window, stride=args.stride,
                              batch_size=args.batch_size, device=args.device)
    except (ValueError, FileNotFoundError) as e:
        print(f"deflect-predict: {e}", file=sys.stderr)
        return 2
    print(f"deflect-predict: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
