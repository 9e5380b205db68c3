"""Built-in vilgkit plugin: text tokenizers (``WordPieceTokenizer``, BERT / BERT-Chinese style)."""

from vilgkit_text.wordpiece import SPECIAL_TOKENS, WordPieceTokenizer

__all__ = ["SPECIAL_TOKENS", "WordPieceTokenizer"]
