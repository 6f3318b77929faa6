"""Spectral indices from the Awesome Spectral Indices catalogue, computed safely on tensors.

The formulas come from `spyndex` (Montero et al. 2023), not from hand-written expressions.
Each formula is parsed once into a tree of arithmetic (``+ - * / **``, numbers and band roles;
anything else is refused) and evaluated from that tree, never with ``eval``. Every division
``a / b`` is guarded: its denominator is kept at least ``eps`` away from zero, so zero-filled
nodata pixels give finite values and finite gradients. Results are clamped to ``[-1, 1]`` (all default indices are
normalised differences).

Axis names used in this module: ``b`` batch, ``c`` band, ``k`` index, ``h w`` pixels.
"""

from __future__ import annotations

import ast
import operator

import spyndex
import torch
from torch import Tensor, nn

from .bands import roles_of

__all__ = ["DEFAULT_INDICES", "SpectralIndices", "available_indices"]

#: Normalised-difference indices tried by default, in this order; those whose bands are
#: missing are skipped. NDTI here is the *turbidity* index (R - G) / (R + G) of spyndex.
DEFAULT_INDICES: tuple[str, ...] = ("NDVI", "NDWI", "MNDWI", "NDBI", "NBR", "NDMI", "NDREI", "NDTI")

#: Roles that may stand in for a missing role: Landsat-8 and HLS only have the narrow NIR (N2).
_FALLBACK_ROLES = {"N": "N2"}


def _band_index(role: str, roles: dict[str, int]) -> int | None:
    if role in roles:
        return roles[role]
    fallback = _FALLBACK_ROLES.get(role)
    return roles.get(fallback) if fallback else None


def available_indices(bands: list[str], names: tuple[str, ...] = DEFAULT_INDICES) -> list[str]:
    """The indices among ``names`` that the sensor-qualified ``bands`` allow."""
    roles = roles_of(bands)
    unknown = [n for n in names if n not in spyndex.indices]
    if unknown:
        raise ValueError(f"{unknown} are not in the spyndex catalogue; see spyndex.indices.")
    return [
        n for n in names if all(_band_index(r, roles) is not None for r in spyndex.indices[n].bands)
    ]


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Pow: operator.pow}


def _parse(name: str, formula: str) -> ast.expr:
    """The formula's expression tree, checked to hold only arithmetic on numbers and roles."""
    tree = ast.parse(formula, mode="eval").body
    for node in ast.walk(tree):
        ok = isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name, ast.Load,
                               ast.operator, ast.unaryop))
        ok = ok and not (isinstance(node, ast.BinOp) and type(node.op) not in (*_BINARY, ast.Div))
        ok = ok and not (isinstance(node, ast.UnaryOp) and not isinstance(node.op, (ast.USub,
                                                                                    ast.UAdd)))
        ok = ok and not (isinstance(node, ast.Constant) and not isinstance(node.value, (int,
                                                                                       float)))
        if not ok:
            raise ValueError(f"spectral index {name}: its formula {formula!r} uses "
                             f"{type(node).__name__}, which is not plain arithmetic; only "
                             f"+ - * / ** on numbers and band roles are evaluated.")
    return tree


class SpectralIndices(nn.Module):
    r"""Per-pixel spectral indices :math:`\iota_u` of Eq. (R2).

    Args:
        bands: sensor-qualified band names of the input, in channel order.
        names: spyndex index names to try; those the bands do not allow are skipped.
        eps: smallest magnitude a denominator may take.

    Input: reflectance ``(b, c, h, w)`` (not standardised). Output: ``(b, k, h, w)`` in [-1, 1].
    """

    def __init__(self, *, bands: list[str], names: tuple[str, ...] = DEFAULT_INDICES,
                 eps: float = 1e-6):
        super().__init__()
        self.names = available_indices(bands, names)
        self.eps = eps
        roles = roles_of(bands)
        self._formulas = [_parse(n, spyndex.indices[n].formula) for n in self.names]
        self._operands = [
            {r: _band_index(r, roles) for r in spyndex.indices[n].bands} for n in self.names
        ]

    def _safe_div(self, a: Tensor, b: Tensor) -> Tensor:
        # Keep |b| >= eps with b's sign (0 counts as positive): finite values and gradients.
        b = torch.where(b >= 0, b.clamp(min=self.eps), b.clamp(max=-self.eps))
        return a / b

    def _evaluate(self, node: ast.expr, env: dict[str, Tensor]) -> Tensor | float:
        if isinstance(node, ast.Constant):
            return float(node.value)
        if isinstance(node, ast.Name):
            return env[node.id]
        if isinstance(node, ast.UnaryOp):
            value = self._evaluate(node.operand, env)
            return -value if isinstance(node.op, ast.USub) else value
        left, right = self._evaluate(node.left, env), self._evaluate(node.right, env)
        if isinstance(node.op, ast.Div):
            # a constant denominator is a nonzero number of the catalogue
            return self._safe_div(left, right) if isinstance(right, Tensor) else left / right
        return _BINARY[type(node.op)](left, right)

    def forward(self, x: Tensor) -> Tensor:
        out = []
        for tree, operands in zip(self._formulas, self._operands):
            env = {role: x[:, i] for role, i in operands.items()}
            out.append(self._evaluate(tree, env))
        if not out:
            return x.new_zeros(x.shape[0], 0, *x.shape[2:])
        return torch.stack(out, dim=1).clamp(-1.0, 1.0)

    def extra_repr(self) -> str:
        return f"indices={self.names}"
