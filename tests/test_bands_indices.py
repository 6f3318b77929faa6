import pytest
import spyndex
import torch

from deflect_min.bands import BANDS, resolve_bands, rgb_of, roles_of
from deflect_min.indices import SpectralIndices, available_indices
from tests.helpers import BAND_SETS


def test_landsat_nir_is_not_sentinel_red_edge():
    assert BANDS["L8_B05"].role == "N2" and BANDS["S2_B05"].role == "RE1"
    assert BANDS["S2_B08"].role == "N" and BANDS["S2_B8A"].role == "N2"
    assert abs(BANDS["L8_B05"].wavelength - BANDS["S2_B05"].wavelength) > 150


def test_roles_agree_with_spyndex_platform_tables():
    for name, band in BANDS.items():
        if band.sensor != "S2" or band.role is None:
            continue
        assert spyndex.bands[band.role].sentinel2a.band == name[3:].replace("B0", "B")


@pytest.mark.parametrize("name", list(BAND_SETS))
def test_rgb_of_real_band_sets(name):
    r, g, b = rgb_of(BAND_SETS[name])
    assert (BANDS[r].role, BANDS[g].role, BANDS[b].role) == ("R", "G", "B")


def test_unknown_band_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown band.*B5.*S2: S2_B01"):
        resolve_bands(["B5"])
    with pytest.raises(ValueError, match="duplicate"):
        resolve_bands(["S2_B02", "S2_B02"])
    with pytest.raises(ValueError, match="no band with role"):
        rgb_of(["S2_B08", "S2_B11"])


def test_index_formulas_come_from_spyndex():
    bands = BAND_SETS["so2sat_s2_10"]
    m = SpectralIndices(bands=bands, names=("NDVI", "NBR"))
    x = torch.rand(2, len(bands), 3, 3) + 0.05
    roles = roles_of(bands)
    expected = spyndex.computeIndex(
        "NDVI", params={"N": x[:, roles["N"]].numpy(), "R": x[:, roles["R"]].numpy()})
    torch.testing.assert_close(m(x)[:, 0], torch.as_tensor(expected), rtol=1e-5, atol=1e-6)


def test_landsat_nir_stands_in_for_broad_nir():
    assert "NDVI" in available_indices(BAND_SETS["forestnet_l8_6"])
    assert "NDREI" not in available_indices(BAND_SETS["hls_6"])  # no red edge on HLS


def test_zero_pixels_give_finite_indices_and_gradients():
    bands = BAND_SETS["mados_s2_11"]
    m = SpectralIndices(bands=bands)
    x = torch.rand(1, len(bands), 4, 4)
    x[..., :2, :] = 0.0  # zero-filled nodata
    x[..., 3, 3] = -1e-9  # tiny negative reflectance (atmospheric correction)
    x.requires_grad_(True)
    out = m(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert out.abs().max() <= 1.0


def test_unknown_index_name():
    with pytest.raises(ValueError, match="not in the spyndex catalogue"):
        SpectralIndices(bands=BAND_SETS["hls_6"], names=("NOT_AN_INDEX",))


def test_formulas_are_arithmetic_trees_not_code():
    import spyndex

    from deflect_min.indices import _parse

    for name, index in spyndex.indices.items():  # the whole catalogue is plain arithmetic
        _parse(name, index.formula)
    for formula in ("__import__('os').system('x')", "N.sum()", "(N - R) if N else R", "'a'"):
        with pytest.raises(ValueError, match="not plain arithmetic"):
            _parse("X", formula)
