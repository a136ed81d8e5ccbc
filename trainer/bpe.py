"""A byte-level BPE vocabulary trained on the fact corpus, tokenized exactly as llama.cpp's
`gpt2` tokenizer with `tokenizer.ggml.pre = llama-bpe` tokenizes it.

- Pre-tokenizer: llama.cpp's Llama-3 regex (engine/src/tokenizer/pre.rs, LLAMA3_REGEX) with
  \\p{L} and \\p{N} narrowed to ASCII letters and digits. The corpus is ASCII only (checked),
  so on it the two regexes split identically.
- Merges: applied lowest rank first within each pre-token, as GPT-2 / llama.cpp do; a
  pre-token that is itself a token is emitted whole without merging (`ignore_merges`, which
  llama.cpp sets for the Llama-3 pre-tokenizer).
- Vocabulary layout (as the forge's byte-level vocab, engine/src/forge/vocab.rs): ids 0..255
  are the bytes 0..255, then one token per merge in merge order, then `<|begin_of_text|>`
  (BOS) and `<|end_of_text|>` (EOS), both control tokens. Token texts are in GPT-2
  byte-to-unicode form.

Training is deterministic: the most frequent adjacent pair wins, ties go to the smaller
(left id, right id); pairs whose concatenation is already a token are skipped (llama.cpp
asserts token texts are unique).
"""

from __future__ import annotations

import re
from collections import Counter

LLAMA3_ASCII = re.compile(
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
    r"|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]{1,3}| ?[^\sA-Za-z0-9]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

BOS_TEXT = "<|begin_of_text|>"
EOS_TEXT = "<|end_of_text|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-to-unicode table (printable bytes map to themselves)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(
        range(ord("\xae"), ord("\xff") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_TO_UNICODE = _bytes_to_unicode()


def gpt2_text(b: bytes) -> str:
    return "".join(BYTE_TO_UNICODE[x] for x in b)


def pretokenize(text: str) -> list[bytes]:
    if not text.isascii():
        raise ValueError(f"the corpus must be ASCII (the regex is narrowed to it): {text!r}")
    return [m.group(0).encode() for m in LLAMA3_ASCII.finditer(text)]


class Bpe:
    def __init__(self, token_bytes: list[bytes], merges: list[tuple[int, int]]):
        self.token_bytes = token_bytes  # ids 0..n_normal-1
        self.merges = merges  # (left id, right id) in rank order
        self.rank = {m: r for r, m in enumerate(merges)}
        self.merged_id = {m: 256 + r for r, m in enumerate(merges)}
        self.id_of = {b: i for i, b in enumerate(token_bytes)}
        self.bos = len(token_bytes)
        self.eos = len(token_bytes) + 1

    @property
    def n_vocab(self) -> int:
        return len(self.token_bytes) + 2

    def token_texts(self) -> list[str]:
        return [gpt2_text(b) for b in self.token_bytes] + [BOS_TEXT, EOS_TEXT]

    def merge_texts(self) -> list[str]:
        return [f"{gpt2_text(self.token_bytes[a])} {gpt2_text(self.token_bytes[b])}" for a, b in self.merges]

    def encode_word(self, w: bytes) -> list[int]:
        if w in self.id_of:  # ignore_merges
            return [self.id_of[w]]
        ids = list(w)
        while len(ids) > 1:
            best = None
            for i in range(len(ids) - 1):
                r = self.rank.get((ids[i], ids[i + 1]))
                if r is not None and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            pair = (ids[best[1]], ids[best[1] + 1])
            new = self.merged_id[pair]
            out, i = [], 0
            while i < len(ids):
                if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
                    out.append(new)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            ids = out
        return ids

    def encode(self, text: str, bos: bool = True) -> list[int]:
        out = [self.bos] if bos else []
        for w in pretokenize(text):
            out.extend(self.encode_word(w))
        return out

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.token_bytes[i] if i < len(self.token_bytes) else b"" for i in ids).decode()


def train(texts: list[str], max_merges: int, min_count: int = 2) -> Bpe:
    words = Counter()
    for t in texts:
        for w in pretokenize(t):
            words[w] += 1
    seqs = [(list(w), c) for w, c in sorted(words.items())]
    token_bytes = [bytes([b]) for b in range(256)]
    known = set(token_bytes)
    merges: list[tuple[int, int]] = []
    while len(merges) < max_merges:
        counts: Counter = Counter()
        for s, c in seqs:
            for p in zip(s, s[1:]):
                counts[p] += c
        best = None
        for pair in sorted(counts):
            c = counts[pair]
            if token_bytes[pair[0]] + token_bytes[pair[1]] in known:
                continue
            if best is None or c > best[1]:
                best = (pair, c)
        if best is None or best[1] < min_count:
            break
        (a, b), _ = best
        merged = token_bytes[a] + token_bytes[b]
        token_bytes.append(merged)
        known.add(merged)
        merges.append((a, b))
        new = len(token_bytes) - 1
        for k, (s, c) in enumerate(seqs):
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[k] = (out, c)
    return Bpe(token_bytes, merges)
