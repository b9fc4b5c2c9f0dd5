"""SFT/KTO datasets: weights, splits without leakage, fingerprints, minimum sizes."""

import json

import pandas as pd
import pytest

from feedback_pipeline.datasets.build import (InsufficientDataError, SFTPolicy, build_kto_dataset, build_sft_dataset,
                                              read_jsonl)
from feedback_pipeline.datasets.splits import assign_split, leaked_prompts
from feedback_pipeline.ingestion.importers import read_oasst1
from feedback_pipeline.ingestion.records import normalise_record
from feedback_pipeline_tests.conftest import OASST1


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
    assert {r["label"] for r in train} == {"liked"} and {r["weight"] for r in train} == {2.0}
    assert all(r["messages"][-1]["role"] == "assistant" and r["messages"][-2]["role"] == "user" for r in train)
    liked = (oasst_frame["label"] == "liked").sum()
    assert built.counts["train"] + built.counts["eval"] == liked
    with_disliked = build_sft_dataset(oasst_frame, tmp_path, SFTPolicy(include_disliked=True, disliked_weight=0.25))
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
