"""Are the improvement suggestions worth reading? Judged against FeedbackQA raters' own written explanations.

    .venv/bin/python bench/suggestions_feedbackqa.py [--work /tmp/suggestions_bench] [--top 10]

Imports FeedbackQA (``feedback_valid.json`` of 4 domains + WHO ``feedback_train.json``, one record per rater) into a
temporary SQLite store and materializes the real assets (raw_feedback -> cleaned_feedback ->
feedback_quality_report -> error_patterns -> improvement_suggestions, default configs), twice:

- **blind**: the raters' comments are withheld from the store, so no suggestion can quote them; the comments are
  then used only to judge. This is the honest test.
- **with comments**: as the pipeline really runs; suggestions may cite comment words, so judging those words by
  the same comments is circular (reported, marked as such).

Judgement (automatic, lexicon fixed before the first run): each distinguishing feature a suggestion names maps to
words a rater uses when complaining about it (below). For the finding's disliked rows, the share of comments that
use those words is compared with the share among all other disliked rows: *supported* when higher with one-sided
Fisher p < 0.05, *weak* when higher but not significant, *not supported* otherwise; a suggestion that names no
distinguishing feature has *no specific claim*. A second, looser reading (added after the first run showed that
nearly half of all FeedbackQA complaints are "does not address the question", which makes "more than other
disliked" a test of specificity): the same share against the comments on the finding's own *liked* answers (same
topic, type or segment side), *supported* with one-sided Fisher p < 0.05. Two comments per finding are printed for
a manual reading.
Then the same analysis runs on oasst1 (no written explanations there: top 10 listed, not judged).
Writes bench/results/suggestions_feedbackqa.md. The embeddings cache lives under --work and is kept between runs.
"""

import argparse
import os
import re
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import dagster as dg
import pandas as pd
from scipy import stats

from feedback_pipeline.definitions import build_resources
from feedback_pipeline.defs import analysis, cleaning, ingestion
from feedback_pipeline.ingestion.importers import import_records, read_feedbackqa, read_oasst1
from feedback_pipeline.settings import load_settings
from feedback_pipeline.store.repository import FeedbackStore

ROOT = Path(__file__).resolve().parents[1]
MANUAL = "<!-- manual reading below: written by hand, kept when the bench reruns -->"
SHARED = ROOT.parent / "shared" / "data"

# What a rater writes when the feature is the problem. Fixed before looking at any result.
LEXICON = {
    "length+": r"\b(?:too long|lengthy|long|wordy|verbose|too much|a lot of (?:information|text)|unnecessary|"
               r"extra information|excessive|overwhelming|rambl\w*)\b",
    "length-": r"\b(?:too short|short|brief|more detail\w*|more information|vague|incomplete|not enough|lacks?|"
               r"lacking|missing|general|generic|partial\w*)\b",
    "query_similarity": r"\b(?:irrelevant|not relevant|unrelated|not related|(?:does ?n[o']t|did ?n[o']t|not) "
                        r"(?:answer|address|respond)\w*|off[- ]topic|nothing to do with|different (?:question|topic)|"
                        r"wrong|instead|not about|no mention|doesn'?t mention|does not mention)\b",
    "refusal": r"\b(?:refus\w*|won'?t|can'?t help|declin\w*)\b",
    "truncated": r"\b(?:cut off|incomplete|unfinished|ends abruptly|truncated)\b",
    "no_context": r"\b(?:no source|no link|no reference|source)\b",
}
LEXICON["too_short"] = LEXICON["length-"]
LEXICON["ignores_question"] = LEXICON["query_similarity"]


def records(dataset: str, blind: bool):
    if dataset == "feedbackqa":
        for r in read_feedbackqa(SHARED / "feedbackqa-dev"):
            yield {**r, "comment": None} if blind else r
    else:
        yield from read_oasst1(SHARED / "oasst1-en-validation" / "en-validation.jsonl")


def run_assets(work: Path, dataset: str, blind: bool) -> dict:
    """Fresh store and reports under ``work``; the embeddings cache under ``work/cache`` survives."""
    for name in ("feedback.db", "reports", "storage"):
        path = work / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    settings = load_settings({"FEEDBACK_DATA_DIR": str(work)})
    store = FeedbackStore(settings.feedback_db_url)
    store.migrate()
    report = import_records(store, records(dataset, blind), dataset)
    started = time.perf_counter()
    result = dg.materialize([ingestion.raw_feedback, cleaning.cleaned_feedback, analysis.feedback_quality_report,
                             analysis.error_patterns, analysis.improvement_suggestions],
                            resources=build_resources(settings))
    assert result.success
    return {"imported": report, "seconds": time.perf_counter() - started,
            "cleaned": result.output_for_node("cleaned_feedback"),
            "patterns": result.output_for_node("error_patterns"),
            "quality": result.output_for_node("feedback_quality_report"),
            "markdown": (work / "reports" / "improvement_suggestions.md").read_text(encoding="utf-8")}


def suggestions_of(run: dict):
    # The same function with the same inputs as the improvement_suggestions asset.
    from feedback_pipeline.analysis.suggestions import suggest

    p = run["patterns"]
    return suggest(run["cleaned"], p["patterns"], p["error_summary"], run["quality"]["tables"], flags=p["flags"],
                   similarity=p["similarity"])


def finding_rows(s, run: dict, label: str = "disliked") -> pd.Index:
    """Index of the ``label`` rows a suggestion is about."""
    df = run["cleaned"]
    mask = df["label"] == label
    if s.kind == "failure_cluster":
        cluster = next(c for c in run["patterns"]["patterns"].clusters if c.id == s.metrics["cluster_id"])
        return df.index[mask & df["id"].isin(cluster.ids if label == "disliked" else cluster.liked_ids)]
    if s.kind == "error_type":
        flags = run["patterns"]["flags"][s.target].reindex(df.index).fillna(False).astype(bool)
        return df.index[mask & flags]
    if s.kind == "length_gap":
        m = s.metrics
        length = df["response"].fillna("").astype(str).str.strip().str.len()
        side = length < m["cut_chars"] if m["ratio"] > 1 else length > m["cut_chars"]
        return df.index[mask & (df[m["column"]].astype(str) == str(m["segment"])) & side]
    return df.index[:0]


def claims(s) -> list[tuple[str, str]]:
    """(feature, regex) pairs for what the suggestion says goes wrong."""
    if s.kind == "error_type":
        return [(s.target, LEXICON[s.target])] if s.target in LEXICON else []
    if s.kind == "length_gap":
        return [("length" + ("-" if s.metrics["ratio"] > 1 else "+"),
                 LEXICON["length-" if s.metrics["ratio"] > 1 else "length+"])]
    out = []
    for d in s.metrics.get("differences", []):
        if d["feature"] == "length":
            key = "length+" if d["disliked"] > d["liked"] else "length-"
            out.append((key, LEXICON[key]))
        elif d["feature"] == "comment_terms":
            out.append(("comment_terms (circular)", r"\b(?:" + "|".join(re.escape(t) for t in d["terms"]) + r")\b"))
        elif d["feature"] in LEXICON:
            out.append((d["feature"], LEXICON[d["feature"]]))
    return out


def _share(hits: pd.Series, rows: pd.Index) -> tuple[int, int]:
    return int(hits[rows].sum()), len(rows)


def _greater(a: tuple[int, int], b: tuple[int, int]) -> float:
    (k1, n1), (k2, n2) = a, b
    if not n1 or not n2:
        return 1.0
    return float(stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="greater").pvalue)


def judge(s, comments: pd.Series, rows: pd.Index, disliked: pd.Index, liked_rows: pd.Index) -> dict:
    """``rows``: the finding's disliked rows; ``liked_rows``: its liked ones (same topic / type / segment side)."""
    found = claims(s)
    if not found:
        return {"verdict": "no specific claim", "vs_liked": "-", "detail": "", "examples": _examples(comments, rows)}
    pattern = re.compile("|".join(f"(?:{rx})" for _, rx in found), re.IGNORECASE)
    hits = comments.fillna("").map(lambda c: bool(pattern.search(c)))
    mine, others, liked = _share(hits, rows), _share(hits, disliked.difference(rows)), _share(hits, liked_rows)
    p = _greater(mine, others)
    share, base = mine[0] / max(mine[1], 1), others[0] / max(others[1], 1)
    verdict = "supported" if share > base and p < 0.05 else "weak" if share > base else "not supported"
    p_liked = _greater(mine, liked)
    liked_share = liked[0] / liked[1] if liked[1] else float("nan")
    vs_liked = ("supported" if share > liked_share and p_liked < 0.05 else "not supported") if liked[1] else "-"
    return {"verdict": verdict, "vs_liked": vs_liked, "examples": _examples(comments, rows, pattern),
            "detail": f"{', '.join(f for f, _ in found)}: {mine[0]}/{mine[1]} = {share:.0%} of its disliked comments "
                      f"vs {base:.0%} of other disliked (p={p:.2g}) vs {liked_share:.0%} of its liked "
                      f"(n={liked[1]}, p={p_liked:.2g})"}


def _examples(comments: pd.Series, rows: pd.Index, pattern=None, k: int = 2) -> list[str]:
    texts = [str(c) for c in comments[rows].dropna() if str(c).strip()]
    chosen = ([t for t in texts if pattern.search(t)][:1] if pattern else []) + texts
    return [" ".join(t.split())[:200] for t in dict.fromkeys(chosen)][:k]


def table(suggestions, verdicts=None) -> list[str]:
    head = "| # | kind | status | excess (95% CI) | suggestion |" + (
        " support vs other disliked | support vs its liked | method detail |" if verdicts else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for i, s in enumerate(suggestions, start=1):
        m = s.metrics
        ex = f"{m['excess_dislikes']:+.1f} ({m['excess_low']:+.1f} to {m['excess_high']:+.1f})" \
            if "excess_dislikes" in m else "-"
        cells = [str(i), s.kind, s.status, ex, s.title.replace("|", "/")]
        if verdicts:
            cells += [verdicts[i - 1]["verdict"], verdicts[i - 1]["vs_liked"], verdicts[i - 1]["detail"]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(work: Path, top: int) -> None:
    work.mkdir(parents=True, exist_ok=True)
    truth = pd.Series({f"{r['user_id']}|{r['session_id']}": r["comment"] for r in records("feedbackqa", False)})
    out = ["# Suggestions judged against FeedbackQA raters' explanations", "",
           "Produced by `.venv/bin/python bench/suggestions_feedbackqa.py` (see its docstring for the method).", ""]
    counts = {}
    for mode, blind in (("blind", True), ("with comments", False)):
        run = run_assets(work / "feedbackqa", "feedbackqa", blind)
        df = run["cleaned"]
        comments = (df["user_id"].astype(str) + "|" + df["session_id"].astype(str)).map(truth)
        comments.index = df.index
        found = suggestions_of(run)[:top]
        disliked = df.index[df["label"] == "disliked"]
        verdicts = [judge(s, comments, finding_rows(s, run), disliked, finding_rows(s, run, "liked")) for s in found]
        counts[mode] = {"vs other disliked": pd.Series([v["verdict"] for v in verdicts]).value_counts().to_dict(),
                        "vs its liked": pd.Series([v["vs_liked"] for v in verdicts]).value_counts().to_dict()}
        rated = df["label"].isin(["liked", "disliked"])
        out += [f"## FeedbackQA, {mode} ({int(rated.sum())} rated answers, {len(disliked)} disliked, "
                f"{run['seconds']:.0f} s for the assets)", "", f"Verdicts: {counts[mode]}", ""]
        out += table(found, verdicts) + ["", "Comments on each finding's disliked answers (first matching the "
                                         "claim, if any):", ""]
        for i, (s, v) in enumerate(zip(found, verdicts), start=1):
            out += [f"{i}. {s.title}"] + [f"   - \"{e}\"" for e in v["examples"]]
        out += ["", "<details><summary>The asset's report</summary>", "", run["markdown"], "</details>", ""]
        print(mode, counts[mode], flush=True)
    run = run_assets(work / "oasst1", "oasst1", False)
    found = suggestions_of(run)[:top]
    out += [f"## oasst1 ({int(run['cleaned']['label'].isin(['liked', 'disliked']).sum())} rated answers, "
            f"{run['seconds']:.0f} s): top {top}, not judged (no written explanations)", ""] + table(found)
    out += ["", "<details><summary>The asset's report</summary>", "", run["markdown"], "</details>", ""]
    path = ROOT / "bench" / "results" / "suggestions_feedbackqa.md"
    kept = path.read_text(encoding="utf-8").partition(MANUAL)[2] if path.exists() else ""
    summary = ["## Summary (automatic)", ""] + [f"- FeedbackQA {mode}: {c}" for mode, c in counts.items()] + [""]
    path.write_text("\n".join(out[:4] + summary + out[4:] + [MANUAL]) + (kept or "\n"), encoding="utf-8")
    print(path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/suggestions_bench"))
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    main(args.work, args.top)
