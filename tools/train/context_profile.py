#!/usr/bin/env python3
"""Nats/token by position in the context: how well a model predicts a token it sees after n others.

The validation text is cut into non-overlapping windows (default 2048 tokens), each run from an empty
state / KV cache; the loss of every target is grouped by how many tokens precede it in its window.
For the Transformer trained on 128-token sequences this shows what rotary positions give beyond the
training length (better with more context, flat, or worse); for Itera-Lite the same for its state.

  /usr/bin/python3 tools/train/context_profile.py tools/train/checkpoints/transformer-tiny/final.pt --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import DEFAULT_DATA_DIR, TRAIN_FILE, DataError, read_text, split_train_val  # noqa: E402
from train import load_checkpoint  # noqa: E402

# Bucket edges in tokens seen before the target (the predicting position + 1).
EDGES = (1, 65, 129, 257, 513, 1025, 2049)


@torch.no_grad()
def nats_by_position(model, ids: list[int], window: int, edges=EDGES, attention_window: int | None = None) -> list[dict]:
    """Mean nats/token of targets grouped by tokens seen, over the full windows of `ids` (the rest dropped).

    attention_window (Transformer only): each query attends to at most the last N keys, to measure
    what a sliding attention window would give the same weights beyond their training length."""
    if len(ids) < window:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one window of {window}")
    model.eval()
    model.set_sparse_moe(True)
    seen = torch.arange(1, window)  # the target at window index j + 1 is predicted after j + 1 tokens
    bucket = torch.bucketize(seen, torch.tensor(edges[1:]), right=True)
    n = len(edges) - 1
    sums, counts = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.long)
    x = torch.tensor(ids)
    for begin in range(0, len(ids) - window + 1, window):
        chunk = x[begin : begin + window]
        logits, _ = model(chunk[None], attention_window=attention_window) if attention_window else model(chunk[None])
        nll = F.cross_entropy(logits[0, :-1].double(), chunk[1:], reduction="none")
        sums.index_add_(0, bucket, nll)
        counts.index_add_(0, bucket, torch.ones_like(bucket))
    return [
        {"tokens_seen": f"{edges[i]}-{min(edges[i + 1], window) - 1}", "targets": int(counts[i]),
         "nats_per_token": round(float(sums[i] / counts[i]), 4)}
        for i in range(n)
        if counts[i] > 0
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--attention-window", type=int, help="Transformer: attend to at most the last N keys (analysis)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.checkpoint.is_file():
        print(f"error: checkpoint not found: {args.checkpoint}", file=sys.stderr)
        return 2
    if args.window < 2 or (args.attention_window is not None and args.attention_window < 1):
        print("error: --window must be at least 2 and --attention-window at least 1", file=sys.stderr)
        return 2
    try:
        model, tok, _ = load_checkpoint(args.checkpoint)
        if args.attention_window and model.config.family != "transformer":
            raise ValueError("--attention-window applies to the Transformer only (Itera-Lite has no attention)")
        val = split_train_val(read_text(args.data / TRAIN_FILE))[1]
        rows = nats_by_position(model, tok.encode(val), args.window, attention_window=args.attention_window)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        report = {"checkpoint": str(args.checkpoint), "window": args.window, "attention_window": args.attention_window}
        print(json.dumps({**report, "rows": rows}, indent=2))
    else:
        print("| tokens seen | targets | nats/token |\n| --- | --- | --- |")
        for r in rows:
            print(f"| {r['tokens_seen']} | {r['targets']:,} | {r['nats_per_token']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
