"""Character tokenizer: vocabulary from training-data frequency plus an unknown-character token.

Saved as a Hugging Face tokenizer.json that @huggingface/tokenizers (JS) loads: a BPE model with no
merges over single characters (the JS library has no WordLevel model), a Split pre-tokenizer that
isolates every character, and a Fuse decoder so decoding concatenates characters without spaces.
`<unk>` is declared there as a special added token, so Hugging Face tokenizers read the literal text
`<unk>` (wikitext writes its rare words so) as that one token; `encode` does the same.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

UNK = "<unk>"


class CharTokenizer:
    def __init__(self, chars: list[str]):
        if len(set(chars)) != len(chars):
            raise ValueError("duplicate characters in vocabulary")
        self.itos = [UNK] + list(chars)
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.unk_id = 0

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        if not text:
            raise ValueError("cannot build a vocabulary from empty text")
        counts = Counter(text)
        # Most frequent first; ties broken by code point so the vocabulary is deterministic.
        chars = sorted(counts, key=lambda c: (-counts[c], ord(c)))
        return cls(chars)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        """Ids as tokenizer.json gives them: the literal `<unk>` is one unk token, every other character
        one token (unk when outside the vocabulary)."""
        return [i for i, _ in self.encode_spans(text)]

    def encode_spans(self, text: str) -> list[tuple[int, int]]:
        """(id, source characters it covers) per token: 5 for a literal `<unk>`, else 1."""
        get, out = self.stoi.get, []
        for n, piece in enumerate(text.split(UNK)):
            if n:
                out.append((self.unk_id, len(UNK)))
            out.extend((get(c, self.unk_id), 1) for c in piece)
        return out

    def decode(self, ids: list[int]) -> str:
        return "".join(self.itos[i] for i in ids)

    def to_hf_json(self) -> dict:
        vocab = {tok: i for i, tok in enumerate(self.itos)}
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {
                    "id": 0,
                    "content": UNK,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": True,
                }
            ],
            "normalizer": None,
            "pre_tokenizer": {
                "type": "Split",
                "pattern": {"Regex": "[\\s\\S]"},
                "behavior": "Isolated",
                "invert": False,
            },
            "post_processor": None,
            "decoder": {"type": "Fuse"},
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": UNK,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": False,
                "vocab": vocab,
                "merges": [],
            },
        }

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_hf_json(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "CharTokenizer":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        vocab = data["model"]["vocab"]
        itos = sorted(vocab, key=vocab.get)
        if itos[0] != UNK or [vocab[t] for t in itos] != list(range(len(itos))):
            raise ValueError(f"{path}: not a character tokenizer written by tools/train")
        return cls(itos[1:])
