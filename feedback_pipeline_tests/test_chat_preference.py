"""Preference pairs, KTO/DPO LoRA training (early stopping, resume), preference accuracy and merged export.

Runs on the bundled SmolLM2-135M with a handful of tiny examples: a 2-step KTO run, a 2+1-step DPO run (killed and
resumed), held-out scoring and one merge.
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
from transformers import TrainerCallback

from feedback_pipeline.datasets.build import InsufficientDataError, read_jsonl
from feedback_pipeline.datasets.preference import build_dpo_dataset, dpo_pairs, prompt_key
from feedback_pipeline.datasets.splits import leaked_prompts
from feedback_pipeline.tracking.registry import use_tracking
from feedback_pipeline.training.chat_preference import (
    PreferenceConfig,
    fit_prompt,
    kto_class_weights,
)
from feedback_pipeline.training.checkpoints import last_complete_checkpoint

# (question, good answer, bad answer)
QA = [
    ("What is 2+2?", "2+2 equals 4.", "2+2 equals 5."),
    ("Name a primary color.", "Red is a primary color.", "Green is the only primary color."),
    ("What is the capital of Italy?", "The capital of Italy is Rome.", "The capital of Italy is Milan."),
    ("Say hello in French.", "Bonjour!", "Hola!"),
    ("How many legs does a spider have?", "A spider has eight legs.", "A spider has six legs."),
    ("What is H2O?", "H2O is water.", "H2O is table salt."),
]


# Smaller than the defaults, to keep the training tests quick on a shared 2-core CPU.
SMALL_LORA = {"lora_r": 8, "lora_alpha": 16, "lora_target_modules": ["q_proj", "v_proj"]}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """These batches are tiny, so a second intra-op thread gains little; on a 2-core machine shared with other jobs
    two threads ran this file 3.5x slower than one (249 s vs 71 s, measured). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _kto_rows(qa=QA) -> list[dict]:
    rows = []
    for q, good, bad in qa:
        rows.append({"prompt": _user(q), "completion": _assistant(good), "label": True})
        rows.append({"prompt": _user(q), "completion": _assistant(bad), "label": False})
    return rows


def _dpo_rows(qa=QA) -> list[dict]:
    return [{"prompt": _user(q), "chosen": _assistant(good), "rejected": _assistant(bad)} for q, good, bad in qa]


def _lora_state(adapter_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


# --------------------------------------------------------------------------------------------------------------------
# dpo_pairs and the DPO dataset
# --------------------------------------------------------------------------------------------------------------------


def _row(id_, query, response, label=None, rank=None, parent=None, session=None, history=None, **extra):
    return {"id": id_, "query": query, "response": response, "label": label, "history": history or [],
            "session_id": session or f"s-{id_}", "metadata": {"rank": rank, "parent_id": parent},
            "exclude_from_training": False, **extra}


def test_dpo_pairs_from_ranks_and_thumbs():
    hist = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    df = pd.DataFrame([
        # Ranked siblings (same parent, same prompt): a0 > a1 > a2; the thumbs on a0/a2 contradict the ranks.
        _row("a0", "Explain DNS.", "DNS maps names to IP addresses.", "disliked", 0, "pA", "tA"),
        _row("a1", "Explain DNS.", "It is a phone book.", None, 1, "pA", "tA"),
        _row("a2", "Explain DNS.", "No idea.", "liked", 2, "pA", "tA"),
        _row("a3", "Explain DNS.", "It is a phone book.", None, 3, "pA", "tA"),  # same text as a1: no pair
        _row("a4", "Explain DNS.", "Domain Name System.", None, 1, "pA", "tA"),  # ties a1's rank: no a1/a4 pair
        # Same query, case and spacing differing, in other conversations: liked x disliked pairs.
        _row("b1", "How do I reset my password?", "Settings > Security > Reset.", "liked"),
        _row("b2", "how do I  reset my password? ", "Call us.", "disliked"),
        _row("b3", "How do I reset my password?", "Use the reset link on the login page.", "liked"),
        _row("b4", "How do I reset my password?", "Just guess it.", "disliked", exclude_from_training=True),
        # Same query after a different history: a different prompt, never paired with b*.
        _row("e1", "How do I reset my password?", "Reboot.", "disliked", history=hist),
        # Different prompts entirely.
        _row("c1", "What is 2+2?", "4.", "liked"),
        _row("d1", "What is 3+3?", "7.", "disliked"),
    ])

    stats = {}
    pairs = dpo_pairs(df, stats=stats)
    got = {(p["chosen_id"], p["rejected_id"], p["source"]) for p in pairs}
    # a1 and a3 are one answer (id a1): a0 beats it twice (one pair), a4 beats it once (via a3); a1 > a2 and
    # a2 > a3 cancel out, so a1/a2 is dropped as a tie instead of emitted both ways.
    assert got == {
        ("a0", "a1", "rank"), ("a0", "a2", "rank"), ("a0", "a4", "rank"), ("a4", "a1", "rank"), ("a4", "a2", "rank"),
        ("b1", "b2", "thumbs"), ("b3", "b2", "thumbs"),
    }
    assert stats["dropped_ties"] == 1 and stats["merged_duplicate_votes"] == 2  # a0>a1 twice, a1/a2 both ways
    assert len(got) == len(pairs)  # no duplicates; a2-vs-a0 thumbs pair dropped in favour of the ranks
    by_id = df.set_index("id")
    for p in pairs:  # never across prompts, and the texts are the rows' texts
        for side, key in (("chosen", "chosen_id"), ("rejected", "rejected_id")):
            row = by_id.loc[p[key]]
            assert prompt_key(p["prompt"]) == prompt_key([*row.history, {"role": "user", "content": row.query}])
            assert p[side] == _assistant(row.response)
        assert p["feedback_id"] == f"{p['chosen_id']}>{p['rejected_id']}"
    assert dpo_pairs(df) == pairs  # deterministic


def test_build_dpo_dataset_splits_by_prompt_without_leakage(tmp_path):
    rows = []
    for i in range(40):
        q = f"Question number {i}: how does feature {i} work?"
        for rank in range(3):  # ranked siblings in one conversation tree
            rows.append(_row(f"r{i}-{rank}", q, f"Answer {rank} to {i}.", None, rank, f"p{i}", f"tree{i}"))
        # the same question asked again elsewhere, rated by thumbs: must land on the same side
        rows.append(_row(f"t{i}-up", q.upper(), f"Liked answer {i}.", "liked", session=f"other{i}"))
        rows.append(_row(f"t{i}-down", q, f"Disliked answer {i}.", "disliked", session=f"third{i}"))
    df = pd.DataFrame(rows)

    built = build_dpo_dataset(df, tmp_path, eval_fraction=0.25, min_train_examples=20)
    train, held_out = read_jsonl(built.file("train")), read_jsonl(built.file("eval"))
    assert train and held_out
    assert len(train) + len(held_out) == len(dpo_pairs(df)) == 40 * 4
    assert built.label_balance["train"]["rank"] > 0 and built.label_balance["train"]["thumbs"] > 0

    def user_prompts(records):
        return [r["prompt"][-1]["content"] for r in records]

    assert not leaked_prompts(user_prompts(train), user_prompts(held_out))
    assert json.loads((built.directory / "manifest.json").read_text())["fingerprint"] == built.fingerprint
    assert build_dpo_dataset(df, tmp_path, eval_fraction=0.25).directory == built.directory  # content-addressed

    with pytest.raises(InsufficientDataError):
        build_dpo_dataset(df.head(6), tmp_path, min_train_examples=20)


# --------------------------------------------------------------------------------------------------------------------
# configuration and helpers
# --------------------------------------------------------------------------------------------------------------------


def test_kto_class_weights_follow_trl_recommendation():
    assert kto_class_weights(10, 30) == (pytest.approx(3.5), 1.0)  # liked minority: upweight liked
    assert kto_class_weights(30, 10) == (1.0, pytest.approx(30 / (7 / 6 * 10), rel=1e-4))
    for n_d, n_u in ((10, 30), (30, 10), (645, 170), (5, 5)):
        w_d, w_u = kto_class_weights(n_d, n_u)
        assert 1.0 <= w_d * n_d / (w_u * n_u) <= 4 / 3 + 1e-3  # the KTO paper's range (eq. 8)
    with pytest.raises(ValueError):
        kto_class_weights(0, 5)


def test_config_validation():
    base = {"base_model_path": "b", "train_file": "t", "output_dir": "o"}
    cfg = PreferenceConfig.from_dict({**base, "lora_target_modules": "q_proj, v_proj"})
    assert cfg.lora_target_modules == ["q_proj", "v_proj"]
    assert (cfg.method, cfg.learning_rate, cfg.beta, cfg.max_prompt_length) == ("kto", 5e-5, 0.1, 128)
    for bad in ({"method": "rso"}, {"max_step": 3}, {"method": "dpo", "desirable_weight": 2.0},
                {"early_stopping_patience": 2}, {"per_device_train_batch_size": 1},
                {"eval_file": "e", "early_stopping_patience": 2, "eval_steps": 4, "save_steps": 6}):
        with pytest.raises(ValueError):
            PreferenceConfig.from_dict({**base, **bad})


def test_pair_method_defaults_and_validation():
    base = {"base_model_path": "b", "train_file": "t", "output_dir": "o"}
    assert PreferenceConfig.from_dict({**base, "method": "simpo"}).beta == 2.0  # SimPO's own scale
    assert PreferenceConfig.from_dict({**base, "method": "ld_dpo"}).beta == 0.1
    assert PreferenceConfig.from_dict({**base, "method": "orpo"}).beta == 0.1  # ORPO's lambda
    assert PreferenceConfig.from_dict({**base, "method": "simpo", "beta": 2.5}).beta == 2.5
    for bad in ({"method": "ld_dpo", "ld_alpha": 1.5}, {"method": "simpo", "beta": 0.0},
                {"method": "simpo", "desirable_weight": 2.0}):
        with pytest.raises(ValueError):
            PreferenceConfig.from_dict({**base, **bad})


@pytest.mark.parametrize("method", ["simpo", "ld_dpo", "ipo", "cpo", "orpo"])
def test_pair_methods_train(method, base_model_dir, tmp_path):
    """Two steps of each added pair method on the tiny pairs: finite losses, LoRA weights moved, adapter saved."""
    from feedback_pipeline.training.chat_preference import main

    cfg = PreferenceConfig(
        base_model_path=str(base_model_dir), method=method, train_file=str(_write(tmp_path / "t.jsonl", _dpo_rows())),
        output_dir=str(tmp_path / "adapter"), per_device_train_batch_size=2, max_length=96, learning_rate=1e-3,
        max_steps=2, save_steps=2, **SMALL_LORA)
    r = main(cfg, log=lambda _: None)
    assert r.method == method and r.steps == 2 and r.weights_changed and not r.stopped_early
    assert [s for s, _ in r.loss_history] == [1, 2]
    assert all(math.isfinite(loss) for _, loss in r.loss_history)
    assert "rewards/margins" in r.last_train_metrics
    state = _lora_state(Path(r.adapter_dir))
    assert any(k.endswith("lora_B.weight") and state[k].abs().sum() > 0 for k in state)  # B starts at 0: it moved


def test_fit_prompt_drops_oldest_messages(base_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    history = []
    for i in range(6):
        history += [{"role": "user", "content": f"Question {i}: " + "tell me more " * 10},
                    {"role": "assistant", "content": f"Answer {i}: " + "here is more " * 10}]
    messages = [*history, {"role": "user", "content": "And the final question?"}]
    short = [{"role": "user", "content": "Hi"}]
    assert fit_prompt(tokenizer, short, 64) is short

    fitted = fit_prompt(tokenizer, messages, 80)
    text = tokenizer.apply_chat_template(fitted, add_generation_prompt=True, tokenize=False)
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= 80
    assert fitted[-1] == messages[-1] and fitted[0]["role"] == "user" and fitted == messages[-len(fitted):]

    huge = [{"role": "user", "content": "word " * 500 + "THE END"}]
    cut = fit_prompt(tokenizer, huge, 40)
    assert cut[0]["content"].endswith("THE END") and len(cut[0]["content"]) < len(huge[0]["content"])


# --------------------------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kto_run(base_model_dir, tmp_path_factory):
    """KTO with evaluation every step and an early stop forced by an unreachable improvement threshold."""
    import mlflow

    from feedback_pipeline.training.chat_preference import main

    work = tmp_path_factory.mktemp("kto")
    cfg = PreferenceConfig(
        base_model_path=str(base_model_dir), method="kto",
        train_file=str(_write(work / "train.jsonl", _kto_rows())),
        eval_file=str(_write(work / "eval.jsonl", _kto_rows(QA[:1]))),
        output_dir=str(work / "adapter"), max_steps=4, per_device_train_batch_size=2, max_length=96, **SMALL_LORA,
        learning_rate=1e-3, eval_steps=1, save_steps=1, early_stopping_patience=1, early_stopping_threshold=1e9,
    )
    lines: list[str] = []
    previous_uri = mlflow.get_tracking_uri()
    use_tracking(f"sqlite:///{work / 'mlflow.db'}", str(work / "artifacts"), "test")
    try:
        with mlflow.start_run() as run:
            result = main(cfg, log=lines.append)
        client = mlflow.tracking.MlflowClient()
        metrics = {k: client.get_metric_history(run.info.run_id, k) for k in ("loss", "eval_loss", "rewards/margins")}
    finally:
        mlflow.set_tracking_uri(previous_uri)
    return SimpleNamespace(cfg=cfg, result=result, lines=lines, mlflow=metrics)


def test_kto_trains_and_stops_early(kto_run):
    r, cfg = kto_run.result, kto_run.cfg
    assert r.method == "kto" and r.weights_changed and r.trainable_params > 0
    assert all(math.isfinite(loss) for _, loss in r.loss_history) and math.isfinite(r.final_train_loss)
    # Patience 1 with an unreachable threshold: the 2nd evaluation is "no improvement", so training stops at step 2.
    # The better of the two checkpoints (lower eval_loss) is loaded back and saved as the adapter.
    assert r.stopped_early and r.steps == 2 and [s for s, _ in r.eval_history] == [1, 2]
    best_step, best_loss = min(r.eval_history, key=lambda e: e[1])
    assert r.best_checkpoint.endswith(f"checkpoint-{best_step}")
    assert r.eval_loss == pytest.approx(best_loss)
    assert (r.desirable_weight, r.undesirable_weight) == (pytest.approx(7 / 6, rel=1e-3), 1.0)  # 6 liked / 6 disliked
    assert r.train_tokens > 0 and r.tokens_per_s > 0

    out = Path(r.adapter_dir)
    assert (out / "adapter_model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    story = json.loads((out / "training_config.json").read_text())
    assert story["steps"] == 2 and story["base_model_path"] == str(Path(cfg.base_model_path).resolve())
    assert len(story["train_file_sha256"]) == 64 and story["config"]["method"] == "kto"
    # the saved adapter is the best checkpoint's
    best = _lora_state(Path(r.best_checkpoint))
    final = _lora_state(out)
    assert best.keys() == final.keys() and all(torch.equal(best[k], final[k]) for k in best)
    assert json.loads((Path(r.best_checkpoint) / "training_config.json").read_text())["steps"] == best_step

    assert [m.step for m in kto_run.mlflow["loss"]] == [1, 2]
    assert kto_run.mlflow["eval_loss"] and kto_run.mlflow["rewards/margins"]
    assert "KTO started: 4 steps" in kto_run.lines


class _KillAfter(TrainerCallback):
    """Stops training after a given step (its checkpoint written): what a killed process leaves behind."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


@pytest.fixture(scope="module")
def dpo_run(base_model_dir, tmp_path_factory):
    """A 3-step DPO run killed after step 2 (checkpoint per step), then restarted with resume=True."""
    from feedback_pipeline.training.chat_preference import main

    work = tmp_path_factory.mktemp("dpo")
    train_file = _write(work / "train.jsonl", _dpo_rows())
    common = dict(base_model_path=str(base_model_dir), method="dpo", train_file=str(train_file),
                  output_dir=str(work / "adapter"), per_device_train_batch_size=1, max_length=96,
                  learning_rate=1e-3, save_steps=1, max_steps=3, **SMALL_LORA)
    first = main(PreferenceConfig(**common), log=lambda _: None, extra_callbacks=[_KillAfter(2)])
    first_adapter = _lora_state(Path(first.adapter_dir))
    checkpoints = sorted(p.name for p in Path(first.adapter_dir).glob("checkpoint-*"))
    # A run killed while writing checkpoint-9 leaves a folder without trainer state: it must be skipped.
    (work / "adapter" / "checkpoint-9").mkdir()
    lines: list[str] = []
    second = main(PreferenceConfig(**common, resume=True), log=lines.append)
    return SimpleNamespace(first=first, first_adapter=first_adapter, checkpoints=checkpoints, second=second,
                           lines=lines, common=common, work=work)


def test_dpo_trains(dpo_run):
    r = dpo_run.first
    assert r.method == "dpo" and r.steps == 2 and r.weights_changed and r.stopped_early
    assert all(math.isfinite(loss) for _, loss in r.loss_history)
    assert r.loss_history[0][1] == pytest.approx(math.log(2), abs=1e-3)  # zero-initialised LoRA: policy == reference
    assert "rewards/margins" in r.last_train_metrics and r.eval_loss is None
    assert dpo_run.checkpoints == ["checkpoint-1", "checkpoint-2"]


def test_dpo_resumes_from_last_complete_checkpoint(dpo_run):
    first, second = dpo_run.first, dpo_run.second
    assert second.resumed_from.endswith("checkpoint-2")
    assert any("resuming from" in line and line.endswith("checkpoint-2") for line in dpo_run.lines)
    assert "DPO resumed at step 2" in dpo_run.lines
    assert second.steps == 3 and not second.stopped_early
    # Steps 1-2 come from the restored trainer state; only step 3 was trained now.
    assert [s for s, _ in second.loss_history] == [1, 2, 3]
    assert [v for _, v in second.loss_history[:2]] == pytest.approx([v for _, v in first.loss_history])
    assert math.isfinite(second.loss_history[-1][1])
    resumed = _lora_state(Path(second.adapter_dir))
    assert any(not torch.equal(resumed[k], dpo_run.first_adapter[k]) for k in resumed)  # step 3 moved the weights
    assert json.loads((Path(second.adapter_dir) / "training_config.json").read_text())["steps"] == 3
    assert last_complete_checkpoint(second.adapter_dir).name == "checkpoint-3"


def test_resuming_a_finished_run_trains_no_further(dpo_run):
    """A finished run asked to resume (a retried materialization) keeps its weights and its 3 steps."""
    from feedback_pipeline.training.chat_preference import main

    finished = _lora_state(Path(dpo_run.second.adapter_dir))
    lines: list[str] = []
    again = main(PreferenceConfig(**dpo_run.common, resume=True), log=lines.append)
    assert again.steps == 3 and [s for s, _ in again.loss_history] == [1, 2, 3]
    assert again.loss_history == dpo_run.second.loss_history  # restored from the checkpoint, not retrained
    kept = _lora_state(Path(again.adapter_dir))
    assert kept.keys() == finished.keys() and all(torch.equal(kept[k], finished[k]) for k in kept)
    assert any("already finished" in line for line in lines)


def test_resume_guards(dpo_run):
    from feedback_pipeline.training.chat_preference import main

    with pytest.raises(FileExistsError, match="resume=True"):
        main(PreferenceConfig(**dpo_run.common), log=lambda _: None)
    other = _write(dpo_run.work / "other.jsonl", _dpo_rows(QA[:3]))
    with pytest.raises(ValueError, match="train_file_sha256"):
        main(PreferenceConfig(**{**dpo_run.common, "train_file": str(other), "resume": True}), log=lambda _: None)


# --------------------------------------------------------------------------------------------------------------------
# evaluation and export
# --------------------------------------------------------------------------------------------------------------------


def test_preference_accuracy_is_bounded_and_finite(dpo_run, base_model_dir):
    from feedback_pipeline.evaluation.preference_eval import preference_accuracy

    pairs = _dpo_rows(QA[:4])
    m = preference_accuracy(base_model_dir, dpo_run.second.adapter_dir, pairs, max_length=96, batch_size=4,
                            bootstrap=200)
    assert m["n_pairs"] == 4
    for key in ("implicit_accuracy", "base_accuracy", "candidate_accuracy"):
        assert 0.0 <= m[f"{key}_ci_low"] <= m[key] <= m[f"{key}_ci_high"] <= 1.0
    assert -1.0 <= m["accuracy_difference"] <= 1.0
    # Every figure is finite but those of an empty length stratum (NaN: no pair to average).
    empty = [s for s in ("longer", "shorter", "tie") if m[f"n_{s}"] == 0]
    assert m["n_longer"] + m["n_shorter"] + m["n_tie"] == 4
    assert all(math.isfinite(v) for k, v in m.items() if not any(k.endswith(f"_{s}") or f"_{s}_ci" in k for s in empty))
    for key in ("implicit_norm_accuracy", "candidate_sum_accuracy", "length_rule_accuracy"):
        assert 0.0 <= m[key] <= 1.0
    # The implicit margin is the mean reward gap by definition.
    assert m["implicit_margin"] == pytest.approx(m["mean_reward_chosen"] - m["mean_reward_rejected"])


def test_score_pairs_keeps_the_pairs_order(base_model_dir):
    """score_pairs batches by length: the scores still come back in the order of the pairs given."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from feedback_pipeline.evaluation.preference_eval import score_pairs

    pairs = _dpo_rows(QA[:5])
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    forward = score_pairs(model, tokenizer, pairs, max_length=96, batch_size=1)  # batch 1: no padding at all
    backward = score_pairs(model, tokenizer, pairs[::-1], max_length=96, batch_size=3)
    assert forward.chosen_tokens.tolist() == backward.chosen_tokens[::-1].tolist()
    assert forward.chosen_sum == pytest.approx(backward.chosen_sum[::-1], abs=1e-3)
    assert forward.rejected_sum == pytest.approx(backward.rejected_sum[::-1], abs=1e-3)
    assert not np.allclose(forward.chosen_sum, forward.rejected_sum)


def test_merge_and_export_matches_adapter(dpo_run, base_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from feedback_pipeline.training.chat_preference import merge_and_export

    adapter = dpo_run.second.adapter_dir
    out = merge_and_export(base_model_dir, adapter, tmp_path / "merged")
    assert (out / "config.json").is_file() and (out / "merge_provenance.json").is_file()
    assert not list(out.glob("adapter_*"))

    tokenizer = AutoTokenizer.from_pretrained(out)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32), adapter).eval()
    text = tokenizer.apply_chat_template(_user("What is the capital of Italy?"), add_generation_prompt=True,
                                         tokenize=False)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        merged_logits, adapter_logits = merged(**inputs).logits, peft_model(**inputs).logits
        with peft_model.disable_adapter():
            base_logits = peft_model(**inputs).logits
        merge_error = (merged_logits - adapter_logits).abs().max().item()  # fp32 rounding of W + BA only
        adapter_effect = (adapter_logits - base_logits).abs().max().item()
        assert merge_error < 1e-3 and adapter_effect > 10 * merge_error, (merge_error, adapter_effect)
        kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        assert torch.equal(merged.generate(**inputs, **kwargs), peft_model.generate(**inputs, **kwargs))
