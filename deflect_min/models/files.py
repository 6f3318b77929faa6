"""Checkpoint files: the cache, downloads, checksums and safe loading.

URL downloads and file hashes go through the datasets' own module (:mod:`deflect_min.data._download`:
one implementation, locked ``.part`` files, progress bars); Google Drive files through ``gdown``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch

from ..data import _download
from ..data._download import file_hash
from . import cards
from .cards import _spec

__all__ = ["gfm_cache_path", "load_checkpoint"]


def gfm_cache_path(name: str) -> Path:
    """Where ``load_gfm(name, weights="download")`` keeps (and looks for) the checkpoint."""
    spec = _spec(name)
    fname = spec.filename() if callable(spec.filename) else spec.filename
    return Path(torch.hub.get_dir()) / "checkpoints" / fname


def _expected_checksum(name: str, md5: str | bool | None) -> tuple[str, str] | None:
    """(algorithm, expected hex or hex prefix) to check, or None for no check."""
    if md5 is False:
        return None
    if isinstance(md5, str):
        return ("md5", md5.lower())
    if md5 not in (None, True):
        raise TypeError(f"md5 must be None (published checksum), a hex string or False, got {md5!r}")
    spec = _spec(name)
    if spec.md5:
        return ("md5", spec.md5)
    if name == "scalemae":
        return ("sha256", cards.SCALEMAE_SHA256)
    return None


def _verify(path: Path, name: str, expected: tuple[str, str] | None) -> None:
    if expected is None:
        spec = _spec(name)
        if spec.md5 is None and spec.url is None:
            print(f"{name}: no checksum is published for this file; its md5 is "
                  f"{file_hash(path, 'md5')} (pass md5=... to pin it).")
        return
    algo, want = expected
    got = file_hash(path, algo)
    if got != want:
        raise RuntimeError(
            f"{name}: checksum mismatch for {path}: {algo} is {got}, expected "
            f"{want}. The file is corrupted or incomplete (an "
            f"interrupted or rate-limited download often leaves an HTML page instead of the "
            f"checkpoint). Delete it and download it again, or pass md5=False to skip the check "
            f"if you know the file is right."
        )


def _manual_instructions(name: str, dst: Path) -> str:
    spec = _spec(name)
    where = (f"https://drive.google.com/file/d/{spec.gdrive_id}/view" if spec.gdrive_id
             else (spec.url() if callable(spec.url) else spec.url))
    return (
        f"Download it by hand from {where} and save it as\n    {dst}\n"
        f"(this folder is $TORCH_HOME/hub/checkpoints; on Colab, set os.environ['TORCH_HOME'] to "
        f"a folder on your mounted Google Drive before loading, so the file survives the "
        f"session), or upload it anywhere and call load_gfm({name!r}, weights='/path/to/file')."
    )


def _download_gdrive(file_id: str, dst: Path) -> None:
    import gdown

    out = gdown.download(id=file_id, output=str(dst), quiet=False)
    if out is None or not dst.exists():
        raise RuntimeError("gdown returned no file")


def _download_url(url: str, dst: Path) -> None:
    """The datasets' downloader: a locked ``.part`` file, a progress bar, an atomic rename."""
    _download.fetch(_download.Remote(relpath=dst.name, url=url), dst)


def _fetch(name: str, md5: str | bool | None) -> Path:
    """The cached checkpoint of ``name``, downloaded first if missing; checksum verified."""
    spec = _spec(name)
    dst = gfm_cache_path(name)
    expected = _expected_checksum(name, md5)
    if not dst.exists() and spec.url is not None:  # the same file under the URL's own name
        other = dst.with_name((spec.url() if callable(spec.url) else spec.url).rsplit("/", 1)[-1])
        if other != dst and other.is_file():
            _verify(other, name, expected)
            other.rename(dst)
    if dst.exists():
        _verify(dst, name, expected)
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(dst.name + ".part")
    try:
        if spec.gdrive_id is not None:
            _download_gdrive(spec.gdrive_id, part)
        else:
            url = spec.url() if callable(spec.url) else spec.url
            _download_url(url, part)
    except Exception as e:
        part.unlink(missing_ok=True)
        raise RuntimeError(
            f"{name}: downloading the checkpoint failed ({type(e).__name__}: {e}). Google Drive "
            f"rate-limits popular files.\n{_manual_instructions(name, dst)}"
        ) from e
    try:
        _verify(part, name, expected)
    except RuntimeError:
        part.unlink(missing_ok=True)
        raise
    shutil.move(str(part), str(dst))
    return dst


def load_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load`` a checkpoint safely: tensors, containers and ``argparse.Namespace`` only.

    Raises:
        RuntimeError: the file is empty, truncated, corrupt or a web page (an HTML error page
            saved by a failed download); or it needs any other type to be unpickled (it could
            run code).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: pass the path of an existing file, "
                                f"or weights=\"download\" to fetch the official one.")
    if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5
        raise RuntimeError("loading GFM checkpoints safely needs torch >= 2.5 "
                           "(torch.serialization.safe_globals)")
    with open(path, "rb") as fd:
        head = fd.read(64)
    corrupt = (f"{path} is not a PyTorch checkpoint: it is corrupt or a web page ({{}}): delete "
               f"it and download it again (weights=\"download\", or the manual download "
               f"of the GFM's card).")
    # torch.save writes a zip (PK\x03\x04) or, in the legacy format, a pickle (\x80)
    if not head:
        raise RuntimeError(corrupt.format("0 bytes"))
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise RuntimeError(corrupt.format(f"it starts with {head[:24]!r}"))
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except EOFError as e:
        raise RuntimeError(corrupt.format("truncated")) from e
    except pickle.UnpicklingError as e:
        raise RuntimeError(
            f"refusing to load {path}: it is not a plain PyTorch checkpoint, or it needs a Python "
            f"type other than tensors, containers and argparse.Namespace to be unpickled, and "
            f"unpickling arbitrary types can run code. torch says: {str(e).splitlines()[0]}\n"
            f"If you trust the file, load it yourself with torch.load(path, weights_only=False), "
            f"save just its state dict with torch.save(...), and pass that file instead."
        ) from e
    except RuntimeError as e:
        raise RuntimeError(corrupt.format(f"torch says: {str(e).splitlines()[0]}")) from e


def _read_weights(path: Path) -> Any:
    """A safetensors file (as ``load_gfm`` caches converted weights) or a PyTorch checkpoint."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return load_checkpoint(path)
