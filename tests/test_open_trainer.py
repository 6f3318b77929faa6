"""The open trainer: any timm ViT, any torchgeo dataset, settings from a YAML file, a run folder
that keeps its effective config, a CSV log and an adapter that load_adapter reloads; a fast,
one-line CLI."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

import deflect_min as dm
from deflect_min.cli import train_main
from deflect_min.plotting import read_curves
from tests.helpers import DATA

#: EuroSAT in torchgeo's own on-disk layout (tests/data/torchgeo/eurosat/data.py)
EUROSAT = DATA / "torchgeo" / "eurosat"

BIN = Path(sys.executable).parent


def test_timm_backbone_on_a_torchgeo_dataset_from_a_yaml_config(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "dataset": "torchgeo.datasets.EuroSAT", "root": str(EUROSAT),
        "gfm": "timm:vit_tiny_patch16_224",
        "weights": None, "method": "deflect", "method_kwargs": {"rank": 2, "layers": [0]},
        "img_size": 32, "batch_size": 2, "num_workers": 0, "protocol": "reduced",
        "max_steps": 2, "out": str(tmp_path / "results"), "work_dir": str(tmp_path / "runs"),
        "quiet": True}))
    assert train_main(["--config", str(config), "--seed", "1"]) == 0  # a flag overrides the file
    run = next((tmp_path / "runs").rglob("run.json")).parent
    effective = yaml.safe_load((run / "config.yaml").read_text())
    assert effective["gfm"] == "timm:vit_tiny_patch16_224" and effective["seed"] == 1
    assert effective["method_kwargs"] == {"rank": 2, "layers": [0]}
    curves = read_curves(run)
    assert "train/loss" in curves and "val/f1_macro" in curves and curves.index.max() == 2
    model = dm.load_adapter(None, run / "adapter")  # from the run folder alone
    assert model.encoder.gfm_card.name == "timm:vit_tiny_patch16_224"
    assert model.encoder.adaptation["config"]["rank"] == 2
    assert model.encoder.adaptation["bands"][-1] == "S2_B8A"  # torchgeo's B8A, mapped to ours
    x = 0.1 * torch.rand(2, len(model.encoder.adaptation["bands"]), 32, 32)
    assert model(x).shape == (2, 2)  # EuroSAT's classes in the fixture: AnnualCrop, Forest


def test_print_config_and_unknown_keys(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("dataset: mados\nroot: tests/data/mados\nmethod: lora\n")
    assert train_main(["--config", str(config), "--rank", "4", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["method"] == "lora" and printed["method_kwargs"] == {"rank": 4}
    config.write_text("dataset: mados\nroot: x\nlearning_rate: 0.1\n")
    try:
        train_main(["--config", str(config)])
    except SystemExit as e:
        assert e.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown key(s) ['learning_rate']" in err and "'lr'" in err


def test_help_is_fast_and_bad_values_are_one_line():
    start = time.perf_counter()
    done = subprocess.run([str(BIN / "deflect-train"), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "timm:NAME" in done.stdout
    assert time.perf_counter() - start < 1.5  # nothing heavy is imported before parsing
    bad = subprocess.run([str(BIN / "deflect-train"), "--dataset", "mados", "--root", "x",
                          "--lr", "fast"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr == \
        "deflect-train: argument --lr: invalid float value: 'fast'\n"


def test_fp16_without_a_gpu_is_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        return  # the check is for machines without one
    try:
        train_main(["--dataset", "mados", "--root", "tests/data/mados", "--smoke", "--out",
                    str(tmp_path / "r"), "--work-dir", str(tmp_path / "w"),
                    "--precision", "16-mixed"])
    except SystemExit as e:
        assert e.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs a CUDA GPU and none is visible" in err
