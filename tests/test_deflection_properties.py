"""Property-based checks of the deflection, Eq. (R6), over random shapes, scales and directions."""

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from deflect_min.deflection import deflect

shapes = st.tuples(st.integers(1, 3), st.integers(1, 7), st.integers(1, 16))


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1),
       log_scale_u=st.floats(-6, 6), log_scale_ref=st.floats(-6, 6))
def test_norm_of_reference_and_direction_of_update(shape, seed, log_scale_u, log_scale_ref):
    g = torch.Generator().manual_seed(seed)
    delta_u = torch.randn(shape, generator=g, dtype=torch.float64) * 10.0 ** log_scale_u
    delta_ref = torch.randn(shape, generator=g, dtype=torch.float64) * 10.0 ** log_scale_ref
    out = deflect(delta_u, delta_ref, eps_rel=1e-4)
    norm_u, norm_ref, norm = delta_u.norm(dim=-1), delta_ref.norm(dim=-1), out.norm(dim=-1)
    regular = norm_u >= 1e-4 * norm_ref  # the update is not negligible next to the reference
    torch.testing.assert_close(norm[regular], norm_ref[regular], rtol=1e-9, atol=0)
    # a negligible update is scaled by 1 / eps (bounded gradient), so it stays below the reference
    assert (norm[~regular] <= norm_ref[~regular] * (1 + 1e-9)).all()
    cos = torch.nn.functional.cosine_similarity(out, delta_u, dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos), rtol=0, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1), factor=st.floats(1e-3, 1e3))
def test_invariant_to_rescaling_the_untangled_update(shape, seed, factor):
    g = torch.Generator().manual_seed(seed)
    delta_u = torch.randn(shape, generator=g, dtype=torch.float64)
    delta_ref = torch.randn(shape, generator=g, dtype=torch.float64)
    # invariance holds where both updates are above eps = 1e-4 |delta_ref| (the regular regime;
    # a d = 1 token of N(0, 1) can fall below it once scaled down)
    eps = 1e-4 * delta_ref.norm(dim=-1)
    assume(bool((min(factor, 1.0) * delta_u.norm(dim=-1) > eps).all()))
    torch.testing.assert_close(deflect(factor * delta_u, delta_ref), deflect(delta_u, delta_ref),
                               rtol=1e-9, atol=1e-12)
