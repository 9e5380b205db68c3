"""Input handling shared by the stages and the Pipeline: text framing, image loading, grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vilgkit.errors import InputError
from vilgkit.interfaces import TextTokenizer
from vilgkit.pictures import load_images, make_grid, to_pil
from vilgkit.text_encoding import encode_texts, trim_padding


class WordTokenizer(TextTokenizer):
    """A fixed word-level vocabulary (enough to test framing without fitting WordPiece)."""

    pad_id, unk_id, bos_id, eos_id, sep_id = 0, 1, 2, 3, 4

    def __init__(self, words: list[str]) -> None:
        self.words = ["[PAD]", "[UNK]", "[CLS]", "[EOS]", "[SEP]", *words]

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def encode(self, texts):
        return [[self.words.index(w) if w in self.words else self.unk_id for w in t.split()] for t in texts]

    def decode(self, ids):
        return [" ".join(self.words[i] for i in row if i > 4) for row in ids]

    def save(self, directory):  # pragma: no cover - not needed here
        pass

    def load(self, directory):  # pragma: no cover
        pass


TOK = WordTokenizer(["a", "red", "circle", "blue", "square"])


def test_encode_texts_frames_pads_and_masks():
    ids, mask, cut = encode_texts(TOK, ["a red circle", "square"], max_len=8)
    assert cut == 0
    assert ids.tolist() == [[2, 5, 6, 7, 3], [2, 9, 3, 0, 0]]
    assert mask.tolist() == [[True] * 5, [True, True, True, False, False]]


def test_encode_texts_rejects_empty_and_overlong_and_non_strings():
    with pytest.raises(InputError, match="prompt 1 is empty"):
        encode_texts(TOK, ["a red circle", "   "], max_len=8)
    with pytest.raises(InputError, match=r"prompt 0 .* is 6 tokens long; the text budget is 4 tokens"):
        encode_texts(TOK, ["a red circle a blue square"], max_len=6)
    with pytest.raises(InputError, match="single string"):
        encode_texts(TOK, "a red circle", max_len=8)
    with pytest.raises(InputError, match="question 0 is a int"):
        encode_texts(TOK, [3], max_len=8, what="question")
    with pytest.raises(InputError, match="no prompts"):
        encode_texts(TOK, [], max_len=8)


def test_encode_texts_truncation_keeps_budget_and_eos():
    ids, mask, cut = encode_texts(TOK, ["a red circle a blue square"], max_len=6, truncate=True)
    assert cut == 1
    assert ids.tolist() == [[2, 5, 6, 7, 5, 3]]
    assert bool(mask.all())


def test_trim_padding_drops_all_pad_columns():
    ids = torch.tensor([[2, 5, 3, 0, 0], [2, 3, 0, 0, 0]])
    mask = ids != 0
    t_ids, t_mask = trim_padding(ids, mask)
    assert t_ids.shape == (2, 3) and t_mask.sum() == mask.sum()


def test_load_images_accepts_paths_pil_arrays_tensors(tmp_path):
    rgb = np.zeros((40, 60, 3), dtype=np.uint8)
    rgb[:, 10:50] = (255, 0, 0)  # a red square region in the centre after cropping
    path = tmp_path / "wide.png"
    Image.fromarray(rgb).save(path)
    tensor = torch.rand(3, 16, 16) * 2 - 1
    out = load_images([path, Image.fromarray(rgb), rgb, tensor], size=16)
    assert out.shape == (4, 3, 16, 16)
    assert out.min() >= -1 and out.max() <= 1
    torch.testing.assert_close(out[0], out[1])
    torch.testing.assert_close(out[3], tensor)
    # centre crop of the 60-wide image keeps only the red region: red channel high, green low
    assert out[0, 0].mean() > 0.9 and out[0, 1].mean() < -0.9


def test_load_images_errors_name_the_file(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="image 1: cannot read .*broken.png"):
        load_images([np.zeros((8, 8, 3), np.uint8), broken], size=8)
    with pytest.raises(InputError, match="file not found"):
        load_images([tmp_path / "missing.png"], size=8)
    with pytest.raises(InputError, match=r"must be \[3, H, W\]"):
        load_images([torch.zeros(1, 8, 8)], size=8)
    with pytest.raises(InputError, match="NaN"):
        load_images([torch.full((3, 8, 8), float("nan"))], size=8)
    with pytest.raises(InputError, match="single image"):
        load_images(torch.zeros(3, 8, 8), size=8)


def test_to_pil_round_trip_and_grid():
    x = torch.linspace(-1, 1, 3 * 8 * 8).view(1, 3, 8, 8)
    img = to_pil(x)[0]
    back = load_images([img], size=8)
    assert (back - x).abs().max() <= 1 / 127.5 + 1e-6
    grid = make_grid([img] * 5, ncol=3, captions=["a red circle at the top left and more words"] * 5, scale=2)
    assert grid.size[0] > 3 * 16 and grid.size[1] > 2 * 16
