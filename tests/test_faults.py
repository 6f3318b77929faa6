"""Faults and implausible inputs (issue 15): nothing lost, nothing silently wrong.

Each test here failed before its fix: a wrong result was accepted silently, work was lost, or
the error did not say what was wrong and what to do.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tarfile
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback

import deflect_min as dm
from deflect_min.cli import _train_parser, config_from_args, table_main, train_main
from deflect_min.embedding import REFLECTANCE_MAX, Standardize
from deflect_min.training import TrainConfig, load_model, smoke_config, train
from deflect_min.training.guard import RunInUseError, run_id, write_atomic

from tests.helpers import (GEOBENCH, HLS, MADOS_ROOT, S2_7, Interrupted, interrupt_at, reflectance,
                           tiny_vit)


# ----------------------------------------------------------------------------- (6) inputs
def _adapted(method: str = "deflect"):
    stats = {b: (0.1, 0.05) for b in S2_7}
    return dm.adapt(tiny_vit(), method, bands=S2_7, band_stats=stats)


@pytest.mark.parametrize("method", ["deflect", "lora"])
def test_digital_numbers_are_refused(method) -> None:
    model = _adapted(method)
    x = reflectance(2, S2_7, 32)
    model.forward_features(x)  # reflectance passes
    with pytest.raises(ValueError, match=r"cannot be reflectance.*x / 10000"):
        model.forward_features(x * 10_000)
    # the threshold: clouds and glint (1.5) pass, the darkest digital numbers (> 10) do not
    model.forward_features(torch.full_like(x, 1.5))
    with pytest.raises(ValueError, match=f"at most {REFLECTANCE_MAX:g}"):
        model.forward_features(torch.full_like(x, REFLECTANCE_MAX * 1.01))


def test_integer_input_and_empty_batch_are_refused() -> None:
    model = _adapted()
    with pytest.raises(TypeError, match=r"torch.int16, not float reflectance.*x.float\(\) / 10000"):
        model.forward_features((reflectance(2, S2_7, 32) * 10_000).to(torch.int16))
    with pytest.raises(ValueError, match=r"batch is empty \(shape \(0, 7, 32, 32\)\)"):
        model.forward_features(torch.zeros(0, len(S2_7), 32, 32))


@pytest.mark.parametrize("mean, std, match", [
    (float("nan"), 0.1, r"NaN or infinite mean for \['S2_B03'\].*nanmean"),
    (0.1, float("nan"), r"std that is not a positive finite number for \['S2_B03'\].*nanstd"),
    (0.1, 0.0, r"std that is not a positive finite number.*constant band"),
    (0.1, float("inf"), r"std that is not a positive finite number"),
])
def test_band_stats_must_be_finite_and_positive(mean, std, match) -> None:
    stats = {b: (0.1, 0.05) for b in S2_7}
    stats["S2_B03"] = (mean, std)
    with pytest.raises(ValueError, match=match):
        Standardize(bands=S2_7, band_stats=stats)


# ----------------------------------------------------------------------------- runs
def _cfg(tmp_path, dataset="m-brick-kiln", **kw):
    from deflect_min.training import smoke_config

    root = {"hls-burn-scars": HLS}.get(dataset, GEOBENCH)
    kw.setdefault("work_dir", str(tmp_path / "runs"))
    kw.setdefault("out", str(tmp_path / "results"))
    return smoke_config(dataset, str(root), **kw)


class _During(Callback):
    """Call ``fn`` once, at the end of the first training epoch (the run holds its folder)."""

    def __init__(self, fn) -> None:
        self.fn, self.done = fn, False

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.done:
            self.done = True
            self.fn()


def test_second_concurrent_run_is_refused_and_first_result_kept(tmp_path) -> None:
    refused = []

    def second_run():  # same key, another lr, started while the first runs
        with pytest.raises(RunInUseError, match=r"another run is using the run folder .*"
                           r"seed0 .*\"pid\": \d+.*--name"):
            train(_cfg(tmp_path, lr=1e-3))
        refused.append(True)

    first = train(_cfg(tmp_path), callbacks=[_During(second_run)])
    assert refused
    saved = json.loads(Path(first["path"]).read_text())
    assert saved["config"]["lr"] == 1e-4 and saved["run_id"] == first["run_id"]
    folder = Path(first["checkpoint"]).parent
    assert json.loads((folder / "run.json").read_text())["run_id"] == first["run_id"]
    assert run_id(first["config"]) != run_id({**first["config"], "lr": 1e-3})
    assert run_id(first["config"]) == run_id({**first["config"], "out": "x", "work_dir": "y"})


def test_a_checkpoint_of_another_run_is_never_tested_or_loaded(tmp_path) -> None:
    other = train(_cfg(tmp_path / "b", lr=1e-3))

    def overwrite_best(trainer, pl_module):  # what a run outside the lock would do
        shutil.copy(other["checkpoint"], Path(trainer.checkpoint_callback.best_model_path))

    hook = Callback()
    hook.on_train_end = overwrite_best
    with pytest.raises(ValueError, match=r"best.ckpt was written by another run than this run "
                       r"\(lr: 0.001 there, 0.0001 here\)"):
        train(_cfg(tmp_path / "a"), callbacks=[hook])

    mine = train(_cfg(tmp_path / "c"))
    shutil.copy(other["checkpoint"], mine["checkpoint"])  # a later run overwrote it
    with pytest.raises(ValueError, match=r"written by another run than the result .*seed0.json "
                       r"\(lr: 0.001 there, 0.0001 here\)"):
        load_model(mine["path"])


def test_a_fresh_run_never_destroys_a_checkpoint(tmp_path) -> None:
    first = train(_cfg(tmp_path))
    folder = Path(first["checkpoint"]).parent
    before = {n: (folder / n).read_bytes() for n in ("last.ckpt", "best.ckpt")}
    with pytest.raises(FileExistsError, match=r"seed0 already holds last.ckpt, best.ckpt.*"
                       r"resume=True \(--resume\).*overwrite=True \(--overwrite\)"):
        train(_cfg(tmp_path, lr=1e-3))
    assert {n: (folder / n).read_bytes() for n in before} == before
    assert train_main(["--dataset", "m-brick-kiln", "--root", str(GEOBENCH), "--smoke",
                       "--out", str(tmp_path / "results"),
                       "--work-dir", str(tmp_path / "runs")]) == 2
    with pytest.warns(UserWarning, match="overwrite=True: deleted last.ckpt, best.ckpt"):
        again = train(_cfg(tmp_path, lr=1e-3, overwrite=True))
    assert again["config"]["lr"] == 1e-3 and not again["resumed"]


def test_smoke_runs_keep_out_of_runs_and_names_stay_inside(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    assert Path(smoke_config("m-so2sat", str(GEOBENCH)).work_dir).resolve() != tmp_path / "runs"
    with pytest.raises(ValueError, match="smoke run's numbers mean nothing.*work_dir"):
        smoke_config("m-so2sat", str(GEOBENCH), work_dir="runs").validate()
    args = _train_parser().parse_args(["--dataset", "m-so2sat", "--root", str(GEOBENCH),
                                       "--smoke"])
    cfg = config_from_args(args)
    assert tmp_path not in Path(cfg.work_dir).resolve().parents
    assert config_from_args(_train_parser().parse_args(
        ["--dataset", "m-so2sat", "--root", "r"])).work_dir == "runs"
    for name in ("../..", "a/b", "..", ".hidden"):
        with pytest.raises(ValueError, match=rf"name='{re.escape(name)}' is not a plain folder"):
            TrainConfig(dataset="m-so2sat", name=name).validate()
    TrainConfig(dataset="m-so2sat", name="deflect_lr3e-4").validate()




@pytest.mark.parametrize("k", [1, 2])
def test_step_budget_resume_is_bit_identical(tmp_path, k) -> None:
    # brick-kiln fixture: 2 training samples, batch 1: 2 steps per epoch, a budget of 5 ends
    # in the middle of epoch 2 (Lightning's max_steps replayed an epoch's end on resume)
    kw = dict(protocol="reduced", epochs=None, max_steps=5, batch_size=1, quiet=False,
              progress_bar=False)
    ref = train(_cfg(tmp_path / "ref", **kw))
    with pytest.raises(Interrupted):
        train(_cfg(tmp_path / "cut", **kw), callbacks=[interrupt_at(k)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = train(_cfg(tmp_path / "cut", resume=True, **kw))
    assert not [w for w in caught if "monitored key" in str(w.message)]
    assert resumed["resumed"] and resumed["history"] == ref["history"]
    assert [h["step"] for h in ref["history"]] == [2, 4, 5]
    assert resumed["epochs_run"] == ref["epochs_run"] == 3 and resumed["steps"] == 5
    assert resumed["metrics"] == ref["metrics"]
    # a run resumed with its budget spent trains no further
    again = train(_cfg(tmp_path / "cut", resume=True, **kw))
    assert again["history"] == ref["history"] and again["steps"] == 5


def test_truncated_last_checkpoint_under_resume(tmp_path) -> None:
    with pytest.raises(Interrupted):
        train(_cfg(tmp_path, epochs=3), callbacks=[interrupt_at(1)])
    last = tmp_path / "runs/m-brick-kiln/scalemae/deflect/seed0/last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(RuntimeError, match=r"cannot read the checkpoint .*last.ckpt.*truncated"
                       r".*copy best.ckpt over last.ckpt"):
        train(_cfg(tmp_path, epochs=3, resume=True))


def test_validate_refuses_settings_that_cannot_run() -> None:
    bad = {"lr": float("nan"), "seed": -1, "num_workers": -1, "devices": 0,
           "precision": "8-bit"}
    for field, value in bad.items():
        with pytest.raises(ValueError, match=re.escape(field)):
            TrainConfig(dataset="m-so2sat", **{field: value}).validate()
    with pytest.raises(ValueError, match="lr must be a positive"):
        TrainConfig(dataset="m-so2sat", lr=-1).validate()
    with pytest.raises(ValueError, match="batch_size=1 on mados.*BatchNorm.*batch_size >= 2"):
        TrainConfig(dataset="mados", batch_size=1).validate()
    TrainConfig(dataset="m-so2sat", batch_size=1, devices="auto").validate()


def test_empty_splits_and_method_settings(tmp_path) -> None:
    from deflect_min.training.data import _RunData

    loader = torch.utils.data.DataLoader(list(range(3)))
    data = _RunData({"train": loader, "val": torch.utils.data.DataLoader([]), "test": loader})
    data.trainer = SimpleNamespace(world_size=1, global_rank=0)
    with pytest.raises(ValueError, match="val split is empty") as info:
        data.setup("fit")
    assert "devices" not in str(info.value)  # one device: fewer is no advice
    root, task = tmp_path / "geobench", tmp_path / "geobench/classification_v1.0/m-brick-kiln"
    shutil.copytree(GEOBENCH / "classification_v1.0/m-brick-kiln", task)
    part = json.loads((task / "default_partition.json").read_text())
    (task / "0.10x_train_partition.json").write_text(json.dumps({**part, "train": []}))
    with pytest.raises(ValueError, match="training split of m-brick-kiln is empty"):
        train(smoke_config("m-brick-kiln", str(root), out=None, protocol="reduced"))
    (task / "default_partition.json").write_text(json.dumps({**part, "valid": []}))
    with pytest.raises(ValueError, match=r"MBrickKiln: the val split under root=.* is empty"):
        train(smoke_config("m-brick-kiln", str(root), out=None))
    with pytest.raises(ValueError, match=r"method 'lora' has no option 'stream'; its options"):
        dm.adapt(tiny_vit(), "lora", bands=S2_7, stream="single")


# ----------------------------------------------------------------------------- (7) results
def test_results_are_written_atomically(tmp_path, monkeypatch) -> None:
    target = tmp_path / "r" / "seed0.json"
    write_atomic(target, "old\n")

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, "new, but killed before the rename\n")
    monkeypatch.undo()
    assert target.read_text() == "old\n" and os.listdir(target.parent) == ["seed0.json"]


def test_table_names_each_unreadable_file(tmp_path, capsys) -> None:
    from tests.test_training import _as_real  # a real-looking result

    res = tmp_path / "results"
    good = train(_cfg(tmp_path, out=str(tmp_path / "smoke")))
    _as_real(good, res / "m-brick-kiln/scalemae/deflect/seed0.json")
    bad = {"m-so2sat/scalemae/deflect/seed0.json": '{"schema": 1, "metr',
           "m-so2sat/scalemae/deflect/seed1.json": "[1, 2]",
           "m-so2sat/scalemae/deflect/seed2.json": json.dumps({"schema": 1, "metrics": {}})}
    for rel, text in bad.items():
        (res / rel).parent.mkdir(parents=True, exist_ok=True)
        (res / rel).write_text(text)
    assert table_main(["--results", str(res)]) == 0
    captured = capsys.readouterr()
    lines = [x for x in captured.err.splitlines() if x.startswith("deflect-table: warning:")]
    others = [x for x in captured.err.splitlines() if x not in lines]
    assert len(lines) == 3 and others == ["deflect-table: results of 1 run(s), encoders: scalemae"]
    for rel, line in zip(sorted(bad), lines):
        assert rel in line
    assert "JSONDecodeError" in lines[0] and "holds a list" in lines[1] and "no [" in lines[2]
    assert "| DEFLECT |" in captured.out
    assert table_main(["--results", str(res), "--strict"]) == 2
    assert "seed0.json: unreadable" in capsys.readouterr().err


# ----------------------------------------------------------------------------- (4), (5) archives
def test_interrupted_extraction_is_never_accepted(tmp_path, monkeypatch) -> None:
    from deflect_min.data import HLSBurnScars

    shutil.copy(HLS / "hls_burn_scars.tar.gz", tmp_path)  # put there by hand
    real, count = tarfile.TarFile.extract, []

    def ctrl_c_after_five(self, *args, **kwargs):
        count.append(1)
        if len(count) > 5:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "extract", ctrl_c_after_five)
    with pytest.raises(KeyboardInterrupt):
        HLSBurnScars(tmp_path, split="test", checksum=False)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hls_burn_scars.tar.gz"]
    with pytest.warns(UserWarning, match=r"extracted your archive .*hls_burn_scars.tar.gz .*"
                      r"kept it \(deflect_min deletes only archives it downloaded itself\)"):
        ds = HLSBurnScars(tmp_path, split="test", checksum=False)
    assert len(ds) == len(HLSBurnScars(HLS, split="test")) == 2
    assert (tmp_path / "hls_burn_scars.tar.gz").is_file()  # the user's own archive is kept


def test_corrupt_member_names_archive_and_member_and_leaves_no_tree(tmp_path) -> None:
    from deflect_min.data import MADOS
    from deflect_min.data._download import CorruptArchiveError

    data = bytearray((MADOS_ROOT / "MADOS.zip").read_bytes())
    with zipfile.ZipFile(MADOS_ROOT / "MADOS.zip") as zf:
        info = next(i for i in zf.infolist() if i.compress_type == zipfile.ZIP_DEFLATED)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0xFF  # one byte inside the deflate stream
    (tmp_path / "MADOS.zip").write_bytes(bytes(data))
    for _ in range(2):  # the next call does not accept a partial tree either
        with pytest.raises(CorruptArchiveError, match=rf"MADOS: .*MADOS.zip is truncated or "
                           rf"unreadable; delete it and run .* again \(\w+ in member "
                           rf"'{re.escape(info.filename)}'"):
            MADOS(tmp_path, checksum=False)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["MADOS.zip"]


def test_download_without_network_names_dataset_and_manual_download(tmp_path,
                                                                    monkeypatch) -> None:
    import urllib.error

    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from deflect_min.data import MADOS, MBrickKiln
    from deflect_min.data._download import DownloadError

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DownloadError, match=r"MADOS: could not download https://zenodo.org/"
                       r".*URLError.*download the file by hand from .* put it at .*MADOS.zip"):
        MADOS(tmp_path, download=True)

    def hub_offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the hub and the file is not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub_offline)
    with pytest.raises(DownloadError, match=r"MBrickKiln: could not download https://"
                       r"huggingface.co/.*LocalEntryNotFoundError.*m-brick-kiln.zip"):
        MBrickKiln(tmp_path, download=True)


def test_two_downloads_of_one_archive_are_refused(tmp_path) -> None:
    import fcntl

    from deflect_min.data import MADOS
    from deflect_min.data import _download

    part = tmp_path / "MADOS.zip.part"
    with open(part, "wb") as held:  # the first process, downloading
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(_download.DownloadError, match=r"another process is downloading "
                           r"MADOS.zip into .*wait for it to finish"):
            _download.fetch(MADOS.remote, tmp_path / "MADOS.zip")


def test_links_refused_without_tar_filters(tmp_path, monkeypatch) -> None:
    from deflect_min.data import _download

    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        link = tarfile.TarInfo("data/escape")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc"
        tf.addfile(link)
    monkeypatch.setattr(_download, "_TAR_FILTERS", False)  # Python 3.11.0 - 3.11.3
    with pytest.raises(_download.CorruptArchiveError, match=r"member 'data/escape' is a link.*"
                       r"Python >= 3.11.4"):
        _download.extract(archive, tmp_path / "out", "X", "X(download=True)")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- loud, now helpful
@pytest.mark.parametrize("content, why", [
    (b"<!DOCTYPE html><html><title>Google Drive - Virus scan warning</title>", "it starts with"),
    (b"\x1f\x8b" + bytes(range(256)) * 8, "it starts with"),
    (b"", "0 bytes"),
])
def test_gfm_checkpoint_that_is_a_web_page_or_garbage(tmp_path, content, why) -> None:
    from deflect_min.models import load_checkpoint

    path = tmp_path / "scalemae.pth"
    path.write_bytes(content)
    with pytest.raises(RuntimeError, match=rf"scalemae.pth is not a PyTorch checkpoint: it is "
                       rf"corrupt or a web page \({why}.*delete it and download it again"):
        load_checkpoint(path)
    torch.save({"w": torch.ones(2)}, path)
    path.write_bytes(path.read_bytes()[:200])  # an interrupted download
    with pytest.raises(RuntimeError, match="corrupt or a web page.*download it again"):
        load_checkpoint(path)


def test_geobench_partition_listing_a_missing_file_fails_at_construction(tmp_path) -> None:
    import h5py

    from deflect_min.data import MBrickKiln

    task = tmp_path / "classification_v1.0/m-brick-kiln"
    shutil.copytree(GEOBENCH / "classification_v1.0/m-brick-kiln", task)
    part = json.loads((task / "default_partition.json").read_text())
    gone = part["valid"][0]
    (task / f"{gone}.hdf5").rename(tmp_path / "elsewhere.hdf5")
    with pytest.raises(OSError, match=rf"default_partition.json.*'valid' split lists 1 "
                       rf"sample\(s\) with no file .*{gone}.*download it again"):
        MBrickKiln(tmp_path, split="val")
    # a pickle attribute that decodes to a list, not a sample's dict
    sample = task / f"{part['train'][0]}.hdf5"
    with h5py.File(sample, "r+") as h5:
        h5.attrs["pickle"] = str(pickle.dumps([1, 2]))
    with pytest.raises(OSError, match=rf"{sample.name}.*decodes to a list, not the dict"):
        MBrickKiln(tmp_path, split="train")[part["train"].index(sample.stem)]


# ----------------------------------------------------------------------------- the book
def test_troubleshooting_page_matches_the_code() -> None:
    root = Path(__file__).parents[1]
    page = (root / "book" / "troubleshooting.md").read_text()
    groups = re.findall(r"^## (.+)$", page, flags=re.M)
    assert groups == ["Inputs", "Downloads", "Runs", "Results"]
    entries = re.split(r"^### ", page, flags=re.M)[1:]
    source = "\n".join(p.read_text() for p in sorted((root / "deflect_min").rglob("*.py")))
    fragments = []
    for entry in entries:
        fragment = re.match(r"`(.+?)`\n", entry)
        assert fragment, f"an entry heading is not a `message fragment`: {entry[:60]!r}"
        fragments.append(fragment.group(1))
        assert "**Cause.**" in entry and "**Fix.**" in entry, fragment.group(1)
    assert len(fragments) >= 30
    stale = [f for f in fragments if f not in source]
    assert not stale, f"the troubleshooting page lists messages the code no longer has: {stale}"
    assert "book/troubleshooting" in (root / "_toc.yml").read_text()
