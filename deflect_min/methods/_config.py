"""The base of every method's typed configuration: frozen, validated, JSON round-trip."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ..baselines import INFLATE_INITS, INPUTS

__all__ = ["MethodConfig", "BaselineConfig", "INPUTS", "INFLATE_INITS"]


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """A method's options. Subclasses are frozen dataclasses that validate in ``__post_init__``.

    ``method`` (a class attribute) is the registry name the config belongs to.
    """

    method: ClassVar[str] = ""

    @classmethod
    def options(cls) -> dict[str, Any]:
        """``{option: default}`` of this method, in declaration order."""
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def from_options(cls, **options: Any) -> MethodConfig:
        """The config from keyword options; an unknown one is an error that lists the valid ones."""
        unknown = sorted(set(options) - set(cls.options()))
        if unknown:
            valid = ", ".join(f"{k}={v!r}" for k, v in cls.options().items()) or "none"
            raise ValueError(f"method {cls.method!r} has no option {', '.join(map(repr, unknown))}; "
                             f"its options (with defaults) are: {valid}.")
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready options (tuples become lists), with the method name under ``"method"``."""
        def plain(v: Any) -> Any:
            return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v

        return {"method": self.method,
                **{f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MethodConfig:
        """Inverse of :meth:`to_dict` (``"method"``, if present, must be this config's)."""
        data = dict(data)
        name = data.pop("method", cls.method)
        if name != cls.method:
            raise ValueError(f"this is a {name!r} config, not a {cls.method!r} one.")
        return cls.from_options(**data)

    # -- validation helpers for subclasses ---------------------------------------------------
    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _positive_int(self, name: str, *, allow_zero: bool = False) -> None:
        v = getattr(self, name)
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and int(v) == v \
            and (v >= 0 if allow_zero else v > 0)
        if not ok:
            kind = "a non-negative" if allow_zero else "a positive"
            raise ValueError(f"{self.method}: {name} must be {kind} integer (e.g. 4, 8 or 16), "
                             f"got {v!r}.")
        self._set(name, int(v))

    def _choice(self, name: str, choices: Sequence[str]) -> None:
        v = getattr(self, name)
        if v not in choices:
            raise ValueError(f"{self.method}: {name} must be one of {list(choices)}, got {v!r}.")

    def _positive_or_none(self, name: str) -> None:
        v = getattr(self, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
            raise ValueError(f"{self.method}: {name} must be a positive number or None, got {v!r}.")


@dataclasses.dataclass(frozen=True)
class BaselineConfig(MethodConfig):
    """Options every baseline shares: which bands the encoder reads.

    Attributes:
        input: ``"rgb"`` (the three RGB bands, as an RGB-pretrained encoder in PANGAEA) or
            ``"inflated"`` (all bands through an inflated, trainable patch embedding).
        inflate_init: how the inflated kernels of the bands beyond RGB start: ``"zeros"`` (the
            model starts as the RGB one), ``"repeat"`` (the RGB kernels tiled, as GDA does) or
            ``"random"`` (``Conv2d``'s default).
    """

    input: str = "rgb"
    inflate_init: str = "zeros"

    def __post_init__(self) -> None:
        self._choice("input", INPUTS)
        self._choice("inflate_init", INFLATE_INITS)
