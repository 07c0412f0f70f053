#!/usr/bin/env python3
"""Evaluate a checkpoint on the validation split and out-of-domain texts; record it in itera.json.

Methods (the same that `itera eval` implements, so it reproduces the figures with ONNX Runtime):
- Itera-Lite: the state is carried across the whole text, fed in windows of 256 tokens; every token
  after the first is predicted from the entire text before it.
- Transformer: sliding windows of the training sequence length (128) with stride half of it, each
  from an empty KV cache; a token is scored once, in the first window that predicts it with the most
  context. Its rotary positions have no table, so it also runs beyond that length: the validation
  text is measured again in windows of 512 and 2048 (LONG_WINDOWS, separate card entries), which
  says what the longer context is worth to a model trained on 128-token sequences.
Tokens as the model folder's tokenizer.json gives them (tokenizer.CharTokenizer.encode): one per
character, except that the literal text `<unk>` is one token; characters outside the vocabulary map
to <unk> (id 0). Every token is scored like any other target.
bits/char = nats over the scored tokens / ln 2 / the source characters those tokens cover (the
evaluated text's characters less the first token's: 5 when it is a literal `<unk>`, else 1), the
same definition `itera eval` uses (src/runtime/evaluate.ts).

  /usr/bin/python3 tools/train/evaluate.py tools/train/checkpoints/itera-lite-tiny/final.pt models/itera-lite-tiny
  (--only wikitext-2-test: measure that dataset alone and replace only its entry in the card)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import DEFAULT_DATA_DIR, DataError, read_text, split_train_val  # noqa: E402
from model import IteraLite  # noqa: E402
from tokenizer import UNK  # noqa: E402
from train import load_checkpoint  # noqa: E402

CARRY_WINDOW = 256

# (dataset, file relative to the datasets folder, split in the words itera eval reads)
SUITE = [
    ("tinyshakespeare-val", "tinyshakespeare.txt", "last 10% of characters"),
    ("wikitext-2-test", "wikitext-2/test.txt", "first 10% of characters"),
    ("tinystories-sample", "tinystories-sample.txt", "all"),
]
# Transformer only: tinyshakespeare-val again in sliding windows longer than the training sequences.
LONG_WINDOWS = (512, 2048)


def long_window_dataset(window: int) -> str:
    return f"{SUITE[0][0]}-window-{window}"


def suite_for(model, ckpt: dict | None) -> list[tuple[str, str, str, int | None]]:
    """(dataset label, file, split, window) of every card entry for this model (window None: carried state)."""
    if isinstance(model, IteraLite):
        return [(d, f, s, None) for d, f, s in SUITE]
    trained = training_window(model, ckpt)
    long = [w for w in LONG_WINDOWS if trained < w <= model.config.context_length]
    return [(d, f, s, trained) for d, f, s in SUITE] + [(long_window_dataset(w), *SUITE[0][1:], w) for w in long]


def apply_split(text: str, split: str) -> str:
    if split == "all":
        return text
    if split == "last 10% of characters":
        return split_train_val(text)[1]
    if split == "first 10% of characters":
        return text[: int(len(text) * 0.1)]
    raise ValueError(f"unknown split {split!r}")


def method_text(model, context: int) -> str:
    if isinstance(model, IteraLite):
        return (
            f"state carried across the whole text, fed in windows of {CARRY_WINDOW} tokens; "
            "every token after the first is scored"
        )
    return (
        f"sliding windows of {context} with stride {context // 2}, each from an empty KV cache; "
        "a token is scored once, in the first window that predicts it with the most context"
    )


def training_window(model, ckpt: dict | None) -> int:
    """The sequence length the Transformer was trained on: the window of its main figures."""
    trained = int((ckpt or {}).get("args", {}).get("seq_len") or model.config.context_length)
    return min(model.config.context_length, trained)


@torch.no_grad()
def nll_sum(model, ids: list[int], context: int | None = None) -> tuple[float, int]:
    """Total nats over targets ids[1:] and their count, by the model family's method."""
    model.eval()
    model.set_sparse_moe(True)  # same function as the dense export, fewer FLOPs
    x = torch.tensor(ids)
    total, count = 0.0, 0
    if isinstance(model, IteraLite):
        state, pending = model.initial_state(1), None
        for begin in range(0, len(ids), CARRY_WINDOW):
            chunk = x[begin : begin + CARRY_WINDOW]
            logits, state = model(chunk[None], state)
            logits = logits[0].double()
            if pending is not None:
                total += float(F.cross_entropy(pending[None], chunk[:1], reduction="sum"))
                count += 1
            if len(chunk) > 1:
                total += float(F.cross_entropy(logits[:-1], chunk[1:], reduction="sum"))
                count += len(chunk) - 1
            pending = logits[-1]
        return total, count
    window = context or model.config.context_length
    prev_end, begin = 0, 0
    while True:
        end = min(begin + window, len(ids))
        logits, _ = model(x[begin:end][None])
        first = max(prev_end, begin + 1)
        if first < end:
            rows = logits[0, first - begin - 1 : end - begin - 1].double()
            total += float(F.cross_entropy(rows, x[first:end], reduction="sum"))
            count += end - first
        prev_end = end
        if end == len(ids):
            return total, count
        begin += window // 2


def scored_chars(spans: list[tuple[int, int]]) -> int:
    """Source characters covered by the scored tokens: all but the first token's."""
    return sum(width for _, width in spans[1:])


def evaluate(model, tok, data_dir: Path, ckpt: dict | None = None, log=print, only: str | None = None) -> list[dict]:
    records = []
    trained = None if isinstance(model, IteraLite) else training_window(model, ckpt)
    for dataset, file, split, context in suite_for(model, ckpt):
        if only is not None and dataset != only:
            continue
        text = apply_split(read_text(data_dir / file), split)
        spans = tok.encode_spans(text)
        ids = [i for i, _ in spans]
        t0 = time.time()
        nats, n = nll_sum(model, ids, context)
        unk = sum(1 for i in ids if i == tok.unk_id)
        literal_unk = text.count(UNK)
        chars = scored_chars(spans)
        per = nats / n
        rec = {
            "dataset": dataset,
            "file": file,
            "split": split,
            "method": method_text(model, context),
            "tokens": n,
            "nats_per_token": round(per, 6),
            "chars": chars,
            "bits_per_char": round(nats / chars / math.log(2), 6),
            "perplexity": round(math.exp(per), 6),
            "unk_chars": unk - literal_unk,
            "note": note(unk - literal_unk, literal_unk, context if context != trained else None, trained),
            "seconds": round(time.time() - t0, 1),
        }
        log(f"{dataset}: {per:.4f} nats/token, {nats / chars / math.log(2):.4f} bits/char over {n} tokens ({unk} unk)")
        records.append(rec)
    return records


def note(unknown_chars: int, literal_unk: int, long_window: int | None = None, trained: int | None = None) -> str:
    parts = ["one token per character"]
    if long_window:
        parts.append(f"windows of {long_window}, beyond the {trained}-token training sequences (rotary positions)")
    if literal_unk:
        parts.append(f"the literal text <unk> ({literal_unk} times) is one <unk> token, as tokenizer.json reads it")
    if unknown_chars:
        parts.append("characters outside the vocabulary are <unk>")
    return "; ".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("folder", type=Path, nargs="?", help="model folder whose itera.json gets the figures")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--only",
        choices=[d for d, _, _ in SUITE] + [long_window_dataset(w) for w in LONG_WINDOWS],
        help="evaluate one dataset; replace only its card entry",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.checkpoint.is_file():
        print(f"error: checkpoint not found: {args.checkpoint}", file=sys.stderr)
        return 2
    try:
        model, tok, ckpt = load_checkpoint(args.checkpoint)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        records = evaluate(
            model, tok, args.data, ckpt, log=lambda s: print(s, file=sys.stderr, flush=True), only=args.only
        )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.folder:
        card_path = args.folder / "itera.json"
        card = json.loads(card_path.read_text())
        if card.get("training", {}).get("seconds") != round(ckpt["seconds"], 1):
            print(f"error: {card_path} was exported from another checkpoint; export this one first", file=sys.stderr)
            return 2
        card["evaluation"] = merge_records(card.get("evaluation", []), records) if args.only else records
        tmp = card_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, card_path)
    print(json.dumps(records, indent=2))
    return 0


def merge_records(old: list[dict], new: list[dict]) -> list[dict]:
    """The card's entries with those of the re-measured datasets replaced in place (new ones appended)."""
    fresh = {r["dataset"]: r for r in new}
    merged = [fresh.pop(r["dataset"], r) for r in old]
    return merged + list(fresh.values())


if __name__ == "__main__":
    sys.exit(main())
