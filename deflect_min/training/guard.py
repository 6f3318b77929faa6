"""What keeps a run's files consistent when runs share a folder, die, or are started twice.

* **Identity** (:func:`run_id`): a short hash of every setting that changes the result (all
  of :class:`TrainConfig` but the paths and the hardware, ``_RESUME_FREE``). It is written to
  ``run.json`` in the checkpoint folder, into every checkpoint and into the result.
* **Lock** (:class:`RunLock`): an exclusive ``flock`` on ``<checkpoint folder>/run.lock`` for
  the whole run; a second run of the same key is refused with a message naming the first
  (its process, host, start time and identity). The operating system drops the lock when the
  process dies, so a killed run never leaves a stale lock.
* **No silent loss** (:func:`claim_folder`): a fresh run refuses a folder that holds a
  checkpoint unless told ``resume`` or ``overwrite``.
* **The right checkpoint** (:func:`check_checkpoint`): the settings saved in a checkpoint are
  compared with the run's before testing it and in :func:`~deflect_min.training.load_model`.
* **Atomic results** (:func:`write_atomic`): a temporary file in the same folder, then
  ``os.replace``; a kill mid-write leaves the old file or none, never half a file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import tempfile
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .config import _RESUME_FREE

__all__ = ["run_id", "RunInUseError", "RunLock", "claim_folder", "read_checkpoint",
           "check_checkpoint", "write_atomic"]

#: Checkpoints a run writes in its folder.
CHECKPOINTS = ("last.ckpt", "best.ckpt")
#: Where ``_RunState`` keeps its state in a Lightning checkpoint.
STATE_KEY = "deflect_min_run_state"


def result_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that change a run's result: the config without ``_RESUME_FREE``."""
    return {k: v for k, v in sorted(config.items()) if k not in _RESUME_FREE}


def run_id(config: Mapping[str, Any]) -> str:
    """12 hex digits of the SHA-256 of :func:`result_settings` (as sorted JSON)."""
    text = json.dumps(result_settings(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _settings_diff(saved: Mapping[str, Any], mine: Mapping[str, Any]) -> str:
    a, b = result_settings(saved), result_settings(mine)
    return "; ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} here"
                     for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


class RunInUseError(RuntimeError):
    """Another run holds the run folder's lock; the message names it."""


class RunLock:
    """Exclusive lock on a run's checkpoint folder (``run.lock``), held while the run lasts.

    Args:
        folder: the run's checkpoint folder (created if missing).
        config: the run's :meth:`TrainConfig.to_dict` (its identity is written to the lock).
    """

    def __init__(self, *, folder: Path, config: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / "run.lock"
        self.config = config
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunInUseError(
                f"another run is using the run folder {self.folder} (lock {self.path}: "
                f"{holder}). Two runs of the same dataset, GFM, run name and seed would "
                f"overwrite each other's checkpoints and result: wait for it to finish, or give "
                f"this run its own name (--name / TrainConfig.name) or work_dir.") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "run_id": run_id(self.config), "lr": self.config.get("lr")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def claim_folder(folder: Path, config: Mapping[str, Any], *, resume: bool,
                 overwrite: bool) -> None:
    """Make ``folder`` this run's: refuse to destroy a checkpoint silently; write ``run.json``.

    Raises:
        FileExistsError: a checkpoint is there, and neither ``resume`` nor ``overwrite``.
    """
    found = [n for n in CHECKPOINTS if (folder / n).is_file()]
    if found and not resume:
        if not overwrite:
            raise FileExistsError(
                f"{folder} already holds {', '.join(found)} (an interrupted or finished run). "
                f"Continue it with resume=True (--resume), or start afresh and delete them with "
                f"overwrite=True (--overwrite).")
        for name in found:
            (folder / name).unlink()
        warnings.warn(f"overwrite=True: deleted {', '.join(found)} in {folder}", stacklevel=3)
    write_atomic(folder / "run.json", json.dumps(
        {"run_id": run_id(config), "settings": result_settings(config)}, indent=1,
        default=str) + "\n")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` a checkpoint of :func:`~deflect_min.training.train` (tensors only), with
    an error that names the file and the fix when it is truncated or not a checkpoint."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, not a checkpoint, unpickling refused ...
        first = str(error).splitlines()[0] if str(error) else ""
        raise RuntimeError(
            f"cannot read the checkpoint {path} ({type(error).__name__}: {first}): it is "
            f"truncated or corrupt (was the run killed while writing it?). Delete it and train "
            f"again, or resume from the best checkpoint instead: copy best.ckpt over "
            f"last.ckpt.") from error
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise RuntimeError(f"{path} is not a checkpoint of deflect_min.training.train (no "
                           f"state_dict); pass the .ckpt file a run wrote.")
    return ckpt


def check_checkpoint(path: str | os.PathLike, config: Mapping[str, Any], *,
                     what: str) -> dict[str, Any]:
    """The checkpoint at ``path``, after checking that it was written with ``config``'s
    result-changing settings (``what`` says whose settings, for the message).

    Raises:
        ValueError: it holds no settings, or other settings.
    """
    ckpt = read_checkpoint(path)
    state = ckpt.get("callbacks", {}).get(STATE_KEY)
    saved = state.get("config") if isinstance(state, dict) else None
    if saved is None:
        raise ValueError(f"{path} holds no run settings: it was not written by "
                         f"deflect_min.training.train; pass the checkpoint of {what}.")
    diff = _settings_diff(saved, config)
    if diff:
        raise ValueError(
            f"the checkpoint {path} was written by another run than {what} ({diff}): another "
            f"run of the same key has overwritten it. Train {what} again (give runs with "
            f"other settings their own --name), or pass its own checkpoint.")
    return ckpt


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
