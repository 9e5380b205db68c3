"""The text tokenizer interface: strings ⇄ integer ids."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path


class TextTokenizer(ABC):
    """Turns text into ids and back (the paper uses WordPiece, §3.1.2).

    Ids are plain Python ints in ``[0, vocab_size)``. ``encode`` adds no special tokens unless asked;
    the generator adds begin/end/separator ids itself so that layouts stay under its control.

    Attributes:
        pad_id, bos_id, eos_id, sep_id, unk_id: the special ids.
    """

    pad_id: int
    bos_id: int
    eos_id: int
    sep_id: int
    unk_id: int

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""

    @abstractmethod
    def encode(self, texts: list[str]) -> list[list[int]]:
        """Texts → id lists (no special tokens)."""

    @abstractmethod
    def decode(self, ids: list[list[int]]) -> list[str]:
        """Id lists → texts; special ids are dropped."""

    def fit(self, corpus: list[str]) -> None:
        """Train the vocabulary on a corpus (tokenizers that learn one override this)."""
        raise NotImplementedError(f"{type(self).__name__} has a fixed vocabulary and cannot be trained")

    @property
    def is_fitted(self) -> bool:
        """Whether ``encode`` can be called (a trainable tokenizer starts unfitted)."""
        return True

    @abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write everything needed to rebuild the identical tokenizer into ``directory``."""

    @abstractmethod
    def load(self, directory: str | Path) -> None:
        """Restore the state written by :meth:`save`."""
