#!/usr/bin/env python3
"""Print the comparison table of the committed house models (docs/models.md) from their itera.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODELS = ["itera-lite-tiny", "transformer-tiny", "itera-lite-micro", "itera-lite-micro-distilled"]


def fig(card: dict, dataset: str, key: str) -> str:
    for rec in card.get("evaluation", []):
        if rec["dataset"] == dataset:
            return f"{rec[key]:.4f}" if key != "perplexity" else f"{rec[key]:.2f}"
    return "n/a"


def main() -> int:
    rows = []
    for mid in MODELS:
        path = REPO / "models" / mid / "itera.json"
        if not path.is_file():
            continue
        c = json.loads(path.read_text())
        t = c.get("training", {})
        rows.append(
            [
                mid,
                f"{c['parameters']:,}",
                f"{c['flops_per_token'] / 1e6:.2f} M" + (
                    f" ({c['architecture']['active_flops_per_token'] / 1e6:.2f} M active)"
                    if "active_flops_per_token" in c["architecture"] else ""
                ),
                fig(c, "tinyshakespeare-val", "nats_per_token"),
                fig(c, "tinyshakespeare-val", "bits_per_char"),
                fig(c, "tinyshakespeare-val", "perplexity"),
                fig(c, "wikitext-2-test", "nats_per_token"),
                fig(c, "tinystories-sample", "nats_per_token"),
                f"{t.get('seconds', 0):.0f}",
                f"{t.get('steps', 0):,}",
                f"{(t.get('tokens') or 0) / 1e6:.2f} M",
                str(c.get("export", {}).get("nodes_per_layer", "n/a")),
            ]
        )
    head = ["model", "params", "FLOPs/token", "val nats/char", "val bits/char", "val ppl", "wikitext-2 nats/token",
            "tinystories nats/char", "train s", "steps", "train tokens", "ONNX nodes/layer"]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
