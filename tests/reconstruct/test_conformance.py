"""vilgkit.testing's conformance checks for the reconstructors, plus a reconstructor contract."""

import pytest
import torch

from vilgkit.interfaces import Reconstructor
from vilgkit.testing.components import build_component
from vilgkit.testing.conformance import (  # noqa: F401
    test_component_builds,
    test_module_state_dict_round_trip,
    test_unknown_argument_rejected,
)

pytestmark = pytest.mark.vilgkit_registry("reconstructor")


def test_reconstructor_contract(vilgkit_component, tiny):
    """Attached to a tokenizer: images in [-1, 1] of the right shape, a finite loss, and a loss
    that is differentiable in the hidden states exactly when ``end_to_end`` is True."""
    cls = vilgkit_component.cls
    assert issubclass(cls, Reconstructor)
    rec = build_component(cls)
    gen, tok, images, codes = tiny["gen"], tiny["tok"], tiny["images"], tiny["codes"]
    attach = getattr(rec, "attach", None)
    if attach is not None:
        rec = type(rec)().attach(tok, gen.hidden_size)
    hidden = torch.randn(3, 16, gen.hidden_size, requires_grad=True)
    out = rec.reconstruct(codes, hidden)
    out = out.detach()
    assert out.shape == images.shape and float(out.min()) >= -1 - 1e-5 and float(out.max()) <= 1 + 1e-5
    loss = rec.loss(images, codes, hidden)["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    if cls.end_to_end:
        loss.backward()
        assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    else:
        assert not loss.requires_grad
    with pytest.raises(ValueError):
        rec.reconstruct(codes.float(), hidden)
