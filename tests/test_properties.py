"""Property-based checks: any finite input inverts within tolerance."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from tolerance import round_trip_bounds

from latentflows.flows import ConditionalRealNVP

FLOW = ConditionalRealNVP(8, 2, couplings=4, hidden=[16])
with torch.no_grad():
    for parameter in FLOW.parameters():
        parameter.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
FLOW.eval()

finite = st.floats(-50, 50, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=60, deadline=None)
@given(x=arrays("float32", (3, 8), elements=finite), label=st.integers(0, 1))
def test_any_finite_input_round_trips(x, label):
    x = torch.from_numpy(x)
    context = torch.nn.functional.one_hot(torch.tensor([label] * 3), 2).float()
    with torch.no_grad():
        z, logabsdet = FLOW.transform(x, context)
        back, inverse_logabsdet = FLOW.transform.inverse(z, context)
    assert torch.isfinite(z).all() and torch.isfinite(logabsdet).all()
    x_bound, logabsdet_bound = round_trip_bounds(FLOW.transform, x, context)
    assert (back - x).abs().max() <= x_bound
    assert (logabsdet + inverse_logabsdet).abs().max() <= logabsdet_bound
