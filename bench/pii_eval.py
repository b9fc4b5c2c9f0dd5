"""Entity-level precision and recall of ``feedback_pipeline.cleaning.pii`` on a hand-labelled set.

    .venv/bin/python bench/pii_eval.py [--data bench/pii_labelled.jsonl] [--errors] [--check]

Each line of the data is ``{"text": ..., "entities": [{"kind": ..., "value": ...}]}``. A prediction counts as a
true positive when its kind and its value (whitespace-stripped) equal a gold entity of the same text; each gold
entity matches at most once. ``covered`` is the share of gold entities whose characters all end up inside some
predicted span of any kind: what redaction actually hides, even when the kind or the exact span is off.

Labelling conventions: phone values exclude extensions ("ext. 22"); URLs exclude trailing sentence punctuation
and surrounding brackets; handles include the "@" (and the instance of a fediverse handle); IPs exclude ports
and prefix lengths; obfuscated emails ("jane [at] x [dot] com") span the whole written form; a bare domain
without a path ("regex101.com") is not a URL; names are private people only, with or without a cue.
``--check`` exits 1 when a structured kind (all but ``name``) has recall below 0.95.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from feedback_pipeline.cleaning.pii import PRIORITY, find_identifiers

DEFAULT_DATA = Path(__file__).with_name("pii_labelled.jsonl")
STRUCTURED = tuple(kind for kind in PRIORITY if kind != "name")
MIN_RECALL = 0.95


def load(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _covered(text: str, value: str, spans: list[tuple[int, int]], used: set[int]) -> bool:
    """Whether the next unused occurrence of ``value`` in ``text`` lies fully inside one predicted span."""
    start = text.find(value)
    while start in used:
        start = text.find(value, start + 1)
    if start < 0:
        return False
    used.add(start)
    return any(s <= start and start + len(value) <= e for s, e in spans)


def evaluate(rows: list[dict]) -> tuple[dict, list[dict]]:
    tally = {kind: Counter() for kind in PRIORITY}
    errors = []
    for row in rows:
        predicted = find_identifiers(row["text"])
        pred = Counter((p.kind, p.value.strip()) for p in predicted)
        gold = Counter((e["kind"], e["value"].strip()) for e in row["entities"])
        spans, used = [(p.start, p.end) for p in predicted], set()
        for (kind, value), n in gold.items():
            tally[kind]["gold"] += n
            tally[kind]["tp"] += min(n, pred[(kind, value)])
            tally[kind]["covered"] += sum(_covered(row["text"], value, spans, used) for _ in range(n))
        for (kind, _), n in pred.items():
            tally[kind]["pred"] += n
        missed, extra = gold - pred, pred - gold
        if missed or extra:
            errors.append({"text": row["text"], "missed": sorted(missed), "extra": sorted(extra)})
    return summarise(tally), errors


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def summarise(tally: dict[str, Counter]) -> dict:
    per_kind = {kind: {"gold": c["gold"], "pred": c["pred"], "tp": c["tp"],
                       "precision": _ratio(c["tp"], c["pred"]), "recall": _ratio(c["tp"], c["gold"]),
                       "covered": _ratio(c["covered"], c["gold"])} for kind, c in tally.items()}
    total = sum((tally[k] for k in STRUCTURED), Counter())
    return {"per_kind": per_kind, "structured_micro": {
        "gold": total["gold"], "pred": total["pred"], "tp": total["tp"],
        "precision": _ratio(total["tp"], total["pred"]), "recall": _ratio(total["tp"], total["gold"]),
        "covered": _ratio(total["covered"], total["gold"])}}


def table(summary: dict) -> str:
    fmt = "{:<16}{:>6}{:>6}{:>6}{:>11}{:>9}{:>9}"
    lines = [fmt.format("kind", "gold", "pred", "tp", "precision", "recall", "covered")]
    rows = list(summary["per_kind"].items()) + [("structured", summary["structured_micro"])]
    for kind, m in rows:
        show = ["-" if m[k] is None else f"{m[k]:.3f}" for k in ("precision", "recall", "covered")]
        lines.append(fmt.format(kind, m["gold"], m["pred"], m["tp"], *show))
    return "\n".join(lines)


def failing_kinds(summary: dict) -> list[str]:
    return [k for k in STRUCTURED if (summary["per_kind"][k]["recall"] or 0.0) < MIN_RECALL]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="labelled JSONL file")
    parser.add_argument("--errors", action="store_true", help="print every text with a miss or a false positive")
    parser.add_argument("--check", action="store_true", help=f"exit 1 if a structured recall < {MIN_RECALL}")
    args = parser.parse_args(argv)
    rows = load(args.data)
    summary, errors = evaluate(rows)
    if args.errors:
        for err in errors:
            print(json.dumps(err, ensure_ascii=False))
        print()
    print(f"{len(rows)} texts, {sum(len(r['entities']) for r in rows)} entities, {len(errors)} texts with errors\n")
    print(table(summary))
    print(json.dumps({"texts": len(rows), **summary, "below_min_recall": failing_kinds(summary)}, indent=2))
    return 1 if args.check and failing_kinds(summary) else 0


if __name__ == "__main__":
    sys.exit(main())
