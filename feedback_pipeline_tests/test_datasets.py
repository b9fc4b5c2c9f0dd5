"""SFT/KTO datasets: weights, splits without leakage, fingerprints, minimum sizes."""

import json

import pandas as pd
import pytest

from feedback_pipeline.cleaning.clean import clean_feedback
from feedback_pipeline.datasets.build import (InsufficientDataError, SFTPolicy, build_kto_dataset, build_sft_dataset,
                                              example_weight, read_jsonl)
from feedback_pipeline.datasets.preference import build_dpo_dataset
from feedback_pipeline.datasets.splits import assign_split, leaked_prompts, leakage_groups, users_on_both_sides
from feedback_pipeline.store.cleaned import read_cleaned, replace_window
from feedback_pipeline.ingestion.importers import read_oasst1
from feedback_pipeline.ingestion.records import normalise_record
from feedback_pipeline_tests.conftest import OASST1, feedback


@pytest.fixture(scope="module")
def oasst_frame() -> pd.DataFrame:
    rows = [normalise_record(r, "oasst1") for r in read_oasst1(OASST1)]
    frame = pd.DataFrame(rows)
    frame["label"] = frame["rating_thumb"].map({1: "liked", -1: "disliked"}).fillna("neutral")
    return frame


def test_split_keeps_conversations_and_queries_on_one_side(oasst_frame):
    split = assign_split(oasst_frame, 0.2)
    per_session = split.groupby(oasst_frame["session_id"]).nunique()
    assert per_session.max() == 1
    norm = oasst_frame["query"].str.lower().str.split().str.join(" ")
    assert split.groupby(norm).nunique().max() == 1
    assert 0.1 < (split == "eval").mean() < 0.3


def test_split_is_stable_when_data_grows(oasst_frame):
    half = oasst_frame.iloc[: len(oasst_frame) // 2]
    assert (assign_split(half).values == assign_split(oasst_frame).iloc[: len(half)].values).mean() > 0.95


def test_sft_dataset_weights_liked_and_excludes_disliked_by_default(oasst_frame, tmp_path):
    built = build_sft_dataset(oasst_frame, tmp_path)
    train = read_jsonl(built.file("train"))
    assert {r["label"] for r in train} == {"liked"} and all(0 < r["weight"] <= 2 * 2.0 for r in train)
    assert all(r["messages"][-1]["role"] == "assistant" and r["messages"][-2]["role"] == "user" for r in train)
    liked = (oasst_frame["label"] == "liked").sum()
    assert built.counts["train"] + built.counts["eval"] == liked
    flat = dict(recency_half_life_days=None, rater_bonus=0.0, min_strength=1.0)
    with_disliked = build_sft_dataset(oasst_frame, tmp_path, SFTPolicy(include_disliked=True, disliked_weight=0.25, **flat))
    weights = {r["label"]: r["weight"] for r in read_jsonl(with_disliked.file("train"))}
    assert weights == {"liked": 2.0, "disliked": 0.25}
    assert with_disliked.fingerprint != built.fingerprint


def test_fingerprint_is_content_addressed_and_manifest_traces_rows(oasst_frame, tmp_path):
    a = build_kto_dataset(oasst_frame, tmp_path)
    b = build_kto_dataset(oasst_frame.sample(frac=1.0, random_state=1).sort_index(), tmp_path)
    assert a.fingerprint == b.fingerprint and a.directory == b.directory
    manifest = json.loads((a.directory / "manifest.json").read_text())
    ids = set(manifest["feedback_ids"]["train"]) | set(manifest["feedback_ids"]["eval"])
    rated = oasst_frame[oasst_frame["label"] != "neutral"]
    assert ids == set(rated["id"])
    assert manifest["label_balance"]["train"]["liked"] > manifest["label_balance"]["train"]["disliked"] > 0
    train, evaluation = read_jsonl(a.file("train")), read_jsonl(a.file("eval"))
    assert not leaked_prompts([r["prompt"][-1]["content"] for r in train], [r["prompt"][-1]["content"] for r in evaluation])


def test_too_little_data_stops_with_a_clear_message(oasst_frame, tmp_path):
    with pytest.raises(InsufficientDataError, match="fewer than the minimum 20"):
        build_sft_dataset(oasst_frame.head(10), tmp_path)


def _rated_rows(**columns) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    base = {"id": [f"r{i}" for i in range(n)], "label": ["liked"] * n, "rating": [1.0] * n, "query": [f"q{i}" for i in range(n)],
            "response": ["answer"] * n, "history": [None] * n, "metadata": [{}] * n,
            "created_at": [pd.Timestamp("2025-06-30", tz="UTC")] * n}
    return pd.DataFrame(base | columns)


def test_example_weight_policy_by_hand():
    newest = pd.Timestamp("2025-06-30", tz="UTC")
    rows = _rated_rows(
        rating=[1.0, 0.5, 0.5, 1.0, 1.0, 1.0, -1.0, 0.1],
        metadata=[{}, {}, {"votes_up": 3, "votes_down": 1}, {"votes_up": 4, "votes_down": 0}, {}, {}, {}, {}],
        created_at=[newest] * 4 + [newest - pd.Timedelta(days=180), newest - pd.Timedelta(days=5000), newest, newest],
        label=["liked"] * 6 + ["disliked", "liked"])
    weights = [example_weight(row, SFTPolicy(), newest) for row in rows.itertuples(index=False)]
    # thumb; 4 stars; 3 up 1 down (net 0.5, 4 raters: x1.5); 4 up (x1.5); half-life; recency floor; disliked;
    # a weak rating floored at min_strength.
    assert weights == [2.0, 1.0, 1.5, 3.0, 1.0, 0.5, 0.5, 0.5]
    flat = SFTPolicy(recency_half_life_days=None, rater_bonus=0.0)
    assert [example_weight(r, flat, newest) for r in rows.head(6).itertuples(index=False)] == [2.0, 1.0, 1.0, 2.0, 2.0, 2.0]


def test_sft_weights_on_real_votes_follow_the_policy(oasst_frame, tmp_path):
    built = build_sft_dataset(oasst_frame, tmp_path)
    train = read_jsonl(built.file("train"))
    by_id = oasst_frame.set_index("id")
    newest = oasst_frame.loc[oasst_frame["label"] != "neutral", "created_at"].max()
    for record in train[:50]:
        row = by_id.loc[record["feedback_id"]]
        assert record["weight"] == example_weight(row.rename(None).to_frame().T.assign(id=record["feedback_id"])
                                                  .itertuples(index=False).__next__(), SFTPolicy(), newest)
    weights = [r["weight"] for r in train]
    assert min(weights) > 0 and len(set(weights)) > 5  # graded, not one constant
    assert built.stats["train_weight"]["max"] == max(weights)


def test_file_size_cap_drops_the_lowest_weights_first(oasst_frame, tmp_path):
    full = build_sft_dataset(oasst_frame, tmp_path)
    cap_mb = full.stats["bytes"]["train"] * 0.5 / 1024 / 1024
    capped = build_sft_dataset(oasst_frame, tmp_path, SFTPolicy(max_file_mb=cap_mb))
    assert capped.file("train").stat().st_size <= cap_mb * 1024 * 1024
    kept = read_jsonl(capped.file("train"))
    dropped = {r["feedback_id"]: r["weight"] for r in read_jsonl(full.file("train"))}.items() - \
        {(r["feedback_id"], r["weight"]) for r in kept}
    assert capped.stats["dropped_for_size"]["train"] == len(dropped) > 0
    # Everything dropped weighs no more than the heaviest... and the kept ones are heavier on average.
    assert sum(w for _, w in dropped) / len(dropped) < sum(r["weight"] for r in kept) / len(kept)
    with pytest.raises(InsufficientDataError, match="fewer than the minimum"):
        build_sft_dataset(oasst_frame, tmp_path, SFTPolicy(max_file_mb=0.001))


def test_users_stay_on_one_side_unless_they_would_swallow_the_split():
    # u-small's two conversations are joined; u-big spans 40% of rows and is left to straddle.
    rows = pd.DataFrame({"id": [f"r{i}" for i in range(100)], "session_id": [f"s{i}" for i in range(100)],
                         "query": [f"question {i}" for i in range(100)],
                         "user_id": ["u-small", "u-small"] + ["u-big"] * 40 + [f"u{i}" for i in range(58)]})
    groups = leakage_groups(rows, max_group_share=0.05)
    assert groups.iloc[0] == groups.iloc[1] and groups.iloc[2:42].nunique() == 40
    assert leakage_groups(rows, by_user=False).iloc[:2].nunique() == 2
    split = assign_split(rows, 0.5, max_group_share=0.05)
    assert users_on_both_sides(rows, split) == 1  # only u-big


def test_user_split_on_real_data_keeps_most_users_on_one_side(oasst_frame):
    with_users, without = assign_split(oasst_frame, max_group_share=0.02), assign_split(oasst_frame, by_user=False)
    assert users_on_both_sides(oasst_frame, with_users) < users_on_both_sides(oasst_frame, without)
    assert 0.08 < (with_users == "eval").mean() < 0.3


def test_sft_kto_and_dpo_put_every_row_on_the_same_side(oasst_frame, tmp_path):
    sides = {}
    for built in (build_sft_dataset(oasst_frame, tmp_path), build_kto_dataset(oasst_frame, tmp_path),
                  build_dpo_dataset(oasst_frame, tmp_path)):
        for split, ids in built.feedback_ids.items():
            for fid in ids:
                for row_id in fid.split(">"):  # DPO ids are "<chosen>><rejected>"
                    assert sides.setdefault(row_id, split) == split, (built.name, row_id)
    assert len(sides) > 500


def test_an_erased_users_rows_are_absent_from_datasets_built_after_erasure(store, tmp_path):
    records = [feedback(query=f"How do I fix error {i}?", response=f"Restart service {i} and retry.",
                        user_id="erase-me" if i % 3 == 0 else f"user-{i}", session_id=f"s{i}",
                        rating="up" if i % 4 else "down",
                        created_at=f"2025-06-{1 + i % 20:02d}T10:00:00+00:00") for i in range(90)]
    store.write([normalise_record(r, "test") for r in records])
    result = clean_feedback(store.read_frame())
    replace_window(store, result.cleaned, None, None)
    before = build_kto_dataset(read_cleaned(store), tmp_path / "before", min_train_examples=5)
    erased = set(read_cleaned(store).query("user_id == 'erase-me'")["id"])
    assert len(erased) == 30 and erased <= set(sum(before.feedback_ids.values(), []))

    assert store.delete_user("erase-me") == 30
    assert read_cleaned(store).query("user_id == 'erase-me'").empty and store.read_frame().query("user_id == 'erase-me'").empty
    after = build_kto_dataset(read_cleaned(store), tmp_path / "after", min_train_examples=5)
    manifest = json.loads((after.directory / "manifest.json").read_text())
    assert not erased & set(manifest["feedback_ids"]["train"] + manifest["feedback_ids"]["eval"])
    text = after.file("train").read_text() + after.file("eval").read_text()
    assert "error 0?" not in text and "error 3?" not in text and "error 1?" in text
