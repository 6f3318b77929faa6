"""Download, checksum and extraction shared by the dataset classes.

Every archive is fetched from its real source (the Hugging Face hub or Zenodo) and verified
against the checksum **that source publishes** at download time:

* Hugging Face hub: the SHA-256 of the file's Git-LFS object, read from the hub's file metadata
  with :meth:`huggingface_hub.HfApi.get_paths_info`.
* Zenodo: the MD5 listed for the file in the record's JSON (``/api/records/<id>``).

No checksum is hard-coded (none was copied from anywhere we could not check). When a source
publishes none (a non-LFS hub file, a record without the file's checksum) a warning says so and
the file's size is compared with the published size instead; archive integrity is always checked
while extracting (zip CRCs, gzip CRC and tar structure).

Faults: a download holds an exclusive lock on its ``.part`` file (a second process downloading
the same archive is refused); a failed download names the dataset and the manual download;
extraction goes to a hidden temporary folder that is renamed into place only once every member
is out, so an interrupted or failed extraction never leaves a tree that looks complete; only an
archive the library downloaded itself is deleted after extraction, never one the user put there.

Tests replace :func:`fetch` and :func:`published_checksum` with local stand-ins, which is why the
dataset classes call them through this module (``_download.fetch(...)``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import tarfile
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

__all__ = [
    "ChecksumError",
    "CorruptArchiveError",
    "DownloadError",
    "Published",
    "Remote",
    "fetch",
    "published_checksum",
    "file_hash",
    "verify",
    "extract",
    "download_and_extract",
]


class ChecksumError(RuntimeError):
    """A downloaded or local archive does not match the checksum its source publishes."""


class CorruptArchiveError(RuntimeError):
    """An archive is truncated or unreadable."""


class DownloadError(RuntimeError):
    """A download failed (no network, the source down) or another process is downloading the
    same file; the message names the dataset and the manual download."""


#: Python >= 3.11.4 (and 3.10.12) has tar extraction filters; without them links and special
#: members are refused here (the old fallback extracted links unfiltered).
_TAR_FILTERS = hasattr(tarfile, "data_filter")


@dataclass(frozen=True)
class Remote:
    """Where one archive lives.

    Attributes:
        relpath: path of the archive relative to the dataset's ``root``.
        url: the direct download URL (shown in messages; used for Zenodo).
        hf_repo: Hugging Face dataset repository (``owner/name``), or ``None``.
        hf_path: the file's path inside ``hf_repo``.
        zenodo_record: Zenodo record id, or ``None``.
    """

    relpath: str
    url: str
    hf_repo: str | None = None
    hf_path: str | None = None
    zenodo_record: str | None = None


@dataclass(frozen=True)
class Published:
    """The checksum (and size) a source publishes for a file; ``algorithm`` None if none."""

    algorithm: str | None  # "sha256", "md5" or None
    hexdigest: str | None
    size: int | None = None
    source: str = ""


def published_checksum(remote: Remote) -> Published:
    """Ask the source for the file's published checksum (needs network)."""
    if remote.hf_repo is not None:
        from huggingface_hub import HfApi

        infos = HfApi().get_paths_info(remote.hf_repo, [remote.hf_path], repo_type="dataset")
        if not infos:
            raise FileNotFoundError(f"{remote.hf_path} is not in the hub dataset {remote.hf_repo}")
        info = infos[0]
        if getattr(info, "lfs", None) is not None:
            return Published("sha256", info.lfs.sha256, info.lfs.size,
                             f"Hugging Face hub LFS metadata of {remote.hf_repo}/{remote.hf_path}")
        return Published(None, None, getattr(info, "size", None),
                         f"Hugging Face hub (no LFS hash for {remote.hf_path})")
    if remote.zenodo_record is not None:
        api = f"https://zenodo.org/api/records/{remote.zenodo_record}"
        with urllib.request.urlopen(api, timeout=60) as response:
            record = json.load(response)
        name = Path(remote.relpath).name
        for entry in record.get("files", []):
            if entry.get("key") == name:
                checksum = entry.get("checksum") or ""
                size = entry.get("size")
                if ":" in checksum:
                    algorithm, hexdigest = checksum.split(":", 1)
                    return Published(algorithm, hexdigest, size, f"Zenodo record {remote.zenodo_record}")
                return Published(None, None, size, f"Zenodo record {remote.zenodo_record}")
        raise FileNotFoundError(f"{name} is not listed in Zenodo record {remote.zenodo_record}")
    return Published(None, None, None, "no published checksum")


def fetch(remote: Remote, destination: Path) -> Path:
    """Download ``remote`` to ``destination`` with a progress bar; return the path.

    The download goes to ``<destination>.part``, locked exclusively while it lasts.

    Raises:
        DownloadError: another process holds the ``.part`` lock.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DownloadError(
                f"another process is downloading {destination.name} into {destination.parent} "
                f"(it holds the lock on {partial}); wait for it to finish, then run again: the "
                f"archive will be there.") from None
        if remote.hf_repo is not None:
            from huggingface_hub import hf_hub_download

            # hf_hub_download shows its own tqdm progress bar and resumes interrupted downloads.
            cache = destination.parent / ".hf_download"
            path = Path(hf_hub_download(remote.hf_repo, remote.hf_path, repo_type="dataset",
                                        local_dir=cache))
            shutil.move(str(path), destination)
            shutil.rmtree(cache, ignore_errors=True)
            partial.unlink()
            return destination
        os.ftruncate(fd, 0)
        request = urllib.request.Request(  # noqa: S310 - the records' fixed https URLs
            remote.url, headers={"User-Agent": "deflect_min"})
        with (urllib.request.urlopen(request, timeout=60) as response,  # noqa: S310 - as above
              os.fdopen(os.dup(fd), "wb") as out):
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=destination.name) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        os.replace(partial, destination)
        return destination
    finally:
        os.close(fd)  # releases the lock


def file_hash(path: Path, algorithm: str) -> str:
    """Hex digest of a file, with a progress bar for large files."""
    digest = hashlib.new(algorithm)
    size = Path(path).stat().st_size
    with open(path, "rb") as fd, tqdm(total=size, unit="B", unit_scale=True,
                                      desc=f"{algorithm} {Path(path).name}",
                                      disable=size < (256 << 20)) as bar:
        while chunk := fd.read(1 << 20):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def verify(path: Path, published: Published, dataset: str, retry_call: str) -> None:
    """Check ``path`` against ``published``; delete it and raise :class:`ChecksumError` if bad."""
    path = Path(path)
    problem = None
    if published.algorithm is not None:
        actual = file_hash(path, published.algorithm)
        if actual.lower() != str(published.hexdigest).lower():
            problem = (f"{published.algorithm} is {actual}, but {published.source} publishes "
                       f"{published.hexdigest}")
    else:
        warnings.warn(f"{dataset}: {published.source or 'the source'} publishes no checksum for "
                      f"{path.name}; checking its size and archive integrity only.", stacklevel=3)
        if published.size is not None and path.stat().st_size != published.size:
            problem = f"size is {path.stat().st_size} bytes, but the source lists {published.size}"
    if problem is not None:
        path.unlink(missing_ok=True)
        raise ChecksumError(
            f"{dataset}: checksum mismatch for {path}: {problem}. The file was deleted and will "
            f"not be used; run {retry_call} again to download it afresh."
        )


def _plain_members(members: list[tarfile.TarInfo], archive: Path) -> None:
    """Without tar filters: refuse links and special members (only files and folders)."""
    for m in members:
        if not (m.isfile() or m.isdir()):
            raise CorruptArchiveError(
                f"{archive}: member {m.name!r} is a link or a special file, which this Python "
                f"({platform.python_version()}, no tar extraction filters) cannot extract "
                f"safely; use Python >= 3.11.4, or extract the archive yourself and pass its "
                f"folder as root.")


def _members_inside(names: list[str], destination: Path, archive: Path) -> None:
    root = destination.resolve()
    for name in names:
        target = (root / name).resolve()
        if root != target and root not in target.parents:
            raise CorruptArchiveError(f"{archive}: member {name!r} would extract outside {root}")


#: Every error a damaged archive raises while it is read (zlib.error: a corrupted deflate
#: stream; OSError includes gzip.BadGzipFile; EOFError: truncation).
_DECOMPRESSION_ERRORS = (zipfile.BadZipFile, zlib.error, tarfile.TarError, EOFError, OSError,
                         ValueError)


def extract(archive: Path, destination: Path, dataset: str, retry_call: str) -> None:
    """Extract a zip or tar(.gz) archive, checking its integrity; errors name the archive and
    the member.

    Members go to a hidden folder ``.<destination name>.<archive name>.partial`` beside
    ``destination`` first; only when every one is out is it renamed to ``destination`` (when
    that does not exist yet) or are its top-level entries renamed into it. An interrupted or
    failed extraction therefore leaves no partial tree where the datasets look (the next call
    starts afresh).
    """
    archive, destination = Path(archive), Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.parent / f".{destination.name}.{archive.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # an earlier, interrupted extraction
    staging.mkdir()
    hint = (f"{dataset}: {archive} is truncated or unreadable; delete it and run {retry_call} "
            f"again")
    member = None
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                names = zf.namelist()
                _members_inside(names, destination, archive)
                for member in tqdm(names, desc=f"Extracting {archive.name}", unit="file",
                                   disable=len(names) < 1000):
                    zf.extract(member, staging)  # checks each member's CRC
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = tf.getmembers()  # reads the whole (gzip) stream: truncation fails here
                _members_inside([m.name for m in members], destination, archive)
                if not _TAR_FILTERS:
                    _plain_members(members, archive)
                for info in tqdm(members, desc=f"Extracting {archive.name}", unit="file",
                                 disable=len(members) < 1000):
                    member = info.name
                    if _TAR_FILTERS:
                        tf.extract(info, staging, filter="data")
                    else:  # files and folders only (checked above)
                        tf.extract(info, staging)
        else:
            raise CorruptArchiveError(f"{hint} (not a zip or tar archive).")
        if not destination.exists():
            os.replace(staging, destination)  # one atomic rename
        for entry in sorted(staging.iterdir()) if staging.exists() else ():  # a few, renamed
            target = destination / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)  # a copy of this archive's own entry (re-extraction)
            os.replace(entry, target)
    except CorruptArchiveError:
        raise
    except _DECOMPRESSION_ERRORS as error:
        where = f" in member {member!r}" if member is not None else ""
        raise CorruptArchiveError(f"{hint} ({type(error).__name__}{where}: {error}).") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download_and_extract(remote: Remote, root: Path, *, dataset: str, download: bool,
                         checksum: bool, retry_call: str,
                         extract_to: Path | Callable[[Path], Path] | None = None,
                         keep_archive: bool = False) -> bool:
    """Make the archive's content available under ``root``.

    Uses an archive already at ``root / remote.relpath`` (verified when ``checksum``), otherwise
    downloads it when ``download`` (always verified when ``checksum``). Returns False when there
    is neither an archive nor permission to download, so the caller can raise its own
    "not found" error. The archive is deleted after extraction only if it was downloaded here
    (and ``keep_archive`` is False); an archive the user put in ``root`` is kept.

    Raises:
        DownloadError: the download failed (the message names the manual download).
    """
    root = Path(root)
    archive = root / remote.relpath
    downloaded = False
    if not archive.is_file():
        if not download:
            return False
        try:
            fetch(remote, archive)
        except OSError as error:  # URLError, HF's LocalEntryNotFoundError, connection errors
            raise DownloadError(
                f"{dataset}: could not download {remote.url} ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}). Check the network "
                f"connection and run {retry_call} again, or download the file by hand from "
                f"{remote.url}, put it at {archive} and run again.") from error
        downloaded = True
    if checksum:
        try:
            published = published_checksum(remote)
        except Exception as error:  # network or API failure: keep the archive for a retry
            raise RuntimeError(
                f"{dataset}: could not read the checksum {remote.url} publishes "
                f"({type(error).__name__}: {error}). Run {retry_call} again, or add "
                f"checksum=False to skip the verification (the archive is kept at {archive})."
            ) from error
        verify(archive, published, dataset, retry_call)
    if extract_to is None:
        target = archive.parent
    elif callable(extract_to):
        target = extract_to(archive)
    else:
        target = Path(extract_to)
    extract(archive, target, dataset, retry_call)
    if downloaded and not keep_archive:
        archive.unlink()  # the extracted files are what the dataset reads; save Colab's disk
    elif not downloaded:
        warnings.warn(f"{dataset}: extracted your archive {archive} into {target} and kept it "
                      f"(deflect_min deletes only archives it downloaded itself); delete it "
                      f"yourself to free the space.", stacklevel=3)
    return True
