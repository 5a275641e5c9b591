"""The bot/browser evaluation corpus: public detectors' fixtures (tests/data/ua_corpus/), how a line
is read, which lines are kept, and which half is tuned on and which is held out.

Kept: every bot line, and every browser line that is a user agent at all. The device fixtures also hold strings no detector can
call a browser (`zr`, `5775`, `Foo`, script-injection payloads): a line is dropped when it has
neither a product token (`Name/1`) nor a parenthesised comment, or when it carries markup. Every
dropped line is counted and reported next to the figures.

Split: a stable hash of the line puts it in the `tune` half (the rules were fitted by looking at
its errors) or the `held_out` half (never looked at while fitting), so the held-out figures show
whether the rules generalise.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

CORPUS_DIR = Path(__file__).parent / "data" / "ua_corpus"
BOTS = ("crawlerdetect_crawlers.txt",)
BROWSERS = ("crawlerdetect_devices.txt",)
SPLITS = ("tune", "held_out")

_PRODUCT = re.compile(r"[A-Za-z][\w.-]*/\d|\([^)]*\)")
_MARKUP = re.compile(r"[<>]|&#|^[=\"']")


def read_lines(path: Path) -> list[str]:
    """One user agent per line; fixture quoting (a line wrapped in ' or ") removed."""
    out = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if len(line) >= 2 and line[0] in "'\"" and line[-1] == line[0]:
            line = line[1:-1].strip()
        elif line[:1] in "'\"" and line[1:2] in "MO":
            line = line[1:]
        if line:
            out.append(line)
    return out


def is_user_agent(line: str) -> bool:
    """False for fixture lines that are not a user agent (see the module docstring)."""
    return bool(_PRODUCT.search(line)) and not _MARKUP.search(line)


def split_of(line: str) -> str:
    return SPLITS[hashlib.sha1(line.encode("utf-8")).digest()[0] & 1]


@dataclass(frozen=True)
class Score:
    """Bots found among bots (recall) and browsers called bots (false-positive rate)."""

    bots: int
    bots_found: int
    browsers: int
    browsers_as_bots: int
    dropped: int

    @property
    def recall(self) -> float:
        return self.bots_found / self.bots if self.bots else 1.0

    @property
    def fp_rate(self) -> float:
        return self.browsers_as_bots / self.browsers if self.browsers else 0.0

    def __str__(self) -> str:
        return (f"recall {self.recall:.2%} ({self.bots_found}/{self.bots}), browsers called bots "
                f"{self.fp_rate:.2%} ({self.browsers_as_bots}/{self.browsers}), {self.dropped} non-UA lines dropped")


def load(files: Iterable[str], folder: Path = CORPUS_DIR, *, drop_non_ua: bool) -> dict[str, list[str]]:
    """Distinct lines per split, and (with `drop_non_ua`) the dropped ones under `dropped`."""
    out: dict[str, list[str]] = {s: [] for s in (*SPLITS, "dropped")}
    seen: set[str] = set()
    for name in files:
        for line in read_lines(folder / name):
            if line in seen:
                continue
            seen.add(line)
            kept = not drop_non_ua or is_user_agent(line)
            out[split_of(line) if kept else "dropped"].append(line)
    return out


def score(is_bot: Callable[[str], bool], split: str, folder: Path = CORPUS_DIR,
          bots: Iterable[str] = BOTS, browsers: Iterable[str] = BROWSERS) -> Score:
    """Score a detector (`is_bot(user_agent)`) on one split of the corpus."""
    b, h = load(bots, folder, drop_non_ua=False), load(browsers, folder, drop_non_ua=True)
    found = sum(map(is_bot, b[split]))
    as_bots = sum(map(is_bot, h[split]))
    return Score(len(b[split]), found, len(h[split]), as_bots, len(h["dropped"]))
