"""Spectral bands: sensor-qualified names, centre wavelengths and spyndex roles.

A band is named ``<SENSOR>_<BAND>`` (``S2_B08``, ``L8_B05``, ``HLS_B8A``) so that Landsat-8's
``B05`` (near infrared, 865 nm) can never be mistaken for Sentinel-2's ``B05`` (red edge,
704 nm). Each band carries the role it plays in the Awesome Spectral Indices catalogue
(`spyndex <https://github.com/awesome-spectral-indices/spyndex>`_): ``R``, ``G``, ``N``,
``S1`` ... Roles follow spyndex's own platform tables: ``N`` is Sentinel-2 ``B08`` (broad NIR),
``N2`` is the narrow NIR of Sentinel-2 ``B8A``, Landsat-8 ``B05`` and HLS ``B8A``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Band",
    "SENSORS",
    "BANDS",
    "GFM_RGB",
    "resolve_bands",
    "rgb_of",
    "roles_of",
]


@dataclass(frozen=True)
class Band:
    """One spectral band of one sensor.

    Attributes:
        name: sensor-qualified name, e.g. ``"S2_B8A"``.
        sensor: ``"S2"`` (Sentinel-2 MSI), ``"L8"`` (Landsat-8 OLI) or ``"HLS"``
            (Harmonized Landsat Sentinel-2, S30 band naming).
        wavelength: centre wavelength in nanometres.
        role: spyndex band role (``"R"``, ``"N2"``, ...) or ``None`` (e.g. cirrus).
    """

    name: str
    sensor: str
    wavelength: float
    role: str | None


def _table(sensor: str, rows: list[tuple[str, float, str | None]]) -> dict[str, Band]:
    return {f"{sensor}_{b}": Band(f"{sensor}_{b}", sensor, wl, role) for b, wl, role in rows}


# Centre wavelengths: Sentinel-2A MSI and Landsat-8 OLI, as tabulated by spyndex.
SENSORS: dict[str, dict[str, Band]] = {
    "S2": _table(
        "S2",
        [
            ("B01", 442.7, "A"),
            ("B02", 492.4, "B"),
            ("B03", 559.8, "G"),
            ("B04", 664.6, "R"),
            ("B05", 704.1, "RE1"),
            ("B06", 740.5, "RE2"),
            ("B07", 782.8, "RE3"),
            ("B08", 832.8, "N"),
            ("B8A", 864.7, "N2"),
            ("B09", 945.1, "WV"),
            ("B10", 1373.5, None),  # cirrus: no role in spectral indices
            ("B11", 1613.7, "S1"),
            ("B12", 2202.4, "S2"),
        ],
    ),
    "L8": _table(
        "L8",
        [
            ("B01", 440.0, "A"),
            ("B02", 480.0, "B"),
            ("B03", 560.0, "G"),
            ("B04", 655.0, "R"),
            ("B05", 865.0, "N2"),
            ("B06", 1610.0, "S1"),
            ("B07", 2200.0, "S2"),
        ],
    ),
    # HLS v2 S30 names for the bands common to both HLS products.
    "HLS": _table(
        "HLS",
        [
            ("B01", 442.7, "A"),
            ("B02", 492.4, "B"),
            ("B03", 559.8, "G"),
            ("B04", 664.6, "R"),
            ("B8A", 864.7, "N2"),
            ("B11", 1613.7, "S1"),
            ("B12", 2202.4, "S2"),
        ],
    ),
}

#: Every known band by its sensor-qualified name.
BANDS: dict[str, Band] = {name: band for table in SENSORS.values() for name, band in table.items()}

#: The RGB band roles in the order the RGB foundation models were pretrained with.
#: Scale-MAE (fMoW-RGB), Cross-Scale MAE (fMoW-RGB) and DINO-MC (SeCo, S2 B4/B3/B2) all
#: take red, green, blue.
GFM_RGB: tuple[str, str, str] = ("R", "G", "B")


def resolve_bands(names: list[str] | tuple[str, ...]) -> list[Band]:
    """Look up band names, with an error that lists the valid names of each sensor."""
    if isinstance(names, str):
        raise ValueError(f"bands must be a list of band names, got the string {names!r}; "
                         f"write bands=[{names!r}, ...].")
    unknown = [n for n in names if n not in BANDS]
    if unknown:
        known = "; ".join(f"{s}: {', '.join(t)}" for s, t in SENSORS.items())
        raise ValueError(
            f"unknown band name(s) {unknown}. Band names are sensor-qualified; known bands are "
            f"{known}."
        )
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate band names in {list(names)}; give each band once.")
    return [BANDS[n] for n in names]


def roles_of(names: list[str] | tuple[str, ...]) -> dict[str, int]:
    """Map each spyndex role to the index of the band that plays it (first one wins)."""
    roles: dict[str, int] = {}
    for i, band in enumerate(resolve_bands(names)):
        if band.role is not None:
            roles.setdefault(band.role, i)
    return roles


def rgb_of(names: list[str] | tuple[str, ...],
           roles: tuple[str, str, str] = GFM_RGB) -> tuple[str, str, str]:
    """The band names among ``names`` that play ``roles`` (by default red, green, blue: the
    pretraining order of the GFMs), in that order."""
    wanted = roles
    roles = roles_of(names)
    missing = [r for r in wanted if r not in roles]
    if missing:
        raise ValueError(
            f"bands {list(names)} have no band with role(s) {missing} (R = red, G = green, "
            f"B = blue); an RGB-pretrained model needs all three. Pass rgb_bands explicitly."
        )
    return tuple(names[roles[r]] for r in wanted)  # type: ignore[return-value]
