"""Bots and browsers: recall and false-positive rate beside crawlerdetect's, and classify speed.

Corpus and split are the tests' (`tests/ua_corpus.py`): crawlerdetect 0.4.2's crawler fixtures
(bots) and a sample of its device fixtures (browsers), halved into `tune` and `held_out`. Two
optional inputs widen the run:

- BENCH_UA_FIXTURES: a folder holding the full fixtures under the same file names (e.g. from the
  crawlerdetect sdist: `pip download --no-deps --no-binary :all: crawlerdetect==0.4.2`).
- BENCH_BASE_SRC: the `include/` folder of another commit (`git archive <commit> include | tar -x`):
  its classifier is scored and timed side by side with this tree's, each in a fresh process, and
  the classify suite's `steps.classify_table` run is repeated under both.

crawlerdetect is a dev dependency used only here; it is not a runtime dependency.
"""

from __future__ import annotations

import json
import os
import statistics
from typing import Any

from benchmarks import bench_classify
from benchmarks.harness import DATA, ROOT, python_child, run_once

CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from tests import ua_corpus as uc
detector = sys.argv[2]
if detector == "crawlerdetect":
    from crawlerdetect import CrawlerDetect
    cd = CrawlerDetect()
    is_bot = cd.isCrawler
else:
    from agent_traffic.annotate.classify import Classifier
    clf = Classifier()
    is_bot = lambda ua: clf._classify_uncached(ua).is_bot
out = {"scores": {}, "timing": {}}
for folder in sys.argv[3:]:
    f = Path(folder)
    for split in uc.SPLITS:
        s = uc.score(is_bot, split, f)
        out["scores"][f"{f.name}|{split}"] = [s.bots, s.bots_found, s.browsers, s.browsers_as_bots, s.dropped]
uas = [l for name in (*uc.BOTS, *uc.BROWSERS) for l in uc.read_lines(uc.CORPUS_DIR / name)]
runs = []
for _ in range(1 if detector == "crawlerdetect" else 5):  # crawlerdetect takes ~2 ms a line
    t = time.process_time()
    for ua in uas:
        is_bot(ua)
    runs.append((time.process_time() - t) / len(uas) * 1e6)
out["timing"] = {"distinct_uas": len(uas), "us_per_ua": sorted(runs)[len(runs) // 2]}
print(json.dumps(out))
"""


def _child(label: str, src: str, detector: str, folders: list[str]) -> dict[str, Any]:
    out_file = DATA / f"bots-{label}.json"
    with open(out_file, "wb") as f:
        run_once([*python_child(CHILD), str(ROOT), detector, *folders], stdout=f,
                 env={"PYTHONPATH": src})
    return json.loads(out_file.read_text())


def _classify_side_by_side(repeat: int, quick: bool, sources: dict[str, str]) -> dict[str, list[float]]:
    """bench_classify's child on its own input, alternating between the sources each round."""
    events, distinct = (60_000, 1_500) if quick else (3_000_000, 4_000)
    path = DATA / f"classify-{events}-{distinct}.parquet"
    if not path.exists():
        path.with_suffix(".json").write_text(json.dumps(bench_classify.make_input(path, events, distinct)))
    times: dict[str, list[float]] = {k: [] for k in sources}
    out_file = DATA / "classify-child.json"
    for _ in range(repeat):
        for label, src in sources.items():
            with open(out_file, "wb") as f:
                run_once([*python_child(bench_classify.CHILD), str(path)], stdout=f, env={"PYTHONPATH": src})
            times[label].append(json.loads(out_file.read_text())["classify_s"])
    return times


def run(repeat: int, quick: bool) -> dict[str, Any]:
    DATA.mkdir(parents=True, exist_ok=True)
    here = str(ROOT / "include")
    base = os.environ.get("BENCH_BASE_SRC")
    folders = [str(ROOT / "tests/data/ua_corpus")]
    if os.environ.get("BENCH_UA_FIXTURES"):
        folders.append(os.environ["BENCH_UA_FIXTURES"])
    detectors = {"agent_traffic (this commit)": (here, "ours")}
    if base:
        detectors["agent_traffic (base)"] = (base, "ours")
    detectors["crawlerdetect 0.4.2"] = (here, "crawlerdetect")
    # crawlerdetect takes ~2 ms a line: it is scored on the sample only (its own fixtures, where it
    # finds every crawler and no device anyway).
    results = {label: _child(label.split()[0] + str(i), src, det, folders[:1] if det == "crawlerdetect" else folders)
               for i, (label, (src, det)) in enumerate(detectors.items())}
    rows = []
    for key in results[next(iter(results))]["scores"]:
        corpus, split = key.split("|")
        for label, r in results.items():
            if key not in r["scores"]:
                continue
            bots, found, browsers, as_bots, dropped = r["scores"][key]
            rows.append({"corpus": "sample (tests)" if corpus == "ua_corpus" else "full fixtures",
                         "split": split, "detector": label, "bots": bots,
                         "recall_%": f"{100 * found / bots:.2f}", "browsers": browsers,
                         "browsers_as_bots": as_bots,
                         "fp_%": f"{100 * as_bots / browsers:.3f}", "cpu_us_per_ua": round(r["timing"]["us_per_ua"], 1)})
    dropped = {corpus_key.split("|")[0]: v[4] for corpus_key, v in results[next(iter(results))]["scores"].items()}
    notes = [
        "recall: crawler lines classified is_bot; fp: device lines classified is_bot. Device lines that are not "
        f"user agents at all (`zr`, `5775`, markup) are left out (tests/ua_corpus.py): {dropped}.",
        "These fixtures are crawlerdetect's own regression tests, so its 100% here says nothing about "
        "other traffic; our rules were fitted on the `tune` half only, and `held_out` shows they carry over.",
        "cpu_us_per_ua: CPU time of an uncached classification of each line of the sample (process time, "
        "steadier than wall time on a shared machine), median of 5 passes (1 for crawlerdetect), one fresh "
        "process per detector. The pipeline classifies each distinct user agent once per run.",
    ]
    if base:
        times = _classify_side_by_side(repeat, quick, {"this commit": here, "base": base})
        med = {k: statistics.median(v) for k, v in times.items()}
        notes.append("steps.classify_table (the classify suite's input and child), alternating base and this "
                     f"commit, {repeat} runs each: base median {med['base']:.3f} s "
                     f"{[round(x, 3) for x in times['base']]}, this commit {med['this commit']:.3f} s "
                     f"{[round(x, 3) for x in times['this commit']]} (ratio {med['this commit'] / med['base']:.3f}).")
    return {
        "title": "Bots and browsers (recall, false positives, beside crawlerdetect)",
        "setup": ("crawlerdetect 0.4.2's fixtures: every crawler line (bots) and device lines (browsers), "
                  "split by a stable hash into the half the rules were tuned on and a held-out half."),
        "rows": rows,
        "notes": notes,
    }
