"""Rule-based error types of rated answers (refusal, truncated, too short ...) and how much each one hurts.

Rules are cheap and readable, so an analyst can check any flag by eye; the summary then shows whether a
type matters: the dislike rate of flagged answers against all others, each with a Wilson interval.
A type that cannot be checked on a frame (no embeddings, no latencies) gets no column, never a column of
False that would read as "checked, nothing found"; the summary lists it as not checked.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pandas as pd

from feedback_pipeline.analysis.quality import fmt_ci, fmt_pct, md_cell, md_table
from feedback_pipeline.analysis.stats import compare_rates, wilson_interval

ERROR_TYPES = ("refusal", "truncated", "too_short", "wrong_language", "repetition", "ignores_question",
               "tool_failure", "slow")
SUMMARY_COLUMNS = ["type", "checked", "n_flagged", "n_disliked_flagged", "dislike_rate_flagged", "ci_low_flagged",
                   "ci_high_flagged", "n_unflagged", "dislike_rate_unflagged", "ci_low_unflagged",
                   "ci_high_unflagged", "p_value", "examples", "example_ids"]

_CANT = r"(?:can'?t|cannot|can not|won'?t(?: be able to)?|will not(?: be able to)?|am unable to|'?m unable to|" \
        r"am not able to|'?m not able to)"
_REFUSAL = re.compile(
    r"\bsorry,?\s+(?:but\s+)?(?:as an ai[^,.]{0,30},?\s+)?i\s*" + _CANT
    + r"|\bas an? (?:ai|artificial intelligence)(?: language model| assistant| model)?,?\s+i\s*" + _CANT
    # A plain "I can't" refuses only with a verb of helping: "I can't believe how good this is" is praise,
    # and "I cannot help but notice" is not a refusal either.
    + r"|\bi\s*" + _CANT + r"\s+(?:help|assist|provide|fulfil|fulfill|comply|answer|share|create|generate|write|"
      r"engage|support|give|do that|complete|produce|participate)\b(?!\s+but\b)"
    + r"|\bi\s+(?:must|have to|need to)\s+(?:decline|refuse)\b",
    re.IGNORECASE,
)
_CODE_BLOCK = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*`", re.DOTALL)
# Lines that end without a full stop by convention: list items, quotes, tables, headings, links, code.
_NOT_PROSE = re.compile(r"^(?:[-*+>|#]|\d+[.)]\s|\[\d+\])|https?://|\[URL\]|[={}<>]")
_DANGLING = {"the", "a", "an", "and", "or", "to", "of", "with", "for", "in", "that", "is", "are", "but", "because"}
_WORD = re.compile(r"[^\W\d_]+")

# Frequent function words, ten or so per language, plus greetings: enough to tell the languages apart.
_STOP = {lang: set(words.split()) for lang, words in {
    "en": "the and is are was of to in that it with for you this be have not on what how can your which would they "
          "a i do does did my me we who why will there any an by from if or as at about thanks please",
    "de": "der die das und ist nicht ein eine ich zu mit sie es den dem auf für sich auch wie kann wir du aber oder "
          "wenn noch sind werden von im hallo danke",
    "es": "el la los las y es en que de un una por para con no se su como más pero lo del al qué cómo está son hay "
          "muy este esta también hola gracias",
    "fr": "le la les et est un une des du en que qui pour pas dans ce il je vous nous sur avec au mais ou sont être "
          "comment pourquoi cette bonjour merci",
    "it": "il lo la gli le e è di che un una per non con sono si mi ma come anche della del nel questo questa più "
          "perché ho cosa tra qual dei delle alla nella uno ciao grazie",
    "pt": "o a os as e é de do da dos das que um uma para com não em no na se por mais como mas você isso são está "
          "ou eu muito olá obrigado",
}.items()}
# Words English shares with the others ("a", "do", "no", "come", "con") and single letters (variables, "e.g.")
# would make English text look Portuguese or Italian: they count for English only.
_STOP = {lang: words if lang == "en" else {w for w in words - _STOP["en"] - {"a", "do", "no", "come", "con", "son"}
                                           if len(w) > 1 or not w.isascii()} for lang, words in _STOP.items()}
_SCRIPTS = {"ru": r"[\u0400-\u04ff]", "ko": r"[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]", "ja": r"[\u3040-\u30ff]",
            "zh": r"[\u3400-\u4dbf\u4e00-\u9fff]", "ar": r"[\u0600-\u06ff]", "el": r"[\u0370-\u03ff]",
            "he": r"[\u0590-\u05ff]", "hi": r"[\u0900-\u097f]", "th": r"[\u0e00-\u0e7f]"}
# A query naming a language may well ask for an answer in it ("translate this into German").
_ASKS_LANGUAGE = re.compile(r"translat|übersetz|tradu|english|german|deutsch|spanish|español|french|français|"
                            r"italian|portugu|russian|chinese|japanese|korean|arabic|greek|hebrew|hindi|thai|"
                            r"language", re.IGNORECASE)


def is_refusal(text: str, head: int = 500) -> bool:
    # Only the opening counts: an answer that helps for 500 characters first is not a refusal.
    return bool(_REFUSAL.search(str(text)[:head].replace("\u2019", "'")))


def is_truncated(text: str, min_chars: int = 200) -> bool:
    """Unclosed code fence, a trailing "..." / "…", or a long answer stopping mid-sentence."""
    text = str(text).rstrip()
    if _open_fence(text) or text.endswith(("...", "…")):
        return True
    if len(text) < min_chars:
        return False
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    words = _WORD.findall(lines[-1].lower())
    if words and words[-1] in _DANGLING and text[-1].isalpha():
        return True  # "... and then you need to" cuts off even inside a list item
    # One-word lines ("end", a name) need no full stop either, nor do poems and lyrics: a missing full
    # stop counts only from an author who otherwise uses them.
    prose = [line for line in lines[:-1] if len(line.split()) >= 4 and not _NOT_PROSE.search(line)]
    punctuates = not prose or sum(line[-1] in ".!?:;)\"'”" for line in prose) * 2 >= len(prose)
    last_is_prose = len(words) >= 4 and not _NOT_PROSE.search(lines[-1])
    return punctuates and last_is_prose and (text[-1].isalnum() or text[-1] in ",:-–(")


def _open_fence(text: str) -> bool:
    """True when a ``` code block is left open; a fence closes only with at least as many backticks."""
    fence = None
    for line in text.splitlines():
        match = re.match(r"\s*(`{3,})(.*)$", line)
        if not match:
            continue
        ticks, rest = match.groups()
        if fence is None:
            fence = None if "```" in rest else len(ticks)  # ```code``` on one line opens nothing
        elif len(ticks) >= fence and not rest.strip():
            fence = None
    return fence is not None


def detect_language(text: str) -> str | None:
    """ISO code of ``text``'s language from its script or function words, or None when unsure. Code is ignored."""
    prose = _CODE_BLOCK.sub(" ", str(text))
    letters = sum(ch.isalpha() for ch in prose)
    if letters == 0:
        return None
    counts = {lang: len(re.findall(pattern, prose)) for lang, pattern in _SCRIPTS.items()}
    if counts["ja"] and counts["ja"] >= 0.1 * (counts["ja"] + counts["zh"]):
        counts["ja"] += counts.pop("zh")  # Japanese mixes kana with kanji; Chinese has no kana
    script, hits = max(counts.items(), key=lambda item: item[1])
    if hits >= 0.3 * letters:
        return script
    tokens = _WORD.findall(prose.lower())
    scores = sorted(((sum(t in words for t in tokens), lang) for lang, words in _STOP.items()), reverse=True)
    (best, lang), (second, _) = scores[0], scores[1]
    return lang if best >= 2 and best >= 1.5 * second and best >= 0.1 * len(tokens) else None


def repetition_ratio(text: str, n: int = 4) -> float:
    """Share of repeated word ``n``-grams or repeated lines in the prose (code removed), whichever is larger."""
    prose = _CODE_BLOCK.sub(" ", str(text)).lower()
    words = re.findall(r"\w+", prose)
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    ratio = 1 - len(set(grams)) / len(grams) if len(grams) >= 16 else 0.0
    lines = [line.strip() for line in prose.splitlines() if len(line.strip()) >= 10]
    if len(lines) >= 4:
        ratio = max(ratio, 1 - len(set(lines)) / len(lines))
    return ratio


def _tool_error(metadata: object, tools: object) -> bool:
    if isinstance(metadata, dict) and any(metadata.get(k) for k in ("tool_error", "tool_errors", "tool_failed")):
        return True
    calls = tools if isinstance(tools, (list, tuple, np.ndarray)) else []
    return any(isinstance(c, dict) and (c.get("error") or str(c.get("status", "")).lower() in
                                        {"error", "failed", "failure", "timeout"}) for c in calls)


def classify_errors(
    df: pd.DataFrame,
    embeddings_for: Callable[[list[str]], np.ndarray] | None = None,
    similarity: np.ndarray | None = None,
    min_similarity: float = 0.1,
    min_chars: int = 20,
    short_ratio: float = 0.2,
    repetition_threshold: float = 0.3,
    slow_ms: float | None = None,
    slow_quantile: float = 0.9,
) -> pd.DataFrame:
    """One boolean column per checkable type in :data:`ERROR_TYPES`, aligned with ``df.index``.

    too_short: under ``min_chars`` or under ``short_ratio`` x the median length of liked answers.
    ignores_question: query-response cosine below ``min_similarity``, from ``similarity`` (one value per
    row) or from ``embeddings_for``; 0.1 fits all-MiniLM-L6-v2, where on oasst1 4.6% of rated answers fall
    below it and 47% of those are disliked (20% of the rest). tool_failure: a recorded tool error, or tools
    were called and the answer was disliked (so its dislike rate is high by construction). slow: latency
    above ``slow_ms``, or else above the ``slow_quantile`` of the frame's latencies (needs 10 of them).
    """
    query, response = df["query"].fillna("").astype(str), df["response"].fillna("").astype(str)
    length = response.str.strip().str.len()
    liked_lengths = length[df["label"] == "liked"]
    short_limit = max(min_chars, short_ratio * liked_lengths.median()) if len(liked_lengths) >= 10 else min_chars
    flags = {
        "refusal": response.map(is_refusal),
        "truncated": response.map(is_truncated),
        "too_short": length < short_limit,
        "wrong_language": pd.Series([_wrong_language(q, r) for q, r in zip(query, response)], index=df.index),
        "repetition": response.map(repetition_ratio) >= repetition_threshold,
    }
    if similarity is None and embeddings_for is not None and len(df):
        similarity = query_response_similarity(df, embeddings_for)
    if similarity is not None:
        # Nullable: a NaN similarity (a row left out of an embedding sample) is unchecked, not "fine".
        sim = np.asarray(similarity, dtype=float)
        flags["ignores_question"] = pd.Series(
            pd.array([None if np.isnan(v) else bool(v < min_similarity) for v in sim], dtype="boolean"),
            index=df.index)
    if "tools_called" in df or "metadata" in df:
        tools = df["tools_called"] if "tools_called" in df else pd.Series([[]] * len(df), index=df.index)
        meta = df["metadata"] if "metadata" in df else pd.Series([{}] * len(df), index=df.index)
        used = tools.map(lambda t: isinstance(t, (list, tuple, np.ndarray)) and len(t) > 0)
        errors = pd.Series([_tool_error(m, t) for m, t in zip(meta, tools)], index=df.index)
        flags["tool_failure"] = errors | (used & (df["label"] == "disliked"))
    latency = pd.to_numeric(df["latency_ms"], errors="coerce") if "latency_ms" in df else pd.Series(dtype=float)
    limit = slow_ms if slow_ms is not None else (latency.quantile(slow_quantile) if latency.count() >= 10 else None)
    if limit is not None and latency.count():
        flags["slow"] = latency > limit
    return pd.DataFrame({k: flags[k] if k == "ignores_question" else flags[k].astype(bool)
                         for k in ERROR_TYPES if k in flags}, index=df.index)


def query_response_similarity(df: pd.DataFrame, embeddings_for: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """Cosine similarity of each row's query and response embeddings."""
    q, r = (np.asarray(embeddings_for(df[column].fillna("").astype(str).tolist()), dtype=float)
            for column in ("query", "response"))
    norms = np.linalg.norm(q, axis=1) * np.linalg.norm(r, axis=1)
    return (q * r).sum(axis=1) / np.where(norms == 0, 1.0, norms)


def _wrong_language(query: str, response: str) -> bool:
    if _ASKS_LANGUAGE.search(query):
        return False
    asked, answered = detect_language(query), detect_language(response)
    return asked is not None and answered is not None and asked != answered


def _clip(text: object, limit: int = 160) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def error_type_summary(df: pd.DataFrame, flags: pd.DataFrame, max_examples: int = 3) -> pd.DataFrame:
    """Per type, over rated rows: how many are flagged, and dislike rate flagged vs. unflagged (Wilson 95%).

    ``p_value`` is Fisher's exact test of the two rates. Examples are disliked flagged answers first, clipped
    to 160 characters (text is redacted upstream). Types absent from ``flags`` appear with ``checked`` False;
    rows whose flag is NA (left out of an embedding sample) count on neither side.
    """
    rated = df["label"].isin(["liked", "disliked"])
    disliked = df["label"] == "disliked"
    rows = []
    for kind in ERROR_TYPES:
        if kind not in flags:
            rows.append({"type": kind, "checked": False, "examples": [], "example_ids": []})
            continue
        column = flags[kind].reindex(df.index)
        hit, checked = column.fillna(False).astype(bool), rated & column.notna()  # NA: not checked (sampled out)
        k1, n1 = int((hit & checked & disliked).sum()), int((hit & checked).sum())
        k2, n2 = int((~hit & checked & disliked).sum()), int((~hit & checked).sum())
        (lo1, hi1), (lo2, hi2) = wilson_interval(k1, n1), wilson_interval(k2, n2)
        ranked = df[hit & checked].assign(_bad=disliked[hit & checked]).sort_values("_bad", ascending=False, kind="stable")
        rows.append({
            "type": kind, "checked": True, "n_flagged": n1, "n_disliked_flagged": k1,
            "dislike_rate_flagged": k1 / n1 if n1 else np.nan, "ci_low_flagged": lo1, "ci_high_flagged": hi1,
            "n_unflagged": n2, "dislike_rate_unflagged": k2 / n2 if n2 else np.nan,
            "ci_low_unflagged": lo2, "ci_high_unflagged": hi2, "p_value": compare_rates(k1, n1, k2, n2)[1],
            "examples": [_clip(r) for r in ranked["response"].head(max_examples)],
            # whose text the examples quote (erasure removes a report quoting an erased row)
            "example_ids": [str(i) for i in ranked["id"].head(max_examples)] if "id" in ranked else [],
        })
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    counts = ["n_flagged", "n_disliked_flagged", "n_unflagged"]
    summary[counts] = summary[counts].astype("Int64")  # integers, with <NA> where the type was not checked
    return summary


def error_types_markdown(summary: pd.DataFrame, quotes: bool = True) -> str:
    """Markdown for analysts: one row per checked type, the worst excess dislike rate first (``quotes=False``:
    without the example column)."""
    checked = summary[summary["checked"].astype(bool)].copy()
    checked["excess"] = checked["dislike_rate_flagged"] - checked["dislike_rate_unflagged"]
    checked = checked.sort_values("excess", ascending=False, na_position="last")
    header = ["error type", "flagged", "disliked", "dislike rate flagged (95% CI)", "others (95% CI)", "p"] \
        + (["example"] if quotes else [])
    rows = [[r["type"], r["n_flagged"], r["n_disliked_flagged"],
             f"{fmt_pct(r['dislike_rate_flagged'])} ({fmt_ci(r['ci_low_flagged'], r['ci_high_flagged'])})",
             f"{fmt_pct(r['dislike_rate_unflagged'])} ({fmt_ci(r['ci_low_unflagged'], r['ci_high_unflagged'])})",
             "n/a" if pd.isna(r["p_value"]) else f"{r['p_value']:.2g}"]
            + ([md_cell((r["examples"] or [""])[0])] if quotes else [])
            for r in checked.to_dict("records")]
    lines = ["## Error types", "", "Rule-based flags on rated answers; dislike rate of flagged answers vs. all others.",
             "", md_table(header, rows)]
    unchecked = summary.loc[~summary["checked"].astype(bool), "type"].tolist()
    if unchecked:
        lines += ["", f"Not checked (no data for the rule): {', '.join(unchecked)}."]
    return "\n".join(lines) + "\n"


def sampled_similarity(rated: pd.DataFrame, embeddings_for: Callable[[list[str]], np.ndarray],
                       max_embedded: int | None = None) -> pd.Series:
    """Query-answer cosine for the rows of :func:`patterns.embedding_sample` (the vectors the clusters use),
    NaN for the rest: pass it to :func:`classify_errors` as ``similarity``."""
    from feedback_pipeline.analysis.patterns import embedding_sample  # patterns is the heavier module

    similarity = pd.Series(np.nan, index=rated.index)
    sample = embedding_sample(rated, max_embedded)
    if len(sample):
        similarity.loc[sample.index] = query_response_similarity(sample, embeddings_for)
    return similarity
