"""Faults and implausible inputs (issue 15): nothing lost, nothing silently wrong.

Each test here failed before its fix: a wrong result was accepted silently, work was lost, or
the error did not say what was wrong and what to do.
"""

from __future__ import annotations

import pytest
import torch

import deflect_min as dm
from deflect_min.embedding import REFLECTANCE_MAX, Standardize

from tests.helpers import S2_7, reflectance, tiny_vit


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
