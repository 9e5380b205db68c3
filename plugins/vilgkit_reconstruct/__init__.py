"""Built-in vilgkit plugin: reconstructors (paper §3.1.3).

* ``TwoStageReconstructor``: sampled codes → the tokenizer's codebook lookup → its decoder; trained
  separately from the generator (it *is* the tokenizer's decoder).
* ``EndToEndReconstructor``: the generator's last-layer image hidden states → non-linear map →
  ``z_emb`` → a decoder initialised from the tokenizer's; trained jointly with the generator.

Both reconstructors receive the trained image tokenizer through ``attach(image_tokenizer,
hidden_size)``, which the generator stage and ``Pipeline`` call (see docs/recipes.md).
"""

from vilgkit_reconstruct.end_to_end import EndToEndReconstructor
from vilgkit_reconstruct.two_stage import TwoStageReconstructor

__all__ = ["EndToEndReconstructor", "TwoStageReconstructor"]
