"""One vote per rater, one example per answer: SFT/KTO/DPO built from multi-rater feedback (real FeedbackQA and
oasst1 rows, plus re-sent copies, reversed votes, MT-Bench-style pairwise judgements, ties, empty answers, odd
timestamps and other languages built from them)."""

import json
import math
from collections import Counter

import pandas as pd
import pytest

from feedback_pipeline.cleaning.clean import clean_feedback
from feedback_pipeline.datasets.build import (SFTPolicy, aggregate_answers, answer_key, build_kto_dataset,
                                              build_sft_dataset, read_jsonl)
from feedback_pipeline.datasets.preference import build_dpo_dataset, dpo_pairs, prompt_key
from feedback_pipeline.datasets.splits import leaked_prompts
from feedback_pipeline.ingestion.importers import read_feedbackqa, read_oasst1
from feedback_pipeline.ingestion.records import normalise_record
from feedback_pipeline_tests.conftest import OASST1, SHARED_DATA


def _key(messages: list[dict]) -> str:
    return json.dumps([[m["role"], " ".join(m["content"].lower().split())] for m in messages], ensure_ascii=False)


@pytest.fixture(scope="module")
def feedbackqa_records() -> list[dict]:
    """FeedbackQA WHO + CDC: 2-3 raters per answer, three candidate passages per question (real votes)."""
    return [r for r in read_feedbackqa(SHARED_DATA / "feedbackqa-dev") if r["subject"] in ("WHO", "CDC")]


def _judgements(records: list[dict]) -> list[dict]:
    """MT-Bench-style pairwise judgements on real questions: per question, judges compare its first two passages
    and each verdict is stored as two thumbs (winner up, loser down) from that judge. Question k gets
    ``votes[k % 4]`` of (for A, for B): clear, 2-1, 1-1 (unclear) and 3-0 sent twice by every judge (copies)."""
    by_question: dict[str, list[str]] = {}
    for r in records:
        passages = by_question.setdefault(r["query"], [])
        if " ".join(r["response"].lower().split()) not in {" ".join(p.lower().split()) for p in passages}:
            passages.append(r["response"])  # passages differing in spacing only are one answer
    rows = []
    plans = [(3, 0), (2, 1), (1, 1), (3, 0)]
    questions = [q for q, passages in by_question.items() if len(passages) >= 2][:40]
    for k, question in enumerate(questions):
        a, b = by_question[question][:2]
        for_a, for_b = plans[k % 4]
        copies = 2 if k % 4 == 3 else 1
        for judge in range(for_a + for_b):
            winner, loser = (a, b) if judge < for_a else (b, a)
            for copy in range(copies):
                for response, rating in ((winner, "up"), (loser, "down")):
                    rows.append({"query": question, "response": response, "rating": rating,
                                 "user_id": f"judge-{judge}", "session_id": f"mtb-{k}-{judge}-{copy}",
                                 "created_at": f"2024-03-{1 + copy:02d}T10:00:00Z", "source": "mtbench-style"})
    return rows


def _distinct(records: list[dict]) -> list[dict]:
    """One record per answer (query and response compared as the builders do)."""
    return list({_key([{"role": "user", "content": r["query"]}, {"role": "a", "content": r["response"]}]): r
                 for r in records}.values())


def _cleaned(records: list[dict], source: str = "test") -> pd.DataFrame:
    return clean_feedback(pd.DataFrame([normalise_record(r, source) for r in records]), redact=False).cleaned


@pytest.fixture(scope="module")
def multi_rater(feedbackqa_records) -> pd.DataFrame:
    records = list(feedbackqa_records)
    liked = _distinct([r for r in records if r["rating"] > 0])[:30]
    # Copies: the same liked answer re-sent by three new users, whitespace and case changed.
    for i, r in enumerate(liked[:10]):
        for j in range(3):
            records.append({**r, "user_id": f"copy-{i}-{j}", "session_id": f"copy-{i}-{j}",
                            "query": r["query"].upper() if j else r["query"], "response": "  " + r["response"] + "\n"})
    # Reversed votes: one rater first likes, later dislikes the same answer; only the later vote counts.
    for i, r in enumerate(liked[10:20]):
        records.append({**r, "user_id": f"flip-{i}", "session_id": f"flip-{i}", "rating": 1.0,
                        "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z"})
        records.append({**r, "user_id": f"flip-{i}", "session_id": f"flip-{i}-later", "rating": -1.0,
                        "created_at": "2024-01-02T00:00:00Z", "updated_at": "2024-01-02T00:00:00Z"})
    # Other languages: the same German and Japanese answer twice (case/space differences), liked.
    for i, (q, a) in enumerate([("Wie schütze ich mich vor COVID-19?", "Hände waschen, Abstand HALTEN."),
                                ("新型コロナの症状は何ですか？", "発熱、咳、倦怠感です。")]):
        for j in range(2):
            records.append({"query": q if j else q.lower(), "response": a if j else a.lower() + " ", "rating": "up",
                            "user_id": f"lang-{i}-{j}", "session_id": f"lang-{i}-{j}",
                            "created_at": "2023-06-30T23:59:59+09:00"})
    # An empty answer is rejected by cleaning and never reaches a dataset.
    records.append({"query": "Is this answered?", "response": "answer", "rating": "up", "user_id": "e"})
    frame = pd.DataFrame([normalise_record(r, "fixture") for r in records])
    frame.loc[frame.index[-1], "response"] = "   "
    frame = pd.concat([frame, pd.DataFrame([normalise_record(r, "mtbench-style")
                                            for r in _judgements(feedbackqa_records)])], ignore_index=True)
    return clean_feedback(frame, redact=False).cleaned


def _answer_votes(cleaned: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """(up, down) per answer key, one vote per (answer, rater), the latest: computed independently of the builder."""
    ordered = cleaned.sort_values(["updated_at", "ingested_at", "created_at", "id"], kind="stable")
    votes: dict[str, dict[str, float]] = {}
    for row in ordered.itertuples(index=False):
        votes.setdefault(answer_key(row), {})[row.user_id] = row.rating
    return {k: (sum(r > 0 for r in v.values()), sum(r < 0 for r in v.values())) for k, v in votes.items()}


def test_sft_holds_each_answer_once_with_its_raters_support(multi_rater, tmp_path):
    built = build_sft_dataset(multi_rater, tmp_path, SFTPolicy(recency_half_life_days=None))
    records = read_jsonl(built.file("train")) + read_jsonl(built.file("eval"))
    copies = Counter(_key(r["messages"]) for r in records)
    assert max(copies.values()) == 1
    votes = _answer_votes(multi_rater)
    assert len(records) == sum(up > down for up, down in votes.values())
    stats = built.stats["aggregation"]
    assert stats["answers"] == len(votes) and stats["rows"] == len(multi_rater)
    assert stats["merged_duplicates"] == len(multi_rater) - len(votes)
    assert stats["ties"] == sum(up == down > 0 for up, down in votes.values()) > 0
    # Each merged row is traced (erasure audits): every liked answer's rows are in the manifest.
    manifest = json.loads((built.directory / "manifest.json").read_text())
    assert sum(len(ids) for ids in manifest["feedback_ids"].values()) == sum(len(r["feedback_ids"]) for r in records)
    # Support comes from distinct raters: a real answer two FeedbackQA raters liked plus three copy users = 5.
    by_key = {_key(r["messages"]): r for r in records}
    copied = [r for r in by_key.values() if len(r["feedback_ids"]) >= 5 and any(
        i in set(multi_rater.loc[multi_rater["user_id"].str.startswith("copy-"), "id"]) for i in r["feedback_ids"])]
    assert len(copied) == 10
    by_id = multi_rater.set_index("id")
    for record in copied:
        up, down = votes[_key(record["messages"])]
        assert up + down == by_id.loc[record["feedback_ids"], "user_id"].nunique() >= 5
        strength = min(1.0, max(0.25, abs(by_id.loc[record["feedback_ids"], "rating"].mean())))
        assert record["weight"] == pytest.approx(2.0 * strength * min(2.0, 1 + 0.25 * math.log2(up + down)), abs=1e-3)


def test_reversed_vote_counts_once_as_the_latest(multi_rater, feedbackqa_records):
    # Straight from the store (before cleaning): a rater who liked and later disliked an answer counts once, as a dislike.
    liked = _distinct([r for r in feedbackqa_records if r["rating"] > 0])[10:20]
    raw = pd.DataFrame([normalise_record({**r, "user_id": "flipper", "session_id": f"f{i}-{when}", "rating": rating,
                                          "created_at": f"2024-01-0{when}T00:00:00Z"}, "test")
                        for i, r in enumerate(liked) for when, rating in ((1, 1.0), (2, -1.0))])
    answers, stats = aggregate_answers(raw.assign(label=raw["rating"].map(lambda r: "liked" if r > 0 else "disliked")))
    assert stats["repeat_votes_dropped"] == stats["merged_duplicates"] == len(answers) == len(liked)
    assert (answers["votes_down"] == 1).all() and (answers["votes_up"] == 0).all()
    assert (answers["label"] == "disliked").all() and answers["feedback_ids"].map(len).eq(2).all()
    # In the cleaned multi-rater frame the flips' answers hold the flipper's later vote only.
    flips = set(multi_rater.loc[multi_rater["user_id"].str.startswith("flip-"), "id"])
    cleaned_answers, _ = aggregate_answers(multi_rater)
    flipped = cleaned_answers[cleaned_answers["feedback_ids"].map(lambda ids: bool(set(ids) & flips))]
    assert len(flipped) == 10
    votes = _answer_votes(multi_rater)
    for row in flipped.itertuples(index=False):
        assert (row.votes_up, row.votes_down) == votes[answer_key(row)]
        assert row.raters == row.votes_up + row.votes_down + row.votes_neutral


def test_kto_one_label_per_answer_ties_dropped_or_neutral(multi_rater, tmp_path):
    dropped = build_kto_dataset(multi_rater, tmp_path)
    records = read_jsonl(dropped.file("train")) + read_jsonl(dropped.file("eval"))
    labels = Counter(_key(r["prompt"] + r["completion"]) for r in records)
    assert max(labels.values()) == 1 and all(isinstance(r["label"], bool) for r in records)
    votes = _answer_votes(multi_rater)
    assert len(records) == sum(up != down for up, down in votes.values())
    ties = sum(up == down > 0 for up, down in votes.values())
    assert dropped.stats["aggregation"]["ties_dropped"] == ties > 0
    for r in records:
        up, down = votes[_key(r["prompt"] + r["completion"])]
        assert r["label"] == (up > down)

    neutral = build_kto_dataset(multi_rater, tmp_path, tie_policy="neutral")
    assert neutral.counts["neutral"] == ties == neutral.stats["aggregation"]["ties_neutral"]
    assert all(r["label"] is None and r["split"] in ("train", "eval") for r in read_jsonl(neutral.file("neutral")))
    assert neutral.counts["train"] == dropped.counts["train"] and neutral.fingerprint != dropped.fingerprint
    with pytest.raises(ValueError, match="tie_policy"):
        build_kto_dataset(multi_rater, tmp_path, tie_policy="liked")


def test_dpo_pairs_are_distinct_one_way_and_follow_the_majority(multi_rater, tmp_path):
    built = build_dpo_dataset(multi_rater, tmp_path)
    pairs = read_jsonl(built.file("train")) + read_jsonl(built.file("eval"))
    keys = Counter((_key(p["prompt"]), _key(p["chosen"]), _key(p["rejected"])) for p in pairs)
    assert max(keys.values()) == 1
    assert not any((prompt, rejected, chosen) in keys for prompt, chosen, rejected in keys)
    assert not any(chosen == rejected for _, chosen, rejected in keys)
    votes = _answer_votes(multi_rater)
    for p in pairs:  # the chosen answer's net vote beats the rejected one's
        (cu, cd), (ru, rd) = votes[_key(p["prompt"] + p["chosen"])], votes[_key(p["prompt"] + p["rejected"])]
        assert (cu - cd) / (cu + cd) > (ru - rd) / (ru + rd)
        assert p["agreement"] >= 0.6
    stats = built.stats["pairs"]
    assert stats["emitted"] == len(pairs) == stats["distinct_pairs"] - stats["dropped_ties"] - stats[
        "dropped_low_agreement"]
    assert stats["decided_over_reversed_votes"] > 0
    train, held_out = read_jsonl(built.file("train")), read_jsonl(built.file("eval"))
    assert not leaked_prompts([p["prompt"][-1]["content"] for p in train], [p["prompt"][-1]["content"] for p in held_out])


def test_mt_bench_style_judgements_give_one_pair_per_clear_majority(feedbackqa_records):
    cleaned = _cleaned(_judgements(feedbackqa_records), "mtbench-style")
    stats: dict = {}
    pairs = dpo_pairs(cleaned, stats=stats)
    questions = cleaned["query"].nunique()
    # 3-0, 2-1 and 3-0 sent twice give a pair each; 1-1 is unclear (both answers tie, nothing to compare).
    unclear = len(range(2, questions, 4))
    assert len(pairs) == questions - unclear
    by_question = Counter(p["prompt"][-1]["content"] for p in pairs)
    assert max(by_question.values()) == 1
    agreement = sorted({p["agreement"] for p in pairs})
    assert agreement == [pytest.approx(2 / 3, abs=1e-4), 1.0]
    assert all(p["votes"] == 6 for p in pairs)  # three judges' thumbs on both answers, copies not counted
    strict = dpo_pairs(cleaned, min_agreement=0.7, stats=stats)
    assert len(strict) == len(pairs) - len(range(1, questions, 4)) and stats["dropped_low_agreement"] > 0


def test_rank_votes_on_real_oasst1_are_one_way(tmp_path):
    frame = pd.DataFrame([normalise_record(r, "oasst1") for r in read_oasst1(OASST1)])
    frame["label"] = frame["rating_thumb"].map({1: "liked", -1: "disliked", 0: "neutral"}).fillna("neutral")
    # Every ranked reply sent again by a second user (a re-import): the pairs must not double or reverse.
    again = frame.assign(id=[f"{i}-copy" for i in frame["id"]], user_id="re-import")
    once, twice = dpo_pairs(frame), dpo_pairs(pd.concat([frame, again], ignore_index=True))
    assert len(twice) == len(once) > 400
    assert {(p["chosen_id"], p["rejected_id"]) for p in once} == {(p["chosen_id"], p["rejected_id"]) for p in twice}
    assert all(prompt_key(p["prompt"]) for p in once)
