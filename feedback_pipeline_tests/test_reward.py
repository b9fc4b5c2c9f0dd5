"""Reward model: pairwise accuracy maths, a few training steps on real oasst1 pairs (MiniLM cross-encoder and
SmolLM2 + LoRA), reload and scoring of the saved folder, the pairs-file scorer, and the MLflow registry round trip.

Small on purpose: 24 train / 12 held-out oasst1 sibling-rank pairs, 64 tokens, 2-3 steps, torch on one thread.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from feedback_pipeline.datasets.build import read_jsonl
from feedback_pipeline.datasets.preference import build_dpo_dataset
from feedback_pipeline.evaluation.reward_eval import RewardScorer, pairwise_accuracy, score_pairs_file
from feedback_pipeline.ingestion.importers import read_oasst1
from feedback_pipeline.ingestion.records import normalise_record
from feedback_pipeline.tracking.registry import use_tracking
from feedback_pipeline.training.reward import (
    RewardConfig, _fit, main, register_reward_model, resolve_reward_model,
)

from .conftest import OASST1

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------------------------------
# pairwise accuracy
# --------------------------------------------------------------------------------------------------------------------


def test_pairwise_accuracy_against_hand_computed_values():
    # pair:          1     2     3     4
    chosen = [2.0, 1.0, 0.5, 3.0]  # model: win, tie, loss, win -> (1 + .5 + 0 + 1) / 4
    rejected = [1.0, 1.0, 1.0, 0.0]
    len_c = [10, 5, 3, 1]  # rule: longer chosen wins only in pair 1 -> 1/4
    len_r = [5, 9, 9, 2]
    out = pairwise_accuracy(chosen, rejected, len_c, len_r, seed=0)
    assert out["n_pairs"] == 4
    assert out["accuracy"] == pytest.approx(0.625)
    assert out["length_rule_accuracy"] == pytest.approx(0.25)
    assert out["difference_vs_length_rule"] == pytest.approx(0.375)
    assert out["mean_margin"] == pytest.approx((1 + 0 - 0.5 + 3) / 4)
    # split: preferred answer longer (pair 1) / shorter (pairs 2-4)
    assert (out["n_chosen_longer"], out["n_chosen_shorter"], out["n_equal_length"]) == (1, 3, 0)
    assert out["accuracy_chosen_longer"] == 1.0 and out["accuracy_chosen_longer_ci_low"] is None  # 1 pair: no CI
    assert out["accuracy_chosen_shorter"] == pytest.approx(0.5)
    assert (out["length_rule_accuracy_chosen_longer"], out["length_rule_accuracy_chosen_shorter"]) == (1.0, 0.0)
    for key in ("accuracy", "length_rule_accuracy", "accuracy_chosen_shorter"):
        assert 0.0 <= out[f"{key}_ci_low"] <= out[key] <= out[f"{key}_ci_high"] <= 1.0
    json.dumps(out)  # the CLI prints it


def test_pairwise_accuracy_ties_and_interval_width():
    tied = pairwise_accuracy([0.3] * 5, [0.3] * 5, [4] * 5, [4] * 5)
    assert tied["accuracy"] == 0.5 and tied["length_rule_accuracy"] == 0.5 and tied["n_equal_length"] == 5
    assert (tied["accuracy_ci_low"], tied["accuracy_ci_high"]) == (0.5, 0.5)
    assert tied["n_chosen_longer"] == 0 and tied["accuracy_chosen_longer"] is None

    # 140 of 200 pairs right: the 95% interval is about +-1.96 * sqrt(.7 * .3 / 200) = +-0.064
    rng = np.random.default_rng(1)
    right = rng.permutation([1.0] * 140 + [0.0] * 60)
    out = pairwise_accuracy(right, 1 - right, rng.integers(1, 100, 200), rng.integers(1, 100, 200), seed=3)
    assert out["accuracy"] == pytest.approx(0.7)
    assert out["accuracy_ci_low"] == pytest.approx(0.7 - 0.064, abs=0.015)
    assert out["accuracy_ci_high"] == pytest.approx(0.7 + 0.064, abs=0.015)
    assert pairwise_accuracy(right, 1 - right, [1] * 200, [2] * 200, seed=3)["beats_length_rule"]  # rule: 0
    with pytest.raises(ValueError):
        pairwise_accuracy([], [], [], [])
    with pytest.raises(FloatingPointError):
        pairwise_accuracy([float("nan")], [0.0], [1], [1])


def test_fit_keeps_prompt_end_and_answer_start():
    prompt, answer = list(range(100, 140)), list(range(200, 240))
    assert _fit(prompt[:5], answer[:5], 20) == (prompt[:5], answer[:5], False)
    p, a, cut = _fit(prompt, answer, 20)  # both long: half each
    assert cut and p == prompt[-10:] and a == answer[:10]
    p, a, cut = _fit(prompt[:4], answer, 20)  # short prompt: answer gets the rest
    assert p == prompt[:4] and a == answer[:16]
    p, a, cut = _fit(prompt, answer[:3], 20)
    assert p == prompt[-17:] and a == answer[:3]


def test_config_defaults_and_validation(tmp_path):
    cfg = RewardConfig(train_file="t.jsonl", output_dir="o")
    assert cfg.backbone == "minilm" and cfg.max_steps >= 1 and cfg.eval_file is None
    with pytest.raises(ValueError, match="Unknown"):
        RewardConfig.from_dict({"train_file": "t", "output_dir": "o", "steps": 3})
    with pytest.raises(ValueError, match="base_model_path"):
        RewardConfig(train_file="t", output_dir="o", backbone="smollm2")
    with pytest.raises(ValueError, match="max_steps"):
        RewardConfig(train_file="t", output_dir="o", max_steps=0)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"train_file": "t", "output_dir": "o", "lora_target_modules": "q_proj, v_proj"}))
    assert RewardConfig.from_json_file(path).lora_target_modules == ["q_proj", "v_proj"]


# --------------------------------------------------------------------------------------------------------------------
# training on real oasst1 pairs
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oasst1_pairs(tmp_path_factory):
    """24 train / 12 held-out sibling-rank pairs from the project's DPO builder on oasst1."""
    root = tmp_path_factory.mktemp("reward_data")
    df = pd.DataFrame([normalise_record(r, source="oasst1") for r in read_oasst1(OASST1)])
    built = build_dpo_dataset(df, root, eval_fraction=0.15)
    train, held_out = read_jsonl(built.file("train"))[:24], read_jsonl(built.file("eval"))[:12]
    paths = {}
    for name, rows in (("train", train), ("eval", held_out)):
        paths[name] = root / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return SimpleNamespace(train=train, eval=held_out, **{f"{k}_file": v for k, v in paths.items()})


@pytest.fixture(scope="module")
def minilm(oasst1_pairs, tmp_path_factory):
    work = tmp_path_factory.mktemp("reward_minilm")
    cfg = RewardConfig(train_file=str(oasst1_pairs.train_file), eval_file=str(oasst1_pairs.eval_file),
                       output_dir=str(work / "model"), max_steps=3, per_device_train_batch_size=4, max_length=64,
                       learning_rate=1e-4, logging_steps=1, seed=0)
    lines: list[str] = []
    result = main(cfg, log=lines.append)
    return SimpleNamespace(cfg=cfg, result=result, lines=lines, work=work)


def _score_eval(model_dir, pairs, batch_size=16):
    scorer = RewardScorer(model_dir, batch_size=batch_size)
    prompts = [p["prompt"] for p in pairs]
    return (scorer.score(prompts, [p["chosen"][-1]["content"] for p in pairs]),
            scorer.score(prompts, [p["rejected"][-1]["content"] for p in pairs]))


def _lengths(pairs, key):
    return [len(p[key][-1]["content"]) for p in pairs]


def test_minilm_training_changes_weights_with_finite_loss(minilm, oasst1_pairs):
    r = minilm.result
    assert (r.backbone, r.kind, r.steps, r.n_train_pairs, r.n_eval_pairs) == ("minilm", "encoder", 3, 24, 12)
    assert r.weights_changed and r.trainable_params > 20_000_000  # every weight of the 22.7M encoder trains
    assert [s for s, _ in r.loss_history] == [1, 2, 3] and all(math.isfinite(v) for _, v in r.loss_history)
    assert r.n_truncated_pairs > 0  # oasst1 answers are longer than 64 tokens: cut, not dropped
    rule = np.where(np.array(_lengths(oasst1_pairs.eval, "chosen")) > _lengths(oasst1_pairs.eval, "rejected"), 1.0,
                    np.where(np.array(_lengths(oasst1_pairs.eval, "chosen")) == _lengths(oasst1_pairs.eval,
                                                                                          "rejected"), .5, 0.))
    assert r.length_rule_accuracy == pytest.approx(rule.mean())
    assert r.eval_accuracy_ci_low <= r.eval_accuracy <= r.eval_accuracy_ci_high
    saved = Path(r.model_dir)
    assert {"config.json", "model.safetensors", "reward_model.json", "training_config.json"} <= {
        p.name for p in saved.iterdir()}
    story = json.loads((saved / "training_config.json").read_text())
    assert story["steps"] == 3 and len(story["train_file_sha256"]) == 64
    assert not any(p.name.startswith(".") for p in saved.parent.iterdir())  # no temp or trainer folder left


def test_saved_model_reloads_and_scores_as_in_training(minilm, oasst1_pairs):
    chosen, rejected = _score_eval(minilm.result.model_dir, oasst1_pairs.eval)
    assert np.isfinite(chosen).all() and np.isfinite(rejected).all() and np.ptp(np.r_[chosen, rejected]) > 0
    again = pairwise_accuracy(chosen, rejected, _lengths(oasst1_pairs.eval, "chosen"),
                              _lengths(oasst1_pairs.eval, "rejected"), seed=minilm.cfg.seed)
    assert again["accuracy"] == pytest.approx(minilm.result.eval_accuracy)
    one_by_one, _ = _score_eval(minilm.result.model_dir, oasst1_pairs.eval, batch_size=1)  # padding changes nothing
    np.testing.assert_allclose(one_by_one, chosen, atol=1e-4)


def test_score_pairs_file_skips_bad_lines(minilm, oasst1_pairs, tmp_path):
    good = oasst1_pairs.eval[0]
    lines = [
        json.dumps(good),
        json.dumps({"prompt": good["prompt"][-1]["content"], "chosen": good["chosen"][-1]["content"],
                    "rejected": good["rejected"][-1]["content"]}),  # plain strings
        "{not json",
        json.dumps({"prompt": "q", "chosen": "a"}),
        json.dumps({"prompt": 7, "chosen": "a", "rejected": "b"}),
        json.dumps({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}),
        json.dumps(["a", "list"]),
        "",
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = score_pairs_file(minilm.result.model_dir, path)
    assert result["n_pairs"] == 2 and result["n_skipped"] == 5
    assert result["skipped"] == {"bad_answer": 1, "bad_prompt": 1, "invalid_json": 1, "missing_rejected": 1,
                                 "not_an_object": 1}
    scorer = RewardScorer(minilm.result.model_dir)
    prompts = [good["prompt"], good["prompt"][-1]["content"]]
    chosen = scorer.score(prompts, [good["chosen"][-1]["content"]] * 2)
    rejected = scorer.score(prompts, [good["rejected"][-1]["content"]] * 2)
    wins = np.where(chosen > rejected, 1.0, np.where(chosen == rejected, 0.5, 0.0))
    assert result["accuracy"] == pytest.approx(wins.mean())
    assert json.loads(json.dumps(result))["accuracy"] == result["accuracy"]  # the CLI's last line
    empty = tmp_path / "empty.jsonl"
    empty.write_text("{bad\n")
    with pytest.raises(ValueError, match="no valid"):
        score_pairs_file(minilm.result.model_dir, empty)


def test_register_and_resolve_through_mlflow(minilm, oasst1_pairs, tmp_path):
    import mlflow

    previous = mlflow.get_tracking_uri()
    try:
        use_tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"), "reward-test")
        with mlflow.start_run() as run:
            mlflow.log_param("backbone", "minilm")
        v1 = register_reward_model(run.info.run_id, minilm.result.model_dir, "feedback-reward", alias="champion",
                                   tags={"steps": 3})
        v2 = register_reward_model(run.info.run_id, minilm.result.model_dir, "feedback-reward")
        assert (v1, v2) == ("1", "2")
        client = mlflow.tracking.MlflowClient()
        assert str(client.get_model_version_by_alias("feedback-reward", "champion").version) == "1"
        assert client.get_model_version("feedback-reward", "1").tags == {"steps": "3"}
        assert "reward_model/reward_model.json" in {
            a.path for a in client.list_artifacts(run.info.run_id, "reward_model")}
        by_alias = resolve_reward_model("feedback-reward@champion", dst_path=str(tmp_path / "dl1"))
        by_uri = resolve_reward_model("models:/feedback-reward/2", dst_path=str(tmp_path / "dl2"))
        assert resolve_reward_model(minilm.result.model_dir) == minilm.result.model_dir
        with pytest.raises(FileNotFoundError):
            resolve_reward_model(str(tmp_path / "no-such-model"))
        pairs = oasst1_pairs.eval[:4]
        reference = _score_eval(minilm.result.model_dir, pairs)
        for folder in (by_alias, by_uri):
            assert Path(folder).resolve() != Path(minilm.result.model_dir).resolve()
            np.testing.assert_allclose(_score_eval(folder, pairs), reference, atol=1e-6)
        by_registry = score_pairs_file("feedback-reward@champion", oasst1_pairs.eval_file)
        assert by_registry["accuracy"] == pytest.approx(minilm.result.eval_accuracy)
    finally:
        mlflow.set_tracking_uri(previous)


def test_smollm2_lora_reward_model_is_merged_and_reloads(base_model_dir, oasst1_pairs, tmp_path):
    cfg = RewardConfig(backbone="smollm2", base_model_path=str(base_model_dir),
                       train_file=str(oasst1_pairs.train_file), eval_file=str(oasst1_pairs.eval_file),
                       output_dir=str(tmp_path / "model"), max_steps=2, per_device_train_batch_size=2,
                       max_length=64, learning_rate=1e-4, lora_r=4, lora_alpha=8, logging_steps=1, seed=0)
    r = main(cfg, log=lambda line: None)
    assert (r.kind, r.steps) == ("causal", 2) and r.weights_changed
    assert all(math.isfinite(v) for _, v in r.loss_history)
    saved = Path(r.model_dir)
    assert not list(saved.glob("adapter_*"))  # merged: loads without peft
    scorer = RewardScorer(saved)
    assert type(scorer.model).__name__ == "LlamaForSequenceClassification"
    ids, _ = scorer.encoder(oasst1_pairs.eval[0]["prompt"], "x " * 200)
    assert len(ids) == 64 and scorer.tokenizer.decode(ids[-2:]) == "<|im_end|>\n"  # cut keeps the end of turn
    chosen, rejected = _score_eval(saved, oasst1_pairs.eval)
    again = pairwise_accuracy(chosen, rejected, _lengths(oasst1_pairs.eval, "chosen"),
                              _lengths(oasst1_pairs.eval, "rejected"), seed=0)
    assert again["accuracy"] == pytest.approx(r.eval_accuracy)
