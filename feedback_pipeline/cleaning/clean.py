"""Turn stored feedback rows into a cleaned, de-duplicated, PII-free frame ready for dataset building.

``clean_feedback`` is pure: it copies what it changes and never touches the caller's frame or nested lists.
Order of the steps matters: text is normalised first so that validation and de-duplication see the same text
the datasets will; de-duplication runs before redaction so two different emails that both become ``[EMAIL]``
never look like the same message.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from feedback_pipeline.cleaning.pii import redact
from feedback_pipeline.ingestion.records import EARLIEST, FUTURE_SLACK

MULTILINE_COLUMNS = ("query", "response")  # code and lists live here: newlines and indentation are content
SINGLE_LINE_COLUMNS = ("comment", "subject")
# Every text column is redacted; each by its field policy (cleaning/pii.py FIELD_POLICY): what a user wrote
# (query, comment, subject, user turns of history) loses every identifier; an answer (response,
# retrieved_context, assistant turns of history) keeps public contact points (URLs, toll-free numbers, role and
# government mailboxes) and the names of people it mentions without a cue, and loses everything else.
REDACTED_COLUMNS = ("query", "response", "comment", "subject", "history", "retrieved_context")
REQUIRED_COLUMNS = ("id", "query", "response", "rating")
ADDED_COLUMNS = ("duplicate_count", "label", "pii_redacted")

_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u2060\ufeff\u00ad"))  # zero-width space, word joiner, BOM, soft hyphen
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_INLINE_SPACE = re.compile(r"[^\S\n]+")  # spaces, tabs, NBSP and other Unicode spaces, but not newlines
_LEADING_SPACE = re.compile(r"^[^\S\n]*")


@dataclass
class CleaningResult:
    cleaned: pd.DataFrame
    rejected: pd.DataFrame  # the input columns (normalised, redacted) plus ``reject_reason``
    stats: dict[str, Any] = field(default_factory=dict)


# --- text normalisation --------------------------------------------------------------------------------------

def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA or value is pd.NaT


def _base_normalise(text: str) -> str:
    text = unicodedata.normalize("NFC", text).translate(_INVISIBLE)
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def normalise_line(value: Any) -> str | None:
    """NFC, invisible characters removed, every whitespace run (newlines too) collapsed to one space."""
    if _missing(value):
        return None
    return re.sub(r"\s+", " ", _base_normalise(str(value))).strip()


def normalise_multiline(value: Any) -> str | None:
    """Like ``normalise_line`` but keeps newlines and each line's indentation (Markdown lists, code).

    Inside a ``` fence only trailing spaces go, so aligned code stays aligned; outside, runs of spaces/tabs
    inside a line collapse to one and more than one blank line in a row collapses to one.
    """
    if _missing(value):
        return None
    lines, in_fence, blank_run = [], False, 0
    for line in _base_normalise(str(value)).split("\n"):
        line = line.rstrip()
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        elif not in_fence:
            indent = _LEADING_SPACE.match(line).group()
            line = indent + _INLINE_SPACE.sub(" ", line[len(indent):])
        blank_run = blank_run + 1 if not line else 0
        if blank_run <= 1 or in_fence:
            lines.append(line)
    return "\n".join(lines).strip()


def normalise_history(messages: Any) -> Any:
    """A new list of new message dicts with normalised ``content``; other keys are copied unchanged."""
    if not isinstance(messages, (list, tuple, np.ndarray)):  # parquet round-trips give numpy arrays
        return [] if _missing(messages) else messages
    return [{**m, "content": normalise_multiline(m.get("content"))} if isinstance(m, dict) else m for m in messages]


def _normalise_frame(df: pd.DataFrame) -> pd.DataFrame:
    for name in MULTILINE_COLUMNS:
        df[name] = df[name].map(normalise_multiline)
    for name in SINGLE_LINE_COLUMNS:
        if name in df:
            df[name] = df[name].map(normalise_line)
    if "history" in df:
        df["history"] = df["history"].map(normalise_history)
    return df


# --- validation ----------------------------------------------------------------------------------------------

def _text_reason(name: str, value: Any) -> str | None:
    if _missing(value):
        return f"{name}: missing"
    return None if value else f"{name}: empty"


def _rating_reason(value: Any) -> str | None:
    if _missing(value):
        return "rating: missing"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return f"rating: not a number ({value!r})"
    if np.isnan(number):
        return "rating: missing"
    return None if -1.0 <= number <= 1.0 else f"rating: out of range [-1, 1] ({number:g})"


def rejection_reasons(query: Any, response: Any, rating: Any) -> str:
    """'' for a usable row, else every problem as 'field: reason' joined by '; '."""
    reasons = [_text_reason("query", query), _text_reason("response", response), _rating_reason(rating)]
    return "; ".join(r for r in reasons if r)


def stored_value_reasons(df: pd.DataFrame) -> pd.Series:
    """Values the door rejects today but an older store may hold (ingestion/records.py): ``created_at`` missing or
    unreadable (``read_frame`` turns a year outside pandas' range, e.g. 0001 or 2999, into NaT), a timestamp
    outside ``EARLIEST`` .. now + ``FUTURE_SLACK``, a non-finite latency. '' per usable row, else
    'field: reason' joined by '; '."""
    reasons = pd.Series([[] for _ in range(len(df))], index=df.index, dtype=object)
    if "created_at" in df:
        latest = pd.Timestamp.now(tz="UTC") + FUTURE_SLACK
        for name in ("created_at", "updated_at"):
            if name not in df:
                continue
            stamps = pd.to_datetime(df[name], utc=True, errors="coerce")
            if name == "created_at":
                for i in df.index[stamps.isna()]:
                    reasons[i].append("created_at: missing or outside the readable range")
            outside = stamps.notna() & ((stamps < pd.Timestamp(EARLIEST)) | (stamps > latest))
            for i in df.index[outside]:
                reasons[i].append(f"{name}: outside {EARLIEST.date()} .. now + {FUTURE_SLACK.days} day "
                                  f"({stamps[i].isoformat()})")
    if "latency_ms" in df:
        latency = pd.to_numeric(df["latency_ms"], errors="coerce")
        for i in df.index[np.isinf(latency.to_numpy(dtype=float))]:
            reasons[i].append(f"latency_ms: not a finite number ({latency[i]:g})")
    return reasons.map("; ".join)


# --- de-duplication ------------------------------------------------------------------------------------------

def _rater(df: pd.DataFrame) -> pd.Series:
    """Who gave the rating: the user, else the session; a row with neither is its own rater (never merged)."""
    who = pd.Series([None] * len(df), index=df.index, dtype=object)
    for name in ("session_id", "user_id"):  # user_id last so it wins
        if name in df:
            present = df[name].map(lambda v: not _missing(v) and v != "")
            who[present] = name + ":" + df.loc[present, name].astype(str)
    return who.where(who.notna(), "row:" + df["id"].astype(str))


def drop_rerated(df: pd.DataFrame) -> pd.DataFrame:
    """Keep one row per (rater, query, response): the latest by updated_at, then ingested_at, created_at, id."""
    order = [c for c in ("updated_at", "ingested_at", "created_at") if c in df] + ["id"]
    keyed = df.assign(_rater=_rater(df))
    latest = keyed.sort_values(order, na_position="first", kind="stable") \
        .drop_duplicates(["_rater", "query", "response"], keep="last")
    return df.loc[df.index.isin(latest.index)]  # back in input order


# --- redaction and labels ------------------------------------------------------------------------------------

# PII detection costs milliseconds per text, and many texts come back: a RAG passage retrieved for many questions,
# each earlier turn of a conversation in the history of every later turn. Redaction is a pure function of the text
# and the field's policy, so a bounded memo gives the same result (about 100 MB at most per process).
@functools.lru_cache(maxsize=32768)
def _redact_text(text: str, field: str) -> tuple[str, tuple[tuple[str, int], ...]]:
    result = redact(text, field)
    return result.text, tuple(result.counts.items())


def redact_with_counts(value: Any, field: str = "query") -> tuple[Any, Counter]:
    """``pii.redact_with_counts`` (the same walk: strings nested in lists and dicts, an assistant message taking the
    answer policy), each string through the memo."""
    counts: Counter = Counter()

    def walk(item: Any, where: str) -> Any:
        if isinstance(item, str):
            if not item:
                return ""
            text, found = _redact_text(item, where)
            counts.update(dict(found))
            return text
        if isinstance(item, dict):
            inner = "response" if item.get("role") == "assistant" else where
            return {key: walk(val, inner) for key, val in item.items()}
        if isinstance(item, (list, tuple)) or type(item).__name__ == "ndarray":  # parquet gives numpy arrays
            return [walk(val, where) for val in item]
        return item

    return walk(value, field), counts


def _redact_frame(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series, Counter]:
    per_row = pd.Series(0, index=df.index, dtype="int64")
    by_kind: Counter = Counter()
    for name in REDACTED_COLUMNS:
        if name not in df:
            continue
        results = df[name].map(lambda value, field=name: redact_with_counts(value, field))
        df[name] = results.map(lambda r: r[0])
        counts = results.map(lambda r: r[1])
        per_row += counts.map(lambda c: sum(c.values())).astype("int64")
        for c in counts:
            by_kind.update(c)
    return df, per_row, by_kind


def label_of(rating: float) -> str:
    return "liked" if rating > 0 else ("disliked" if rating < 0 else "neutral")


# --- the step ------------------------------------------------------------------------------------------------

def screen(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Normalised copy of ``df`` (unique labels 0..n-1) and each row's rejection reasons ('' for a usable row)."""
    missing = [name for name in REQUIRED_COLUMNS if name not in df]
    if missing:
        raise ValueError(f"feedback frame lacks required columns: {', '.join(missing)}")
    work = _normalise_frame(df.reset_index(drop=True))  # a copy with unique labels, which the filters rely on
    reasons = pd.Series([rejection_reasons(*values) for values in zip(work["query"], work["response"], work["rating"])],
                        index=work.index, dtype=object)
    stored = stored_value_reasons(work)
    reasons = (reasons + "; " + stored).str.strip("; ").where(stored != "", reasons)
    return work, reasons


def rejected_fields(reasons) -> Counter:
    """Rejected rows per field named in their reasons ('rating: missing; query: empty' counts rating and query)."""
    return Counter(part.split(":")[0] for reason in reasons for part in reason.split("; "))


def finish(kept: pd.DataFrame, redact: bool = True) -> tuple[pd.DataFrame, Counter]:
    """Rating as float, redaction (by field policy), ``label`` and ``pii_redacted`` on the kept rows (changed in
    place: pass a copy); the redactions by kind."""
    kept["rating"] = kept["rating"].astype(float)
    if redact:
        kept, per_row, by_kind = _redact_frame(kept)
    else:
        per_row, by_kind = pd.Series(0, index=kept.index, dtype="int64"), Counter()
    kept["label"] = kept["rating"].map(label_of).astype(object)
    kept["pii_redacted"] = per_row
    return kept, by_kind


def clean_feedback(df: pd.DataFrame, redact: bool = True) -> CleaningResult:
    """Normalise, validate, drop superseded re-ratings, redact PII and label the feedback in ``df``.

    ``redact=False`` only for an admin's raw export: every stored and trained-on frame is redacted.

    ``cleaned`` keeps the input columns (text normalised and redacted, ``rating`` as float) and adds
    ``duplicate_count`` (rows, across users, sharing this query and response), ``label`` and ``pii_redacted``.
    ``stats["pii_redactions"]`` counts what was redacted in the cleaned rows, by kind.

    The pipeline cleans the store in bounded chunks instead (:mod:`feedback_pipeline.cleaning.windowed`), with the
    same steps (``screen``, :func:`dedup_keys` resolved in SQL, ``finish``) and the same result.
    """
    work, reasons = screen(df)
    valid = work[reasons == ""]
    rejected = work[reasons != ""].assign(reject_reason=reasons[reasons != ""])

    kept = drop_rerated(valid).copy()
    kept["duplicate_count"] = kept.groupby(["query", "response"], sort=False)["id"].transform("size").astype("int64")
    kept, by_kind = finish(kept, redact)
    rejected = _redact_frame(rejected.copy())[0] if redact else rejected  # rejected rows are shown too: no PII there either

    stats = {
        "rows_in": len(df), "rows_rejected": len(rejected), "duplicates_removed": len(valid) - len(kept),
        "rows_out": len(kept), "pii_redactions": dict(sorted(by_kind.items())),
        "rejected_by_field": dict(sorted(rejected_fields(rejected["reject_reason"]).items())),
    }
    return CleaningResult(kept.reset_index(drop=True), rejected.reset_index(drop=True), stats)


# --- the same steps on one chunk of a window (cleaning/windowed.py) -----------------------------------------

def _key(*parts: str) -> str:
    # NUL never survives normalisation (a control character), so it separates the parts unambiguously.
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _ns(values: pd.Series) -> list[int | None]:
    stamps = pd.to_datetime(values, utc=True, errors="coerce")
    return [None if pd.isna(t) else int(t.value) for t in stamps]


def dedup_keys(valid: pd.DataFrame) -> pd.DataFrame:
    """What :func:`drop_rerated` and ``duplicate_count`` need of each valid (screened) row, without its text:
    ``dedup_key`` (rater, query, response), ``qr_key`` (query, response) and the order of a rater's ratings
    (``u``, ``i``, ``c``: updated_at, ingested_at, created_at in ns; None sorts first, as NaT does)."""
    raters = _rater(valid)
    return pd.DataFrame({
        "id": valid["id"].astype(str).to_numpy(),
        "dedup_key": [_key(r, q, a) for r, q, a in zip(raters, valid["query"], valid["response"])],
        "qr_key": [_key(q, a) for q, a in zip(valid["query"], valid["response"])],
        **{short: _ns(valid[name]) if name in valid else [None] * len(valid)
           for short, name in (("u", "updated_at"), ("i", "ingested_at"), ("c", "created_at"))},
    })
