"""The compact paths of the streaming builders (issue 12) give what the row-by-row code gives: the split fed a chunk
at a time equals :func:`assign_split` over the whole frame (rows without a session or a user, empty and blank
strings, other scripts, repeated queries in another case), and the array aggregation of rows carrying their keys
and votes equals the per-answer loop, column for column."""

import random

import numpy as np
import pandas as pd
import pytest

from feedback_pipeline.datasets.build import _aggregate_counted, _rater_keys, _votes, aggregate_answers, answer_key
from feedback_pipeline.datasets.splits import SplitGroups, assign_split, leakage_groups
from feedback_pipeline_tests.test_dataset_votes import feedbackqa_records, multi_rater  # noqa: F401 (fixtures)


def _edge_rows(n: int, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    queries = ["What?", "what  ?", "Héllo wörld", "", "  ", "日本語の質問", "Привет", None, f"q{seed}"]
    return pd.DataFrame({
        "id": [f"id-{i}" for i in range(n)],
        "session_id": [rng.choice([None, "", np.nan, f"s{rng.randint(0, n // 4)}", "sé"]) for _ in range(n)],
        "query": [rng.choice(queries + [f"q{rng.randint(0, n // 3)}"]) for _ in range(n)],
        "user_id": [rng.choice([None, "", " ", np.nan, f"u{rng.randint(0, 9)}", f"ü{int(rng.random() ** 3 * 5)}"])
                    for _ in range(n)]})


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("share", [0.01, 0.1, 0.5])
def test_split_fed_in_chunks_equals_the_whole_frame(seed, share):
    rows = _edge_rows(300, seed)
    groups = SplitGroups()
    for start in range(0, len(rows), 37):
        groups.add(rows.iloc[start:start + 37])
    expected = assign_split(rows, 0.3, max_group_share=share)
    assert groups.sides(0.3, max_group_share=share).tolist() == expected.tolist()
    assert set(leakage_groups(rows, max_group_share=share)).issubset(
        {"q:" + " ".join(str(q).lower().split()) for q in rows["query"]})  # a group is named by its smallest key


def test_split_without_user_or_session_columns():
    rows = _edge_rows(120, 7)
    for dropped in (["user_id"], ["user_id", "session_id"]):
        groups = SplitGroups()
        groups.add(rows.drop(columns=dropped))
        assert groups.sides(0.3).tolist() == assign_split(rows.drop(columns=dropped[:1]).assign(
            session_id=rows["session_id"] if "session_id" not in dropped else None), 0.3).tolist()


def test_array_aggregation_equals_the_per_answer_loop(multi_rater):  # noqa: F811
    rows = multi_rater[multi_rater["label"].isin(["liked", "disliked", "neutral"])].reset_index(drop=True)
    rows = rows.assign(_answer=[answer_key(r) for r in rows.itertuples(index=False)], _rater=_rater_keys(rows),
                       split=np.where(np.arange(len(rows)) % 2, "train", "eval"))
    rows["split"] = rows.groupby("_answer")["split"].transform("first")  # an answer on one side
    votes = np.array([_votes(r) for r in rows.itertuples(index=False)]).reshape(-1, 3)
    counted = rows.assign(v_up=votes[:, 0], v_down=votes[:, 1], v_neutral=votes[:, 2])
    loop, loop_stats = aggregate_answers(rows)  # no votes columns: the per-answer loop
    order = [c for c in ("updated_at", "ingested_at", "created_at") if c in rows] + ["id"]
    fast, fast_stats = _aggregate_counted(counted, order, {"rows": len(rows)})
    assert fast_stats == loop_stats and loop_stats["merged_duplicates"] > 0
    assert loop_stats["repeat_votes_dropped"] > 0 and loop_stats["answers_rated_both_ways"] > 0
    fast = fast.drop(columns=["v_up", "v_down", "v_neutral"])
    assert list(fast.columns) == list(loop.columns)
    pd.testing.assert_frame_equal(fast, loop, check_dtype=False)
    for name in ("id", "label", "raters", "rating", "created_at", "feedback_ids"):
        assert [type(v) for v in fast[name]] == [type(v) for v in loop[name]], name
