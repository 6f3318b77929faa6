"""Check, by reading its source, that a torchgeo release still has what deflect_min uses.

Colab's Python 3.12 resolves torchgeo 0.10.x, which cannot be installed here (Python 3.11) and
uses 3.12-only syntax, so nothing of it is imported: the wheel is downloaded with
``pip download --no-deps --python-version 3.12`` and its modules are parsed with ``ast``.

Usage::

    python scripts/check_torchgeo.py                 # the newest torchgeo 0.10.x for Python 3.12
    python scripts/check_torchgeo.py --source DIR    # an unpacked torchgeo (e.g. site-packages)

Exits 0 when every name, signature and URL below is found, 1 with one line per problem.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

#: What deflect_min uses of torchgeo: (module file, name, required parameters or None).
CLASSES = [
    ("torchgeo/models/scale_mae.py", "ScaleMAE",
     ("res", "img_size", "num_classes", "norm_layer", "patch_size", "embed_dim", "depth",
      "num_heads", "mlp_ratio", "qkv_bias")),
    ("torchgeo/models/scale_mae.py", "ScaleMAELarge16_Weights", None),
    ("torchgeo/datasets/geo.py", "NonGeoDataset", None),
    ("torchgeo/datasets/errors.py", "DatasetNotFoundError", None),
    ("torchgeo/datasets/errors.py", "RGBBandsMissingError", None),
]
#: The Scale-MAE weights' file must be the bytes deflect_min pins (deflect_min.models): torchgeo
#: 0.10 names it by its sha256 prefix, 0.8 by another tag of the same bytes.
SCALEMAE_SHA256 = "386989c9cf349a5045c2ac76f7d0225ae3a54b2a2c158fa87e5df5103e5d9ed9"
SCALEMAE_NAME_TAGS = ("386989c9", "98ed9821")


def _init_params(cls: ast.ClassDef) -> set[str] | None:
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            args = node.args
            return {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
    return None


def _kwargs_forwarded(cls: ast.ClassDef) -> bool:
    """Whether ``__init__`` takes ``**kwargs`` (passed on to timm's VisionTransformer)."""
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            return node.args.kwarg is not None
    return False


def _weights_url(tree: ast.Module) -> str | None:
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "url" and \
                isinstance(node.value, ast.Constant) and "scalemae" in str(node.value.value):
            return str(node.value.value)
    return None


def check(root: Path) -> list[str]:
    """Problems found in the torchgeo source tree under ``root`` (empty: all is there)."""
    problems = []
    trees: dict[str, ast.Module] = {}
    for rel, name, params in CLASSES:
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing (needed for {name})")
            continue
        tree = trees.setdefault(rel, ast.parse(path.read_text(encoding="utf-8")))
        cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)
        if cls is None:
            problems.append(f"{rel}: no class {name}")
            continue
        if params:
            have = _init_params(cls) or set()
            missing = [p for p in params if p not in have]
            if missing and not _kwargs_forwarded(cls):
                problems.append(f"{rel}: {name}.__init__ lacks {missing}")
    tree = trees.get("torchgeo/models/scale_mae.py")
    url = _weights_url(tree) if tree is not None else None
    if url is None:
        problems.append("torchgeo/models/scale_mae.py: no Scale-MAE weights URL found")
    elif not url.rsplit("-", 1)[-1].startswith(SCALEMAE_NAME_TAGS):
        problems.append(f"Scale-MAE weights URL {url} does not name the pinned file "
                        f"(sha256 {SCALEMAE_SHA256[:8]}...): check the new file's sha256 and pin it "
                        f"in deflect_min.models.SCALEMAE_SHA256")
    return problems


def _download(spec: str, folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--python-version", "3.12", "--only-binary=:all:", spec, "-d", str(folder)],
                   check=True)
    (wheel,) = folder.glob("torchgeo-*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(folder / "src", members=[m for m in z.namelist() if m.endswith(".py")])
    return wheel


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--spec", default="torchgeo>=0.10,<0.11", help="which release to download")
    p.add_argument("--source", type=Path, default=None,
                   help="check this torchgeo source folder instead of downloading")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.source is not None:
            root, label = args.source, str(args.source)
        else:
            label = _download(args.spec, Path(tmp)).name
            root = Path(tmp) / "src"
        problems = check(root)
    for problem in problems:
        print(f"check_torchgeo: {label}: {problem}", file=sys.stderr)
    if not problems:
        print(f"check_torchgeo: ok, {label} has every name, signature and URL deflect_min uses")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
