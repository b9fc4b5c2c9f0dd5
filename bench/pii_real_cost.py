"""What redaction costs on real answers, and what the audit detector still finds in datasets built from them.

    .venv/bin/python bench/pii_real_cost.py [--data ../shared/data] [--out bench/results/pii_real_cost.json]

1. Distinct liked answers (rating > 0) of oasst1 (en validation) and FeedbackQA (dev): how many change under the
   old regex detector (git ``pii_frozen_eval.LEGACY_COMMIT``), under the new detector with the user policy
   (everything goes) and under the new answer policy (``field="response"``), with the new policy's counts by kind.
   Queries: how many change under the old and the new detector (user policy).
2. The oasst1 feedback cleaned (``clean_feedback``), built into the SFT and KTO sets, and audited
   (``pii_audit.audit_records``): identifiers by kind that presidio, and the redactor itself, still find.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd

from feedback_pipeline.cleaning.clean import clean_feedback
from feedback_pipeline.cleaning.pii import find_identifiers
from feedback_pipeline.cleaning.pii_audit import audit_records
from feedback_pipeline.datasets.build import SFTPolicy, build_kto_dataset, build_sft_dataset, read_jsonl
from feedback_pipeline.ingestion.importers import read_feedbackqa, read_oasst1

sys.path.insert(0, str(Path(__file__).parent))
from pii_frozen_eval import legacy_module  # noqa: E402


def load(data: Path) -> dict[str, pd.DataFrame]:
    oasst = [r for r in read_oasst1(data / "oasst1-en-validation" / "en-validation.jsonl") if isinstance(r, dict)]
    return {"oasst1": pd.DataFrame(oasst), "feedbackqa": pd.DataFrame(list(read_feedbackqa(data / "feedbackqa-dev")))}


def answer_cost(frame: pd.DataFrame, legacy) -> dict:
    liked = frame[frame["rating"].astype(float) > 0]
    answers, queries = liked["response"].dropna().unique(), frame["query"].dropna().unique()
    kinds: Counter = Counter()
    changed = Counter()
    for text in answers:
        changed["old_detector"] += bool(legacy.find_identifiers(text))
        changed["new_user_policy"] += bool(find_identifiers(text, "query"))
        found = find_identifiers(text, "response")
        changed["new_answer_policy"] += bool(found)
        kinds.update(i.kind for i in found)
    queries_changed = {"old_detector": sum(bool(legacy.find_identifiers(q)) for q in queries),
                       "new_detector": sum(bool(find_identifiers(q, "query")) for q in queries)}
    return {"liked_answers": len(answers), "liked_answers_changed": dict(changed),
            "answer_policy_redactions_by_kind": dict(kinds.most_common()),
            "queries": len(queries), "queries_changed": queries_changed}


def audit_built(frame: pd.DataFrame) -> dict:
    cleaned = clean_feedback(frame).cleaned
    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, built in (("sft", build_sft_dataset(cleaned, Path(tmp), SFTPolicy(min_train_examples=1))),
                            ("kto", build_kto_dataset(cleaned, Path(tmp), min_train_examples=1))):
            records = read_jsonl(built.file("train")) + read_jsonl(built.file("eval"))
            result = audit_records(records)
            found[name] = {"records": len(records), "audit": dict(result["audit"]),
                           "redactor": dict(result["redactor"])}
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    frames, legacy, started = load(args.data), legacy_module(), time.perf_counter()
    result = {name: answer_cost(frame, legacy) for name, frame in frames.items()}
    result["oasst1_datasets_audit"] = audit_built(frames["oasst1"])
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
