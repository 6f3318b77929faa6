"""Read foreign pickles without running foreign code.

Some real data files are Python pickles of classes from packages we never import or install
(configilm's BigEarthNet v1 LMDB pickles ``bigearthnet_patch_interface`` objects). Unpickling
calls whatever callables the file names, so :func:`restricted_loads` allows only

* the classes the caller maps onto **local stand-ins** (plain classes that only store the state
  the pickle gives them: nothing of the original package runs);
* numpy's array reconstruction (``_reconstruct``, ``ndarray``, ``dtype``), and only for plain
  ``ndarray`` of dtypes that hold no Python objects: object arrays and ``ndarray`` subclasses are
  refused, as GEO-Bench's own ``geobench/_safe_pickle.py`` refuses them (geobench 1.1.0).

Every other global (``os.system``, ``builtins.eval``, ...) is refused with an error naming it.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["StandIn", "RefusedPickleError", "restricted_loads", "numpy_globals"]


class RefusedPickleError(pickle.UnpicklingError):
    """The pickle asks for something that could run code; nothing of it was run."""


class StandIn:
    """A local stand-in for a pickled class: keeps the pickled state in ``.state``, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<stand-in {type(self).__name__}>"


def _refuse(source: str, what: str) -> RefusedPickleError:
    return RefusedPickleError(
        f"{source}: refusing to unpickle {what}: it could run code. Nothing was executed. If the "
        f"file is meant to hold only arrays and the expected classes, it is not the file you "
        f"expected: download it again from its source.")


class _NDArrayMarker:
    """Stands for ``numpy.ndarray`` in a pickle: accepted as ``_reconstruct``'s first argument
    (the way numpy pickles every array), refused when the pickle calls it directly."""

    def __init__(self, source: str):
        self.source = source

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _refuse(self.source, "a direct call of numpy.ndarray")


def numpy_globals(source: str) -> dict[tuple[str, str], Any]:
    """numpy's pickle globals (arrays, dtypes, scalars), each refusing object dtypes and
    ``ndarray`` subclasses; ``source`` is named in the errors. For other restricted unpicklers."""
    marker = _NDArrayMarker(source)

    def reconstruct(subtype, shape, dtype):
        if subtype is not marker:
            raise _refuse(source, f"an ndarray subclass ({getattr(subtype, '__name__', subtype)!r})")
        return np.ndarray.__new__(np.ndarray, shape, _checked(np.dtype(dtype)))

    def dtype(*args):
        return _checked(np.dtype(*args))

    def scalar(dtype, *args):
        return np.core.multiarray.scalar(_checked(dtype), *args)

    def frombuffer(buf, dtype, shape, order):
        return np.frombuffer(buf, _checked(np.dtype(dtype))).reshape(shape, order=order)

    def _checked(d: np.dtype) -> np.dtype:
        if d.hasobject:
            raise _refuse(source, f"an array of Python objects (dtype {d})")
        return d

    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): marker,
                                           ("numpy", "dtype"): dtype}
    for core in ("numpy.core", "numpy._core"):  # numpy 1 and 2 names
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, *, allowed: Mapping[tuple[str, str], Any], source: str):
        super().__init__(file)
        self._allowed, self._source = allowed, source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _refuse(self._source, f"the global {module}.{name}") from None


def restricted_loads(data: bytes, *, classes: Mapping[tuple[str, str], type],
                     source: str) -> Any:
    """Unpickle ``data`` allowing only ``classes`` (``(module, name) -> stand-in``) and plain
    numpy arrays.

    Args:
        data: the pickle.
        classes: the pickled classes to accept, each mapped to a local class (e.g. a
            :class:`StandIn` subclass); anything else is refused.
        source: what the bytes are (named in errors), e.g. ``"configilm BENv1 patch S2A_..."``.

    Raises:
        RefusedPickleError: the pickle names a global outside the allow-list, an ``ndarray``
            subclass or an object array.
    """
    allowed = {**numpy_globals(source), **classes}
    return _Unpickler(io.BytesIO(data), allowed=allowed, source=source).load()
