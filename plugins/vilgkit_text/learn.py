"""Deterministic WordPiece vocabulary learning (BPE-style merges over word counts).

Why not ``tokenizers.trainers.WordPieceTrainer``: it orders characters of equal frequency, and so
breaks merge ties, by hash-map iteration order, which changes from process to process (the same
corpus gave different vocabularies in two runs). A run must be reproducible, so the merges are
learned here with every tie broken by the pair's strings; HF ``tokenizers`` still does the
normalisation, pre-tokenisation and the encoding itself.

The algorithm is the one HF's trainer implements: words start as characters, non-initial ones
carrying the ``##`` continuation prefix; the most frequent adjacent pair (weighted by word count) is
merged repeatedly until the vocabulary is full or no pair occurs ``min_frequency`` times. Pair
counts are updated incrementally (only words containing the merged pair are revisited) and the
best pair comes from a lazily invalidated heap, so large corpora stay tractable.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict

PREFIX = "##"


def _merge_symbol(a: str, b: str) -> str:
    return a + b[len(PREFIX) :]


def learn_wordpiece_vocab(
    word_counts: dict[str, int], max_size: int, special_tokens: list[str], min_frequency: int = 1
) -> list[str]:
    """Learn a WordPiece vocabulary.

    Args:
        word_counts: pre-tokenised words and their counts.
        max_size: the vocabulary limit, special tokens included (never exceeded).
        special_tokens: placed first, in order (their ids are 0, 1, ...).
        min_frequency: a pair is merged only if it occurs at least this often.

    Returns:
        Tokens ordered by id: specials, initial characters, ``##`` characters, then merges in the
        order learned.
    """
    # Alphabet: most frequent characters first (ties by code point), as many as fit beside their
    # "##" forms; words with a character left out are not learned from (they encode to [UNK]).
    char_freq: Counter[str] = Counter()
    initial_chars, inner_chars = set(), set()
    for word, n in word_counts.items():
        for i, ch in enumerate(word):
            char_freq[ch] += n
            (inner_chars if i else initial_chars).add(ch)
    budget = max_size - len(special_tokens)
    alphabet: set[str] = set()
    for ch, _ in sorted(char_freq.items(), key=lambda kv: (-kv[1], kv[0])):
        cost = (ch in initial_chars) + (ch in inner_chars)
        if cost <= budget:
            alphabet.add(ch)
            budget -= cost
    vocab = list(special_tokens)
    vocab += sorted(ch for ch in alphabet if ch in initial_chars)
    vocab += sorted(PREFIX + ch for ch in alphabet if ch in inner_chars)
    known = set(vocab)

    words: list[list[str]] = []
    counts: list[int] = []
    for word, n in sorted(word_counts.items()):
        if len(word) > 1 and all(ch in alphabet for ch in word):
            words.append([word[0]] + [PREFIX + ch for ch in word[1:]])
            counts.append(n)

    pair_count: Counter[tuple[str, str]] = Counter()
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for w, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            pair_count[pair] += counts[w]
            where[pair].add(w)
    heap = [(-c, pair) for pair, c in pair_count.items()]
    heapq.heapify(heap)

    while len(vocab) < max_size and heap:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg:  # stale entry: the count changed since it was pushed
            continue
        if -neg < min_frequency:
            break
        new = _merge_symbol(*pair)
        touched: set[tuple[str, str]] = set()
        for w in sorted(where.pop(pair, ())):
            symbols, n = words[w], counts[w]
            for old in zip(symbols, symbols[1:]):
                pair_count[old] -= n
                touched.add(old)
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
                    merged.append(new)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            words[w] = merged
            for p in zip(merged, merged[1:]):
                pair_count[p] += n
                where[p].add(w)
                touched.add(p)
        pair_count.pop(pair, None)
        for p in touched:
            c = pair_count.get(p, 0)
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:
                pair_count.pop(p, None)
        if new not in known:
            vocab.append(new)
            known.add(new)
    return vocab
