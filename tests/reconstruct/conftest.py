"""Tiny tokenizer + generator shared by the reconstructor tests (built in milliseconds)."""
from __future__ import annotations

import pytest
import torch

import vilgkit_reconstruct  # noqa: F401  (registers the reconstructors)


@pytest.fixture
def tiny():
    """A tiny dVAE (f=4, 16 px → 4×4 codes), a tiny generator, real-looking images, gold codes and a batch."""
    from vilgkit.models import UnifiedTransformer
    from vilgkit_vq import DVAETokenizer

    torch.manual_seed(0)
    tok = DVAETokenizer(codebook_size=16, code_dim=8, downsample=4, hidden=8).eval()
    gen = UnifiedTransformer(text_vocab_size=40, image_vocab_size=16, hidden_size=32, num_layers=2, num_heads=2,
                             max_text_len=12, max_image_grid=4)  # fmt: skip
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        codes = tok.encode(images)
    batch = gen.dummy_batch(3, 6, (4, 4), generator=torch.Generator().manual_seed(0))
    batch["codes"] = codes
    return {"tok": tok, "gen": gen, "images": images, "codes": codes, "batch": batch}


# the shrink helper is imported by name from this folder (pytest runs with --import-mode=importlib)
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
