"""deflect_min.safe_pickle: real-looking pickles load; pickles that could run code are refused."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from deflect_min.safe_pickle import RefusedPickleError, StandIn, restricted_loads


class Band:  # pickled as tests.test_safe_pickle.Band, read back as a stand-in
    def __init__(self, data):
        self.data = data


class BandStandIn(StandIn):
    pass


CLASSES = {(__name__, "Band"): BandStandIn}


def test_allowed_class_and_arrays_load_into_stand_ins():
    data = np.arange(12, dtype=np.uint16).reshape(3, 4)
    out = restricted_loads(pickle.dumps({"b": Band(data)}, protocol=4), classes=CLASSES,
                           source="test")
    assert isinstance(out["b"], BandStandIn)
    np.testing.assert_array_equal(out["b"].state["data"], data)
    assert type(out["b"].state["data"]) is np.ndarray


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


class MyArray(np.ndarray):
    pass


@pytest.mark.parametrize("payload, what", [
    (Exploit(), "posix.system"),
    (np.array([1, "a", None], dtype=object), "array of Python objects"),
    (np.arange(3).view(MyArray), "test_safe_pickle.MyArray"),  # an ndarray subclass
    (Band(np.zeros(2)), "test_safe_pickle.Band"),  # a class that is not in the allow-list
])
def test_dangerous_payloads_are_refused_without_running(payload, what):
    with pytest.raises(RefusedPickleError, match=what) as e:
        restricted_loads(pickle.dumps(payload, protocol=4),
                         classes={} if isinstance(payload, Band) else CLASSES, source="payload.pkl")
    assert "payload.pkl" in str(e.value) and "Nothing was executed" in str(e.value)


def test_direct_ndarray_call_is_refused():
    class Direct:
        def __reduce__(self):
            return (np.ndarray, ((2,), "f4"))

    with pytest.raises(RefusedPickleError, match="direct call of numpy.ndarray"):
        restricted_loads(pickle.dumps(Direct(), protocol=4), classes={}, source="x")


def test_subclass_allowed_as_a_class_is_still_refused_as_an_array():
    classes = {(__name__, "MyArray"): MyArray}
    with pytest.raises(RefusedPickleError, match="ndarray subclass"):
        restricted_loads(pickle.dumps(np.arange(3).view(MyArray), protocol=4), classes=classes,
                         source="x")
