"""scripts/check_torchgeo.py on the installed torchgeo's source, whole and with a name removed."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import torchgeo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
check_torchgeo = importlib.import_module("check_torchgeo")

SITE = Path(torchgeo.__file__).resolve().parents[1]


def _copy(tmp_path: Path) -> Path:
    for rel, *_ in check_torchgeo.CLASSES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SITE / rel, tmp_path / rel)
    return tmp_path


def test_installed_torchgeo_has_everything():
    assert check_torchgeo.check(SITE) == []


def test_a_missing_name_and_another_weights_file_are_reported(tmp_path):
    root = _copy(tmp_path)
    errors = root / "torchgeo/datasets/errors.py"
    errors.write_text(errors.read_text().replace("class RGBBandsMissingError", "class Renamed"))
    scale_mae = root / "torchgeo/models/scale_mae.py"
    text = scale_mae.read_text()
    url = check_torchgeo._weights_url(__import__("ast").parse(text))
    scale_mae.write_text(text.replace(url, url.rsplit("-", 1)[0] + "-0000aaaa.pth"))
    problems = check_torchgeo.check(root)
    assert any("no class RGBBandsMissingError" in p for p in problems)
    assert any("does not name the pinned file" in p for p in problems)
