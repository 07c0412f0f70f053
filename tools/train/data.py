"""Reading the datasets: strict UTF-8, clear errors, the 90/10 train/validation split."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def datasets_dir() -> Path:
    """ITERA_DATASETS, else the repository's own data/ (the same rule as src/runtime/eval-text.ts)."""
    override = os.environ.get("ITERA_DATASETS")
    return Path(override).resolve() if override else REPO / "data"


DEFAULT_DATA_DIR = datasets_dir()
TRAIN_FILE = "tinyshakespeare.txt"
TRAIN_FRACTION = 0.9


class DataError(Exception):
    """A dataset the user pointed at cannot be used; the message says what, where and how to fix."""


def read_text(path: Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset not found: {path} (pass --data <folder holding {path.name}>)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); convert it to UTF-8"
        ) from None
    if not text:
        raise DataError(f"{path}: the file is empty; point --data at the real dataset")
    return text


def split_train_val(text: str) -> tuple[str, str]:
    """First 90% of characters for training, last 10% for validation (nanoGPT shakespeare_char)."""
    n = int(len(text) * TRAIN_FRACTION)
    if n < 2 or len(text) - n < 2:
        raise DataError(f"dataset too short to split ({len(text)} characters)")
    return text[:n], text[n:]
