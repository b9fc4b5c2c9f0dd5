"""The chat preference benches' study design: length-balanced training pairs, stable folds, pooled cross-fit points
(the bench scripts loaded from bench/, no model)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from feedback_pipeline.evaluation.preference_eval import PairScores, compare_scores

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


curves = _load("chat_preference_curves")
crossfit = _load("chat_preference_crossfit")
positions = _load("chat_preference_positions")


def test_balanced_pairs_make_length_uninformative_and_keep_ties():
    pairs = [{"i": i} for i in range(10)]
    chosen = [5, 6, 7, 1, 1, 1, 1, 3, 3, 3]  # 3 chosen-longer, 4 chosen-shorter, 3 ties
    rejected = [1, 1, 1, 5, 5, 5, 5, 3, 3, 3]
    kept = curves.balance_by_length(pairs, chosen, rejected, seed=1)
    idx = [p["i"] for p in kept]
    longer = [i for i in idx if chosen[i] > rejected[i]]
    shorter = [i for i in idx if chosen[i] < rejected[i]]
    assert len(longer) == len(shorter) == 3 and sorted(longer) == [0, 1, 2]
    assert {7, 8, 9} <= set(idx) and len(idx) == len(set(idx)) == 9
    assert curves.balance_by_length(pairs, chosen, rejected, seed=1) == kept  # seeded


def test_method_specs():
    assert curves._parse_method("ld_dpo+balanced") == ("ld_dpo", True)
    assert curves._parse_method("simpo") == ("simpo", False)
    for bad in ("kto+balanced", "dpo+shuffled", "ppo"):
        with pytest.raises(ValueError):
            curves._parse_method(bad)


def test_folds_are_stable_and_cover_every_fold():
    groups = [f"q:question {i}" for i in range(400)]
    folds = [crossfit.fold_of(g, 5) for g in groups]
    assert folds == [crossfit.fold_of(g, 5) for g in groups]
    counts = np.bincount(folds, minlength=5)
    assert counts.sum() == 400 and counts.min() > 50  # about 80 each


def _part(base_c, base_r, steps: dict, tokens=(4.0, 6.0)) -> dict:
    n = len(base_c)

    def scores(c, r):
        return {"chosen_sum": list(c), "rejected_sum": list(r), "chosen_tokens": [tokens[0]] * n,
                "rejected_tokens": [tokens[1]] * n}

    return {"base_scores": scores(base_c, base_r), "chosen_length": [tokens[0]] * n,
            "rejected_length": [tokens[1]] * n,
            "points": [{"step": s, "train_wall_s": 10.0, "eval_wall_s": 2.0, "train_loss": 0.6,
                        "scores": scores(c, r)} for s, (c, r) in steps.items()]}


def test_cross_fit_points_pool_the_folds_at_steps_every_fold_reached():
    a = _part([-8.0, -9.0], [-9.0, -8.0], {10: ([-7.0, -9.0], [-9.0, -8.5]), 20: ([-6.0, -8.0], [-9.5, -8.5])})
    b = _part([-5.0, -4.0, -6.0], [-4.0, -5.0, -6.0], {10: ([-4.0, -4.0, -5.0], [-4.5, -5.0, -6.0])})
    groups = ["p1", "p1", "p2", "p3", "p3"]
    base_metrics, points = crossfit.pooled_points([a, b], groups, bootstrap=300)
    assert [p["step"] for p in points] == [0, 10]  # step 20: fold b never got there
    assert points[1]["train_wall_s"] == 20.0 and base_metrics["n_pairs"] == 5 and base_metrics["n_groups"] == 3

    def concat(key, at=None):
        parts = [p["base_scores"] if at is None else next(q["scores"] for q in p["points"] if q["step"] == at)
                 for p in (a, b)]
        return np.concatenate([np.asarray(p[key], float) for p in parts])

    keys = ("chosen_sum", "rejected_sum", "chosen_tokens", "rejected_tokens")
    base = PairScores(*(concat(k) for k in keys))
    cand = PairScores(*(concat(k, 10) for k in keys))
    expected = compare_scores(base, cand, [4.0] * 5, [6.0] * 5, bootstrap=300, groups=groups)
    assert points[1]["metrics"] == pytest.approx(expected, nan_ok=True)
    assert points[1]["metrics"]["implicit_accuracy"] == pytest.approx(0.9)  # 4 of 5 right, one tie


def test_position_diagnosis_pools_folds_and_splits_a_pure_position_gain_from_a_real_preference():
    # Fold 0: the candidate gains 0.125 nats per token position on every answer (length alone); fold 1: it gains
    # 0.25 per token on the preferred answer only. Log-probs are multiples of 1/8, so the arithmetic is exact.
    # Pooled, the matched-prefix view credits only fold 1's pairs.
    rng = np.random.default_rng(3)
    folds = []
    for k in range(2):
        n = 40
        c_len, r_len = rng.integers(4, 60, n), rng.integers(4, 60, n)
        base = ([-rng.integers(1, 40, x) / 8 for x in c_len], [-rng.integers(1, 40, x) / 8 for x in r_len])
        if k == 0:
            cand = tuple([b + 0.125 * np.arange(b.size) for b in side] for side in base)
        else:
            cand = ([b + 0.25 for b in base[0]], [b.copy() for b in base[1]])
        pairs = [{"prompt": [{"role": "user", "content": f"fold {k} prompt {i // 2}"}], "chosen": "a", "rejected": "b"}
                 for i in range(n)]
        folds.append({"pairs": pairs, "cand": cand, "base": base,
                      "lengths": (c_len.astype(float), r_len.astype(float))})
    out = positions.analyse(folds, bootstrap=200)
    acc = out["accuracy"]
    assert out["n_pairs"] == 80 and out["n_prompts"] == 40
    # Matched prefixes: every fold 0 pair ties (0.5), every fold 1 pair is right.
    assert acc["implicit_matched_prefix"] == (40 * 0.5 + 40) / 80
    # The summed view ranks the longer answer first in all of fold 0's unequal pairs.
    assert acc["implicit_raw_prefers_longer"] > 0.7
    profile = out["profiles"]["other answer"]  # fold 1's rejected answers gain nothing: fold 0's rising gains only
    assert profile[0]["mean_log_ratio"] < profile[2]["mean_log_ratio"]
    assert acc["own_difference"] == pytest.approx(acc["candidate_per_token"] - acc["base_per_token"])
