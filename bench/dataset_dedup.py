"""Copies and contradictions in the SFT / KTO / DPO sets built from the real dev data (oasst1 + FeedbackQA).

    .venv/bin/python bench/dataset_dedup.py            # prints a JSON summary
    .venv/bin/python bench/dataset_dedup.py --write    # also writes bench/results/dataset_dedup.json

Data: the oasst1 English validation trees (one row per reply; its +1/-1 emoji votes are several raters in one row,
sibling ranks give DPO pairs) and every FeedbackQA ``feedback_*.json`` (one row per rater, 2-3 raters per answer,
three candidate passages per question), read with the project's importers and ``normalise_record``, cleaned
without redaction (redaction does not change which rows are copies) and flagged by ``apply_signals``. The
datasets are built with the default policies. Counted in the written files (train + eval):

- SFT rows vs distinct (prompt, response) conversations, and the most copies of one;
- KTO rows vs distinct answers, and answers present with both labels;
- DPO pairs vs distinct (prompt, chosen, rejected), and distinct pairs also present reversed;
- the manifest's ``stats`` (merged duplicates, dropped ties and conflicts) when the builder reports them.

Runs in about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from feedback_pipeline.cleaning.clean import clean_feedback  # noqa: E402
from feedback_pipeline.cleaning.signals import apply_signals  # noqa: E402
from feedback_pipeline.datasets.build import build_kto_dataset, build_sft_dataset, read_jsonl  # noqa: E402
from feedback_pipeline.datasets.preference import build_dpo_dataset  # noqa: E402
from feedback_pipeline.ingestion.importers import read_feedbackqa, read_oasst1  # noqa: E402
from feedback_pipeline.ingestion.records import normalise_record  # noqa: E402

DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results" / "dataset_dedup.json"


def load(source: str) -> pd.DataFrame:
    records = (read_oasst1(DATA / "oasst1-en-validation" / "en-validation.jsonl") if source == "oasst1"
               else read_feedbackqa(DATA / "feedbackqa-dev"))
    return pd.DataFrame([normalise_record(r, source) for r in records if isinstance(r, dict)])


def _key(messages: list[dict]) -> str:
    return json.dumps([[m["role"], " ".join(m["content"].lower().split())] for m in messages], ensure_ascii=False)


def measure(cleaned: pd.DataFrame, root: Path) -> dict:
    sft, kto, dpo = (build_sft_dataset(cleaned, root), build_kto_dataset(cleaned, root),
                     build_dpo_dataset(cleaned, root))
    out = {}
    rows = read_jsonl(sft.file("train")) + read_jsonl(sft.file("eval"))
    copies = Counter(_key(r["messages"]) for r in rows)
    out["sft"] = {"rows": len(rows), "distinct_conversations": len(copies), "max_copies": max(copies.values()),
                  "stats": {k: v for k, v in sft.stats.items() if k not in ("bytes", "train_weight")}}
    rows = read_jsonl(kto.file("train")) + read_jsonl(kto.file("eval"))
    labels = {}
    for r in rows:
        labels.setdefault(_key(r["prompt"] + r["completion"]), set()).add(r["label"])
    out["kto"] = {"rows": len(rows), "distinct_answers": len(labels),
                  "answers_with_both_labels": sum(len(v) == 2 for v in labels.values()),
                  "liked": sum(r["label"] for r in rows), "disliked": sum(not r["label"] for r in rows),
                  "stats": {k: v for k, v in kto.stats.items() if k != "bytes"}}
    rows = read_jsonl(dpo.file("train")) + read_jsonl(dpo.file("eval"))
    pairs = Counter((_key(r["prompt"]), _key(r["chosen"]), _key(r["rejected"])) for r in rows)
    out["dpo"] = {"pairs": len(rows), "distinct_pairs": len(pairs),
                  "distinct_pairs_also_reversed": sum((p, r, c) in pairs for p, c, r in pairs),
                  "self_pairs": sum(c == r for _, c, r in pairs),
                  "by_source": dict(Counter(r["source"] for r in rows)),
                  "stats": {k: v for k, v in dpo.stats.items() if k != "bytes"}}
    return out


def main(write: bool) -> dict:
    started = time.perf_counter()
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        frames = {name: apply_signals(clean_feedback(load(name), redact=False).cleaned)
                  for name in ("oasst1", "feedbackqa")}
        frames["both"] = pd.concat(frames.values(), ignore_index=True)
        for name, frame in frames.items():
            result[name] = {"cleaned_rows": len(frame), **measure(frame, Path(tmp) / name)}
    result["seconds"] = round(time.perf_counter() - started, 1)
    if write:
        RESULTS.write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write {RESULTS.relative_to(REPO)}")
    print(json.dumps(main(parser.parse_args().write), indent=1, default=str))
