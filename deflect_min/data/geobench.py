"""GEO-Bench v1 classification tasks: m-so2sat, m-brick-kiln and m-forestnet.

One HDF5 file per sample, one HDF5 dataset per band. Two facts shape this reader:

* ``h5py`` lists a file's datasets **alphabetically**, not in the sensor's band order (m-forestnet
  sorts to Blue, Green, Red ... while its ``bands_order`` is Red, Green, Blue ...), so bands are
  always selected **by name**.
* The class label lives only in the file attribute ``attrs["pickle"]``, a pickled dict that
  references ``geobench`` classes (and ``affine``, ``rasterio``, ``datetime``, numpy). It is read
  with :class:`RestrictedUnpickler`: geobench-family classes become inert stubs, a short
  allow-list of builtins, ``datetime`` and ``collections`` is allowed, numpy arrays and scalars
  only of dtypes that hold no Python objects and never as ``ndarray`` subclasses (as geobench's
  own ``geobench/_safe_pickle.py`` refuses them: object arrays are a known route to code
  execution), and anything else is refused. ``geobench`` itself is never imported.

Data: Hugging Face dataset ``recursix/geo-bench-1.0`` (CC-BY-SA-4.0), one zip per task under
``classification_v1.0/``, unpacked to ``<root>/classification_v1.0/<m-name>/``.
"""

from __future__ import annotations

import ast
import io
import json
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from ..safe_pickle import RefusedPickleError, numpy_globals
from . import _download
from ._common import BenchmarkDataset

__all__ = [
    "RestrictedUnpickler",
    "read_geobench_attrs",
    "GeoBenchClassification",
    "MSo2Sat",
    "MBrickKiln",
    "MForestNet",
]

HF_REPO = "recursix/geo-bench-1.0"
BENCHMARK_DIR = "classification_v1.0"


# ---------------------------------------------------------------------------- unpickling
class _Stub:
    """Stand-in for a geobench / affine / rasterio object: keeps the pickled state, runs nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Stub:
        obj = object.__new__(cls)
        obj.__dict__["_args"] = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slots state)
            for part in state:
                if isinstance(part, dict):
                    self.__dict__.update(part)
        elif isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def __repr__(self) -> str:
        fields = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        return f"<stub {type(self).__module__}.{type(self).__name__} {fields}>"


_STUB_MODULES = ("geobench", "ccb", "affine", "rasterio")
_ALLOWED: dict[str, set[str]] = {
    "builtins": {"set", "frozenset", "list", "dict", "tuple", "int", "float", "complex", "str",
                 "bytes", "bytearray", "bool", "slice", "range", "object"},
    "datetime": {"date", "datetime", "time", "timedelta", "timezone"},
    "collections": {"OrderedDict", "defaultdict", "deque"},
}
_STUBS: dict[tuple[str, str], type] = {}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickle GEO-Bench attributes without importing geobench or running arbitrary code.

    Classes from modules starting with ``geobench``, ``ccb`` (GEO-Bench's historic name),
    ``affine`` or ``rasterio`` are replaced by inert stub classes that only store their state;
    a small allow-list of builtins, ``datetime`` and ``collections`` is honoured, and numpy's
    array and scalar reconstructors through :func:`deflect_min.safe_pickle.numpy_globals`
    (no object dtypes, no ``ndarray`` subclasses); everything else raises
    :class:`~deflect_min.safe_pickle.RefusedPickleError` (a :class:`pickle.UnpicklingError`).
    """

    def __init__(self, file: Any, *, source: str = "a GEO-Bench attribute") -> None:
        super().__init__(file)
        self._numpy = numpy_globals(source)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._numpy:
            return self._numpy[(module, name)]
        if module.split(".")[0] in _STUB_MODULES:
            key = (module, name)
            if key not in _STUBS:
                _STUBS[key] = type(name, (_Stub,), {"__module__": module})
            return _STUBS[key]
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        raise RefusedPickleError(f"refusing to unpickle {module}.{name} (not allow-listed): it "
                                 f"could run code; nothing was executed.")


def read_geobench_attrs(h5file: Any) -> dict[str, Any]:
    """Decode ``attrs["pickle"]`` of an open GEO-Bench HDF5 file with the restricted unpickler."""
    raw = h5file.attrs["pickle"]
    if isinstance(raw, bytes):
        raw = raw.decode()
    data = ast.literal_eval(str(raw))  # the attribute is str(pickle.dumps(...)), a bytes literal
    return RestrictedUnpickler(io.BytesIO(data)).load()


# ---------------------------------------------------------------------------- datasets
class GeoBenchClassification(BenchmarkDataset):
    """A GEO-Bench v1 classification task: per-sample HDF5, bands by name, label from the pickle.

    Subclasses give ``dataset_name`` (``"m-so2sat"`` ...), ``band_map`` (sensor-qualified band
    name -> GEO-Bench band name, in the true band order), ``classes`` and ``scale`` (the factor
    that turns the stored values into reflectance).

    Args:
        root: folder that holds (or will hold) ``classification_v1.0/<m-name>/``; the task folder
            itself is accepted too.
        split: ``"train"``, ``"val"`` or ``"test"`` (GEO-Bench's ``default_partition.json``;
            ``"val"`` is its ``"valid"``).
        bands: band names to load, in the order wanted (default: all, in the true order).
        transforms: callable applied to each sample dict.
        download: download ``classification_v1.0/<m-name>.zip`` from the Hugging Face hub if the
            data are not under ``root``.
        checksum: verify the zip against the SHA-256 the hub publishes before extracting it.
    """

    dataset_name: ClassVar[str] = ""
    band_map: ClassVar[dict[str, str]] = {}
    scale: ClassVar[float] = 1.0
    scale_note: ClassVar[str] = ""

    def _index(self) -> None:
        split = self.split
        task_dir = self._locate(self._find_task_dir, self.remote(),
                                f"{BENCHMARK_DIR}/{self.dataset_name}/default_partition.json",
                                extract_to=self._extraction_dir)
        self.task_dir = task_dir
        partition_path = task_dir / "default_partition.json"
        try:
            partition = json.loads(partition_path.read_text())
        except (OSError, ValueError) as error:
            raise self._unreadable(partition_path, error) from error
        key = {"val": "valid"}.get(split, split)
        if key not in partition:
            raise self._unreadable(partition_path, KeyError(f"no {key!r} split"))
        self.sample_names: list[str] = list(partition[key])
        self.files = [task_dir / f"{name}.hdf5" for name in self.sample_names]
        missing = [f.name for f in self.files if not f.is_file()]
        if missing:  # found now, not after a training epoch
            raise self._unreadable(partition_path, FileNotFoundError(
                f"its {key!r} split lists {len(missing)} sample(s) with no file in {task_dir}, "
                f"e.g. {missing[:3]}"))
        self._wanted = [self.band_map[b] for b in self.bands]  # GEO-Bench names, channel order
        self._stats: dict[str, tuple[float, float]] | None = None

    @classmethod
    def remote(cls) -> _download.Remote:
        """Where the task's zip lives on the Hugging Face hub."""
        path = f"{BENCHMARK_DIR}/{cls.dataset_name}.zip"
        return _download.Remote(
            relpath=path, hf_repo=HF_REPO, hf_path=path,
            url=f"https://huggingface.co/datasets/{HF_REPO}/resolve/main/{path}")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.all_bands = tuple(cls.band_map)

    def _extraction_dir(self, archive: Path) -> Path:
        """Unpack next to the zip if its members sit in ``<m-name>/``, else into ``<m-name>/``."""
        import zipfile

        try:
            with zipfile.ZipFile(archive) as zf:
                names = zf.namelist()
        except (OSError, zipfile.BadZipFile):
            return archive.parent  # extract() reports the damaged archive by name
        prefix = f"{self.dataset_name}/"
        if names and all(n.startswith(prefix) for n in names):
            return archive.parent
        return archive.parent / self.dataset_name

    def _find_task_dir(self) -> Path | None:
        for candidate in (self.root / BENCHMARK_DIR / self.dataset_name,
                          self.root / self.dataset_name, self.root):
            if (candidate / "default_partition.json").is_file():
                return candidate
        return None

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, path: Path) -> tuple[np.ndarray, int]:
        import h5py

        wanted = self._wanted
        try:
            with h5py.File(path, "r") as h5:
                attrs = read_geobench_attrs(h5)
                if not isinstance(attrs, dict):
                    raise ValueError(f"attrs['pickle'] decodes to a {type(attrs).__name__}, not "
                                     f"the dict of a GEO-Bench sample")
                # GEO-Bench band name -> HDF5 dataset name (which may carry a date suffix).
                by_name: dict[str, str] = {}
                for descriptor in attrs.get("bands_order", list(h5.keys())):
                    info = attrs.get(descriptor, {}).get("band_info")
                    by_name.setdefault(getattr(info, "name", descriptor), descriptor)
                missing = [w for w in wanted if w not in by_name]
                if missing:
                    raise KeyError(f"bands {missing} not in the file (it has {list(by_name)})")
                image = np.stack([np.asarray(h5[by_name[w]], dtype=np.float32) for w in wanted])
                label = int(attrs["label"])
        except pickle.UnpicklingError as error:
            raise self._unreadable(path, error) from error
        except (OSError, KeyError, ValueError, SyntaxError, EOFError, TypeError) as error:
            raise self._unreadable(path, error) from error
        return image * np.float32(self.scale), label

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        """Return ``{"image": float32 (C, H, W) reflectance, "label": int64 scalar}``."""
        image, label = self._read(self.files[index])
        sample = {"image": torch.from_numpy(image),
                  "label": torch.tensor(label, dtype=torch.int64)}
        return self._apply(sample)

    def _all_band_stats(self) -> dict[str, tuple[float, float]]:
        if self._stats is None:  # read once: band_stats, mean and std all come through here
            path = self.task_dir / "band_stats.json"
            try:
                stats = json.loads(path.read_text())
            except (OSError, ValueError) as error:
                raise self._unreadable(path, error) from error
            self._stats = {b: (stats[g]["mean"] * self.scale, stats[g]["std"] * self.scale)
                           for b, g in self.band_map.items() if g in stats}
        return self._stats


#: The 13 Sentinel-2 bands under their GEO-Bench names, in band order.
_S2_BAND_MAP = {
    "S2_B01": "01 - Coastal aerosol", "S2_B02": "02 - Blue", "S2_B03": "03 - Green",
    "S2_B04": "04 - Red", "S2_B05": "05 - Vegetation Red Edge",
    "S2_B06": "06 - Vegetation Red Edge", "S2_B07": "07 - Vegetation Red Edge",
    "S2_B08": "08 - NIR", "S2_B8A": "08A - Vegetation Red Edge",
    "S2_B09": "09 - Water vapour", "S2_B10": "10 - SWIR - Cirrus", "S2_B11": "11 - SWIR",
    "S2_B12": "12 - SWIR",
}


class MSo2Sat(GeoBenchClassification):
    """GEO-Bench m-so2sat: 32 x 32 px, the 10 Sentinel-2 bands, 17 local climate zones.

    The 8 Sentinel-1 channels of the file are not exposed (DEFLECT and PANGAEA use Sentinel-2
    only). Values are So2Sat's, already reflectance (scale 1).

    Example::

        ds = MSo2Sat(root="data/geobench", split="train", download=True)
    """

    dataset_name = "m-so2sat"
    band_map = {b: g for b, g in _S2_BAND_MAP.items() if b not in ("S2_B01", "S2_B09", "S2_B10")}
    scale = 1.0
    classes = (
        "Compact high rise", "Compact mid rise", "Compact low rise", "Open high rise",
        "Open mid rise", "Open low rise", "Lightweight low rise", "Large low rise",
        "Sparsely built", "Heavy industry", "Dense trees", "Scattered trees", "Bush, scrub",
        "Low plants", "Bare rock or paved", "Bare soil or sand", "Water",
    )


class MBrickKiln(GeoBenchClassification):
    """GEO-Bench m-brick-kiln: 64 x 64 px, 13 Sentinel-2 bands, brick kiln or not.

    Stored as Sentinel-2 digital numbers (reflectance x 10000); returned as reflectance.

    **What its last three bands are is uncertain.** GEO-Bench names the 13 channels of the source
    (SustainBench's HDF5 blocks) by position only (``make_sample`` in
    geo-bench ``make_benchmark/dataset_converters/brick_kiln.py``: channel ``i`` gets
    ``sentinel2_13_bands[i]``; nothing checks them). The stored means of "B10", "B11" and "B12"
    (about 83, 91 and 69 DN in PANGAEA's configuration) are far below Sentinel-2 SWIR values
    (around 1000 to 2500 DN over land), so these channels may not be SWIR at all. Indices that use
    SWIR (MNDWI, NDBI, NBR, NDMI) are therefore doubtful on this dataset.

    Example::

        ds = MBrickKiln(root="data/geobench", split="train", download=True)
    """

    dataset_name = "m-brick-kiln"
    band_map = dict(_S2_BAND_MAP)
    scale = 1e-4
    classes = ("not brick kiln", "brick kiln")


class MForestNet(GeoBenchClassification):
    """GEO-Bench m-forestnet: 332 x 332 px at 15 m, 6 Landsat-8 bands, 12 deforestation drivers.

    ForestNet ships 8-bit images (visible PNG, infrared arrays cast to uint8), so the "reflectance"
    returned here is the 8-bit value / 255: a brightness proxy, not calibrated reflectance.
    Spectral indices computed from it are approximate.

    **Pixels outside the forest-loss polygon were blended with white** before GEO-Bench stored
    them (``overlay_mask`` in geo-bench ``make_benchmark/dataset_converters/forestnet.py``:
    the image, at alpha 192/255, is pasted over white, then the polygon's pixels are restored), so
    outside the polygon every stored value is v' = 0.753 v + 63 (8-bit). Band ratios and spectral
    indices there are biased towards those of white; only the polygon keeps the original values.
    The polygon itself is in each band's ``meta_info["forest_loss_region"]`` (WKT, in pixel
    coordinates) of the file's pickled attributes: :meth:`forest_loss_mask` rasterises it as the
    converter did (PIL ``ImageDraw.polygon`` with outline and fill, exterior rings only), so that
    an analysis can keep to the pixels that were not blended.

    Example::

        ds = MForestNet(root="data/geobench", split="train", download=True)
    """

    dataset_name = "m-forestnet"
    band_map = {
        "L8_B04": "04 - Red", "L8_B03": "03 - Green", "L8_B02": "02 - Blue",
        "L8_B05": "05 - NIR", "L8_B06": "06 - SWIR1", "L8_B07": "07 - SWIR2",
    }
    scale = 1.0 / 255.0
    classes = (
        "Oil palm plantation", "Timber plantation", "Other large-scale plantations",
        "Grassland shrubland", "Small-scale agriculture", "Small-scale mixed plantation",
        "Small-scale oil palm plantation", "Mining", "Fish pond", "Logging",
        "Secondary forest", "Other",
    )

    def forest_loss_mask(self, index: int) -> Tensor:
        """``(H, W)`` bool: the forest-loss polygon of sample ``index`` (True inside), from
        ``meta_info["forest_loss_region"]``, drawn as geo-bench's ForestNet converter drew the
        mask it kept unblended (``draw_img_roi``: ``ImageDraw.polygon`` of each exterior ring,
        outline and fill; ``make_benchmark/dataset_converters/forestnet.py`` at geo-bench
        4777011, lines 70-85 and 130-131). Raises ``UnreadableFileError`` if the file has none.
        """
        import h5py
        from PIL import Image, ImageDraw

        path = self.files[index]
        try:
            with h5py.File(path, "r") as h5:
                attrs = read_geobench_attrs(h5)
                first = attrs["bands_order"][0]
                height, width = h5[first].shape
                meta = attrs[first].get("meta_info") or {}
            if "forest_loss_region" not in meta:
                raise KeyError("meta_info has no 'forest_loss_region' (GEO-Bench's m-forestnet "
                               "files carry the polygon's WKT there)")
            rings = _wkt_exteriors(meta["forest_loss_region"])
        except (OSError, KeyError, ValueError, SyntaxError, EOFError, TypeError,
                pickle.UnpicklingError) as error:
            raise self._unreadable(path, error) from error
        mask = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(mask)
        for ring in rings:
            draw.polygon(ring, outline=1, fill=1)
        return torch.from_numpy(np.array(mask, dtype=bool))


def _wkt_exteriors(wkt: str) -> list[list[tuple[float, float]]]:
    """The exterior ring of each polygon of a WKT ``POLYGON`` or ``MULTIPOLYGON`` (holes are
    skipped, as the converter skips them), as lists of (x, y)."""
    kind, _, body = str(wkt).strip().partition(" ")
    depth_of_rings = {"POLYGON": 2, "MULTIPOLYGON": 3}.get(kind.upper())
    if depth_of_rings is None:
        raise ValueError(f"forest_loss_region is a {kind!r}, not a POLYGON or MULTIPOLYGON WKT")
    rings: list[list[tuple[float, float]]] = []
    depth, start, exterior = 0, 0, False
    for i, ch in enumerate(body):
        if ch == "(":
            depth += 1
            if depth == depth_of_rings - 1:
                exterior = True  # the first ring of a polygon is its exterior
            elif depth == depth_of_rings:
                start = i + 1
        elif ch == ")":
            if depth == depth_of_rings and exterior:
                rings.append([(float(x), float(y)) for x, y in
                              (point.split() for point in body[start:i].split(","))])
                exterior = False
            depth -= 1
    if depth != 0:
        raise ValueError(f"unbalanced parentheses in the WKT {str(wkt)[:80]!r}")
    return rings
