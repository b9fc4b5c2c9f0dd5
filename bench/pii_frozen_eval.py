"""Per-kind recall and precision of a PII detector on the frozen Faker-made set (``pii_frozen_eval.jsonl``).

    .venv/bin/python bench/pii_frozen_eval.py [--detector redactor|audit|legacy] [--policy all|field]
        [--data bench/pii_frozen_eval.jsonl] [--limit N] [--errors] [--out bench/results/pii_frozen_X.json]

Matching (what redaction needs): a gold entity is FOUND when a predicted span of the same kind overlaps it and
the predicted spans together cover every letter and digit of it (a span that leaves "x4587" or "łowski"
behind is a miss). A predicted span is CORRECT when it overlaps a gold entity of its kind. ``exact`` counts
same-kind predictions with exactly the gold span; ``covered`` counts gold entities whose letters and digits all
lie inside predictions of any kind (what a reader of the redacted text can no longer see).

``--policy all`` expects every labelled entity to go (the query/comment/history policy). ``--policy field``
applies each row's field policy: in a ``response`` row, public contact points (``public: true``) must be
KEPT, so they leave the gold set and a prediction on one is a false positive.
Goals (issue 11): structured kinds recall >= 0.98, name >= 0.85, address >= 0.80, precision >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import types
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable

DEFAULT_DATA = Path(__file__).with_name("pii_frozen_eval.jsonl")
KINDS = ("email", "phone", "credit_card", "iban", "ssn", "ip", "url", "name", "address")
GOALS = {**{k: 0.98 for k in ("email", "phone", "credit_card", "iban", "ssn", "ip", "url")},
         "name": 0.85, "address": 0.80}
MIN_PRECISION = 0.95

Span = tuple[str, int, int]  # kind, start, end
Detector = Callable[[str, str], list[Span]]  # (text, field) -> spans


def load(path: Path, limit: int | None = None) -> tuple[dict, list[dict]]:
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    meta = rows.pop(0)["meta"] if rows and "meta" in rows[0] else {}
    return meta, rows[:limit] if limit else rows


def detector(name: str) -> Detector:
    """The named detector as ``(text, field) -> [(kind, start, end)]``."""
    if name == "legacy":
        legacy = legacy_module().find_identifiers
        return lambda text, field: [(i.kind, i.start, i.end) for i in legacy(text)]
    if name == "redactor":
        from feedback_pipeline.cleaning.pii import find_identifiers
        return lambda text, field: [(i.kind, i.start, i.end) for i in find_identifiers(text, field=field)]
    if name == "audit":
        from feedback_pipeline.cleaning.pii_audit import audit_identifiers
        return lambda text, field: [(i.kind, i.start, i.end) for i in audit_identifiers(text)]
    raise ValueError(f"unknown detector {name!r}")


LEGACY_COMMIT = "163579e"  # the last commit with the regex-only detector (before issue 11)


def legacy_module() -> types.ModuleType:
    """``cleaning/pii.py`` as it was at ``LEGACY_COMMIT``, read from git: the baseline stays runnable."""
    source = subprocess.run(["git", "show", f"{LEGACY_COMMIT}:feedback_pipeline/cleaning/pii.py"], check=True,
                            capture_output=True, text=True, cwd=Path(__file__).parent).stdout
    module = types.ModuleType("pii_legacy")
    sys.modules["pii_legacy"] = module  # dataclasses look their module up while the class is built
    exec(compile(source, "pii_legacy.py", "exec"), module.__dict__)
    return module


def _alnum(text: str, start: int, end: int) -> set[int]:
    return {i for i in range(start, end) if text[i].isalnum()}


def _gold(row: dict, policy: str) -> list[dict]:
    if policy == "field" and row["field"] == "response":
        return [e for e in row["entities"] if not e["public"]]
    return row["entities"]


def evaluate(rows: list[dict], detect: Detector, policy: str = "all") -> tuple[dict, list[dict]]:
    tally: dict[str, Counter] = defaultdict(Counter)
    by_locale: dict[str, Counter] = defaultdict(Counter)
    errors = []
    for row in rows:
        text, gold = row["text"], _gold(row, policy)
        kept_public = [e for e in row["entities"] if e not in gold]
        pred = detect(text, row["field"] if policy == "field" else "query")
        hidden = set().union(*(_alnum(text, s, e) for _, s, e in pred)) if pred else set()
        missed, wrong = [], []
        for g in gold:
            t = tally[g["kind"]]
            t["gold"] += 1
            same = [(s, e) for k, s, e in pred if k == g["kind"] and s < g["end"] and e > g["start"]]
            need = _alnum(text, g["start"], g["end"])
            t["covered"] += need <= hidden
            found = bool(same) and need <= hidden
            t["tp"] += found
            t["exact"] += (g["start"], g["end"]) in same
            by_locale[(g["kind"], row["locale"])]["gold"] += 1
            by_locale[(g["kind"], row["locale"])]["tp"] += found
            if not found:
                missed.append((g["kind"], g["value"]))
        for kind, s, e in pred:
            t = tally[kind]
            t["pred"] += 1
            ok = any(g["kind"] == kind and s < g["end"] and e > g["start"] for g in gold)
            t["pred_ok"] += ok
            if not ok:
                public = any(s < p["end"] and e > p["start"] for p in kept_public)
                wrong.append((kind, text[s:e] + (" (public, kept by policy)" if public else "")))
        if missed or wrong:
            errors.append({"id": row["id"], "text": text, "missed": missed, "false_positive": wrong})
    return summarise(tally, by_locale), errors


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def summarise(tally: dict[str, Counter], by_locale: dict) -> dict:
    kinds = [k for k in KINDS if k in tally] + sorted(k for k in tally if k not in KINDS)
    per_kind = {k: {"gold": tally[k]["gold"], "pred": tally[k]["pred"], "recall": _ratio(tally[k]["tp"], tally[k]["gold"]),
                    "precision": _ratio(tally[k]["pred_ok"], tally[k]["pred"]),
                    "exact": _ratio(tally[k]["exact"], tally[k]["gold"]),
                    "covered": _ratio(tally[k]["covered"], tally[k]["gold"])} for k in kinds}
    locales = defaultdict(dict)
    for (kind, locale), c in sorted(by_locale.items()):
        locales[kind][locale] = _ratio(c["tp"], c["gold"])
    return {"per_kind": per_kind, "recall_by_locale": dict(locales)}


def goals_missed(summary: dict) -> list[str]:
    missed = []
    for kind, goal in GOALS.items():
        m = summary["per_kind"].get(kind)
        if m is None or (m["recall"] or 0) < goal:
            missed.append(f"{kind} recall")
        if m is not None and m["precision"] is not None and m["precision"] < MIN_PRECISION:
            missed.append(f"{kind} precision")
    return missed


def table(summary: dict) -> str:
    lines = ["| kind | gold | predicted | recall | precision | exact span | covered (any kind) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    show = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for kind, m in summary["per_kind"].items():
        lines.append(f"| {kind} | {m['gold']} | {m['pred']} | {show(m['recall'])} | {show(m['precision'])} | "
                     f"{show(m['exact'])} | {show(m['covered'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", default="redactor", choices=["redactor", "audit", "legacy"])
    parser.add_argument("--policy", default="all", choices=["all", "field"])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=None, help="only the first N texts (smoke test)")
    parser.add_argument("--errors", action="store_true", help="print every text with a miss or a false positive")
    parser.add_argument("--out", type=Path, default=None, help="write the summary as JSON here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    meta, rows = load(args.data, args.limit)
    detect = detector(args.detector)
    started = time.perf_counter()
    summary, errors = evaluate(rows, detect, args.policy)
    seconds = time.perf_counter() - started
    if args.errors:
        for err in errors:
            print(json.dumps(err, ensure_ascii=False))
        print()
    result = {"detector": args.detector, "policy": args.policy, "data": args.data.name, "data_meta": meta,
              "texts": len(rows), "seconds": round(seconds, 2), **summary, "goals_missed": goals_missed(summary)}
    print(f"{args.detector} / policy {args.policy}: {len(rows)} texts in {seconds:.1f} s, "
          f"{len(errors)} with an error\n\n{table(summary)}\n\ngoals missed: {result['goals_missed']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
