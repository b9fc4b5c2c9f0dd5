"""Bot and spam signals on a feedback frame: which rows should not teach the model anything.

Every signal is a plain rule with a named threshold, so an analyst can read why a row was excluded.
Flagged rows stay in the store and in like-rate reports; ``exclude_from_training`` only keeps them out of
the datasets. Defaults (all overridable in ``spam_signals``):

- burst: more than ``burst_max`` (20) ratings from one user, or one session, inside any ``burst_window``
  (1 minute). A person reading answers rates a few per minute at most; every row of the burst is flagged.
- repeated comment: one comment (case and spacing ignored) of at least ``comment_min_chars`` (20) characters
  written by ``comment_min_users`` (5) or more distinct users. Short comments ("good", "wrong") repeat
  naturally; a long identical sentence from many accounts is a script or a campaign.
- garbage text: a query or response that is empty, has neither letters nor digits (ASCII art counts: it
  teaches the model little and cannot be judged), is one repeated character, or is
  mostly keyboard mash (runs along a keyboard row such as "asdf", long vowel-less tokens, "sdfsdfsdf").
- rating flood: a user giving more than ``flood_max`` (10) ratings inside ``flood_window`` (10 minutes) that
  are all the same rating with no comment: clicking through without reading.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pandas as pd

_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
# 4-character runs along a keyboard row; those found inside real words ("property", "strew", Norwegian "ytre")
# are left out so an ordinary one-word query is never mash.
_KEY_RUNS = {r[i:i + 4] for row in _ROWS for r in (row, row[::-1]) for i in range(len(r) - 3)} \
    - {"erty", "wert", "trew", "ytre"}
_WORD = re.compile(r"[^\W\d_]+")
_VOWELLESS = re.compile(r"^[b-df-hj-np-tv-xz]{7,}$")  # Latin consonants only (y counts as a vowel)
_STUTTER = re.compile(r"^(.{1,3}?)\1{3,}$")  # a 1-3 character unit typed 4+ times: "sdfsdfsdfsdf", "lolololo"


@functools.lru_cache(maxsize=65536)  # pure, and words repeat: "the" is checked once per process
def _mash_letters(token: str) -> int:
    """How many letters of ``token`` look typed without meaning (0 when it reads as a word)."""
    if len(token) < 4:
        return 0  # too short for a keyboard run or a stutter; the vowel-less rule needs 7
    if _VOWELLESS.match(token) or _STUTTER.match(token):
        return len(token)
    covered = reach = 0  # letters inside some keyboard run (runs start left to right, so one reach suffices)
    for i in range(len(token) - 3):
        if token[i:i + 4] in _KEY_RUNS:
            covered += i + 4 - max(i, reach)
            reach = i + 4
    return len(token) if covered * 2 > len(token) else 0


def garbage_kind(text: object) -> str | None:
    """Why ``text`` is garbage ("empty", "no letters", "repeated character", "keyboard mash"), else None."""
    if not isinstance(text, str) or not text.strip():
        return "empty"
    compact = "".join(text.split())
    if len(set(compact)) == 1:
        return "repeated character"
    tokens = _WORD.findall(text.lower())
    if not tokens:
        # Digits are content ("42" answers "what is 6 times 7?"); bare symbols and punctuation are not.
        return None if any(ch.isdigit() for ch in text) else "no letters"
    letters = sum(len(t) for t in tokens)
    # Mash must make up most of the text: "asdf" in a long answer about keyboards is content.
    return "keyboard mash" if 2 * sum(_mash_letters(t) for t in tokens) >= letters else None


def _dense(times: np.ndarray, window: int, limit: int) -> np.ndarray:
    """For sorted int64 ``times``: True where the row lies in some [t, t + window) holding more than ``limit`` rows."""
    n = len(times)
    if n <= limit:
        return np.zeros(n, dtype=bool)
    end = np.searchsorted(times, times + window, side="left")
    starts = np.flatnonzero(end - np.arange(n) > limit)
    cover = np.zeros(n + 1, dtype=int)
    np.add.at(cover, starts, 1)
    np.add.at(cover, end[starts], -1)
    return np.cumsum(cover[:-1]) > 0


def _dense_by(keys: pd.Series, times: pd.Series, window: pd.Timedelta, limit: int) -> np.ndarray:
    """Per group of ``keys`` (missing keys form no group), :func:`_dense` on that group's times."""
    flags = np.zeros(len(keys), dtype=bool)
    ok = keys.notna().to_numpy() & times.notna().to_numpy()
    ns = times.to_numpy(dtype="datetime64[ns]").astype("int64")
    for positions in pd.Series(keys.to_numpy()[ok]).groupby(keys.to_numpy()[ok]).indices.values():
        rows = np.flatnonzero(ok)[positions]
        order = rows[np.argsort(ns[rows], kind="stable")]
        flags[order] = _dense(ns[order], window.value, limit)
    return flags


def _present(values: pd.Series) -> pd.Series:
    text = values.astype("string").str.strip()
    return text.mask(text == "")


def _comment_key(values: pd.Series) -> pd.Series:
    return _present(values).str.lower().str.replace(r"\s+", " ", regex=True)


def spam_signals(
    df: pd.DataFrame,
    burst_window: str = "1min",
    burst_max: int = 20,
    comment_min_users: int = 5,
    comment_min_chars: int = 20,
    flood_window: str = "10min",
    flood_max: int = 10,
) -> pd.Series:
    """One reason string per row ("" when clean; several joined by "; "), aligned with ``df.index``.

    Reasons: "burst: user", "burst: session", "repeated comment", "garbage query: <kind>",
    "garbage response: <kind>", "rating flood". Columns a frame lacks switch their signal off.
    """
    reasons: list[list[str]] = [[] for _ in range(len(df))]

    def add(mask: np.ndarray, reason: str) -> None:
        for i in np.flatnonzero(mask):
            reasons[i].append(reason)

    times = pd.to_datetime(df["created_at"], utc=True) if "created_at" in df else None
    known = np.ones(len(df), dtype=bool)
    if times is not None and "ingested_at" in df:
        # A record sent without its own timestamp got the ingestion time as created_at: rows of one bulk import
        # then share a time that says nothing about how fast anyone rated, so they are kept out of burst checks.
        known = (times != pd.to_datetime(df["ingested_at"], utc=True)).to_numpy()
    timed, timed_at = df[known], (times[known] if times is not None else None)

    def spread(sub_hits: np.ndarray) -> np.ndarray:
        hits = np.zeros(len(df), dtype=bool)
        hits[known] = sub_hits
        return hits

    for column in ("user_id", "session_id"):
        if times is not None and column in df:
            hits = _dense_by(_present(timed[column]), timed_at, pd.Timedelta(burst_window), burst_max)
            add(spread(hits), f"burst: {column.removesuffix('_id')}")
    if "comment" in df:
        key = _comment_key(df["comment"])
        who = _present(df["user_id"]) if "user_id" in df else pd.Series(np.arange(len(df)), index=df.index)
        users = who.groupby(key).nunique()
        common = users[(users >= comment_min_users) & (users.index.str.len() >= comment_min_chars)].index
        add(key.isin(common).fillna(False).to_numpy(dtype=bool), "repeated comment")
    for column in ("query", "response"):
        if column in df:
            for i, kind in enumerate(df[column].map(garbage_kind)):
                if kind:
                    reasons[i].append(f"garbage {column}: {kind}")
    if times is not None and "user_id" in df and "rating" in df:
        add(spread(_flood(timed, timed_at, pd.Timedelta(flood_window), flood_max)), "rating flood")
    return pd.Series(["; ".join(r) for r in reasons], index=df.index, dtype=object)


def _flood(df: pd.DataFrame, times: pd.Series, window: pd.Timedelta, limit: int) -> np.ndarray:
    """Rating-only rows inside a dense window of one user's run of identical, uncommented ratings."""
    uncommented = _present(df["comment"]).isna() if "comment" in df else pd.Series(True, index=df.index)
    work = pd.DataFrame({"user": _present(df["user_id"]).to_numpy(), "t": times.to_numpy(),
                         "rating": df["rating"].to_numpy(), "quiet": uncommented.to_numpy()})
    work = work.sort_values(["user", "t"], kind="stable")
    # A new run starts at each new user, each change of rating and at every commented row.
    same = (work["user"] == work["user"].shift()) & (work["rating"] == work["rating"].shift()) \
        & work["quiet"] & work["quiet"].shift(fill_value=False)
    run = (~same).cumsum().where(work["quiet"] & work["user"].notna())
    flags = _dense_by(run, work["t"], window, limit)
    out = np.zeros(len(df), dtype=bool)
    out[work.index.to_numpy()] = flags
    return out


def apply_signals(df: pd.DataFrame, **thresholds) -> pd.DataFrame:
    """A copy of ``df`` with ``spam_reason`` ("" when clean) and ``exclude_from_training`` (True when flagged)."""
    reasons = spam_signals(df, **thresholds)
    return df.assign(spam_reason=reasons, exclude_from_training=(reasons != "").astype(bool))
