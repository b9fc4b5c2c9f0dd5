"""Chat model preparation, weighted LoRA SFT and base-vs-candidate scoring, on the bundled SmolLM2-135M.

Runs on a 2-core CPU in about 1.5 minutes: the GGUF conversion (~30 s) happens once per session and the SFT run
is 3 steps on tiny examples.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from feedback_pipeline.training import base_model as base_model_mod
from feedback_pipeline.training.base_model import MARKER_NAME, prepare_base_chat_model
from feedback_pipeline.tracking.registry import use_tracking

QA = [
    ("What is 2+2?", "2+2 equals 4.", 1.0),
    ("Name a primary color.", "Red is a primary color.", 0.5),
    ("What is the capital of Italy?", "The capital of Italy is Rome.", 2.0),
    ("Say hello in French.", "Bonjour!", 1.0),
    ("What color is the sky on a clear day?", "The sky is blue on a clear day.", 1.0),
    ("How many legs does a spider have?", "A spider has eight legs.", 1.5),
    ("What is H2O?", "H2O is water.", 1.0),
    ("Translate 'cat' to Spanish.", "'Cat' in Spanish is 'gato'.", 0.2),
]


def _write_jsonl(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for question, answer, weight in rows:
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            fh.write(json.dumps({"messages": messages, "weight": weight}) + "\n")
    return path


@pytest.fixture(scope="session")
def trained(base_model_dir, tmp_path_factory):
    """One short SFT run (inside an MLflow run, to check the step logger), shared by the tests that need an adapter."""
    import mlflow

    from feedback_pipeline.training.chat_sft import ChatSFTConfig, main

    work = tmp_path_factory.mktemp("sft")
    cfg = ChatSFTConfig(
        base_model_path=str(base_model_dir),
        train_file=str(_write_jsonl(work / "train.jsonl", QA)),
        eval_file=str(_write_jsonl(work / "eval.jsonl", QA[:2])),
        output_dir=str(work / "adapter"),
        max_steps=3,
        per_device_train_batch_size=2,
        max_length=128,
    )
    lines: list[str] = []
    previous_uri = mlflow.get_tracking_uri()
    use_tracking(f"sqlite:///{work / 'mlflow.db'}", str(work / "artifacts"), "test")
    try:
        with mlflow.start_run() as run:
            result = main(cfg, log=lines.append)
        client = mlflow.tracking.MlflowClient()
        history = {key: client.get_metric_history(run.info.run_id, key) for key in ("loss", "grad_norm", "eval_loss")}
    finally:
        mlflow.set_tracking_uri(previous_uri)
    return SimpleNamespace(cfg=cfg, result=result, lines=lines, mlflow_history=history)


# --------------------------------------------------------------------------------------------------------------------
# weighted loss math
# --------------------------------------------------------------------------------------------------------------------


def _token_nll(row: list[float], label: int) -> float:
    return -(row[label] - math.log(sum(math.exp(x) for x in row)))


def test_weighted_example_nll_matches_hand_computation():
    from feedback_pipeline.training.chat_sft import weighted_example_nll

    logits = torch.tensor(
        [
            [[2.0, 0.0, -1.0], [0.5, 0.5, 3.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]],
            [[0.0, 1.0, 0.0], [1.0, -2.0, 0.5], [0.0, 4.0, 1.0], [9.0, 9.0, 9.0]],
        ]
    )
    # Causal shift: the label at position t is predicted by the logits at position t-1.
    labels = torch.tensor([[-100, 0, 2, -100], [-100, -100, 1, 1]])
    nll0 = (_token_nll([2.0, 0.0, -1.0], 0) + _token_nll([0.5, 0.5, 3.0], 2)) / 2
    nll1 = (_token_nll([1.0, -2.0, 0.5], 1) + _token_nll([0.0, 4.0, 1.0], 1)) / 2

    weighted = weighted_example_nll(logits, labels, torch.tensor([1.0, 3.0]))
    assert weighted.item() == pytest.approx((1.0 * nll0 + 3.0 * nll1) / 4.0, rel=1e-6)

    uniform = weighted_example_nll(logits, labels, torch.tensor([1.0, 1.0]))
    assert uniform.item() == pytest.approx((nll0 + nll1) / 2, rel=1e-6)
    assert abs(weighted.item() - uniform.item()) > 0.1  # the weights matter

    # An example without scored tokens must not dilute the denominator, whatever its weight.
    labels_one_empty = torch.tensor([[-100, 0, 2, -100], [-100, -100, -100, -100]])
    only_first = weighted_example_nll(logits, labels_one_empty, torch.tensor([1.0, 5.0]))
    assert only_first.item() == pytest.approx(nll0, rel=1e-6)

    with pytest.raises(ValueError):
        weighted_example_nll(logits, labels, torch.tensor([0.0, 0.0]))


def test_config_from_dict():
    from feedback_pipeline.training.chat_sft import ChatSFTConfig

    cfg = ChatSFTConfig.from_dict(
        {"base_model_path": "b", "train_file": "t", "output_dir": "o", "lora_target_modules": "q_proj, v_proj"}
    )
    assert cfg.lora_target_modules == ["q_proj", "v_proj"]
    assert (cfg.max_steps, cfg.per_device_train_batch_size, cfg.learning_rate, cfg.eval_file) == (12, 4, 2e-4, None)
    with pytest.raises(ValueError, match="Unknown"):
        ChatSFTConfig.from_dict({"base_model_path": "b", "train_file": "t", "output_dir": "o", "max_step": 3})



def test_cli_reads_the_config_file_and_flags_override_it(tmp_path, capsys):
    """The trainers' command line (TrlParser): --config gives the fields, a flag overrides one, unknown keys fail."""
    from feedback_pipeline.training.chat_preference import PreferenceConfig
    from feedback_pipeline.training.common import run_cli

    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"base_model_path": "b", "train_file": "t", "output_dir": "o", "method": "dpo",
                                "lora_target_modules": "q_proj,v_proj", "early_stopping_patience": None}))
    seen = []

    def fake_main(cfg):
        seen.append(cfg)
        return SimpleNamespace(to_dict=lambda: {"steps": cfg.max_steps})

    run_cli(PreferenceConfig, fake_main, None, ["--config", str(path), "--max_steps", "3", "--resume"])
    cfg = seen[0]
    assert (cfg.method, cfg.max_steps, cfg.resume, cfg.lora_target_modules) == ("dpo", 3, True, ["q_proj", "v_proj"])
    assert json.loads(capsys.readouterr().out) == {"steps": 3}
    path.write_text(json.dumps({"base_model_path": "b", "train_file": "t", "output_dir": "o", "max_stepz": 3}))
    with pytest.raises(ValueError, match="max_stepz"):
        run_cli(PreferenceConfig, fake_main, None, ["--config", str(path)])
    with pytest.raises(SystemExit):  # method is a Literal: argparse offers its choices only
        run_cli(PreferenceConfig, fake_main, None, ["--base_model_path", "b", "--train_file", "t", "--output_dir", "o",
                                                    "--method", "ppo"])

# --------------------------------------------------------------------------------------------------------------------
# base model preparation
# --------------------------------------------------------------------------------------------------------------------


def test_prepare_base_chat_model_is_idempotent(base_model_dir):
    assert (base_model_dir / "config.json").is_file()
    assert (base_model_dir / "model.safetensors").is_file()
    assert (base_model_dir / "generation_config.json").is_file()
    assert json.loads((base_model_dir / MARKER_NAME).read_text())["source_size"] > 0
    assert "quantization_config" not in json.loads((base_model_dir / "config.json").read_text())

    weights = base_model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert prepare_base_chat_model(base_model_dir) == base_model_dir
    assert weights.stat().st_mtime_ns == before  # not converted again

    # An explicit local HF folder is used as is.
    assert prepare_base_chat_model(Path("/unused"), source=str(base_model_dir)) == base_model_dir


def test_prepare_base_chat_model_rejects_bad_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_base_chat_model(tmp_path / "target", source=str(tmp_path / "missing-model"))
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        prepare_base_chat_model(tmp_path / "target", source=str(tmp_path / "not-a-model"))
    assert not (tmp_path / "target").exists()


def test_half_written_conversion_is_not_taken_as_complete(base_model_dir, tmp_path):
    """Only a folder whose marker was written last (after every file) counts as converted."""
    expected = base_model_mod._marker_for(base_model_mod.locate_bundled_gguf())
    assert base_model_mod._is_complete(base_model_dir, expected)
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text((base_model_dir / "config.json").read_text())  # crashed before the marker
    assert not base_model_mod._is_complete(half, expected)
    (half / MARKER_NAME).write_text(json.dumps({**expected, "source_size": 1}))  # marker of another source file
    assert not base_model_mod._is_complete(half, expected)


# --------------------------------------------------------------------------------------------------------------------
# weighted SFT
# --------------------------------------------------------------------------------------------------------------------


def test_weighted_trainer_keeps_weights_masks_prompt_and_accumulates_exactly(base_model_dir, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    from feedback_pipeline.training.chat_sft import WeightedSFTTrainer, load_chat_examples, weighted_example_nll

    rows = load_chat_examples(_write_jsonl(tmp_path / "train.jsonl", QA[:4]))
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    # One optimizer step of 2 micro-batches of 2, learning rate 0 and no dropout: the logged loss must equal the
    # weighted loss of the 4 examples taken as one batch (the denominator spans the whole accumulation group).
    args = SFTConfig(
        output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2, gradient_accumulation_steps=2,
        learning_rate=0.0, logging_steps=1, max_length=128, bf16=False, activation_checkpointing=False, use_cpu=True,
        report_to=[], save_strategy="no", disable_tqdm=True,
    )
    trainer = WeightedSFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_dropout=0.0, target_modules=["q_proj"], task_type="CAUSAL_LM"),
    )

    # The weight column survives trl's column pruning and the collator, aligned with its example.
    batch = next(iter(trainer.get_train_dataloader()))
    by_answer = {r["completion"][0]["content"]: r["weight"] for r in rows}
    for i in range(batch["input_ids"].shape[0]):
        learned = tokenizer.decode(batch["labels"][i][batch["labels"][i] != -100])
        answer = learned.split("<|im_end|>")[0]
        assert answer in by_answer, learned  # only the assistant answer (+ end of turn) is learned
        assert batch["weight"][i].item() == by_answer[answer]

    trainer.train()
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    full = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    trainer.model.eval()
    with torch.no_grad():
        logits = trainer.model(input_ids=full["input_ids"], attention_mask=full["attention_mask"]).logits
        expected = weighted_example_nll(logits, full["labels"], full["weight"]).item()
        in_eval = trainer.compute_loss(trainer.model, dict(full)).item()
    assert logged == [pytest.approx(expected, rel=1e-4)]
    assert in_eval == pytest.approx(expected, rel=1e-5)


def test_sft_run_trains_and_saves_adapter(trained, base_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result, cfg = trained.result, trained.cfg
    assert result.steps == 3
    assert [step for step, _ in result.loss_history] == [1, 2, 3]
    assert all(math.isfinite(loss) for _, loss in result.loss_history)
    assert math.isfinite(result.final_train_loss) and result.final_train_loss == result.loss_history[-1][1]
    assert result.eval_loss is not None and math.isfinite(result.eval_loss)
    assert result.weights_changed
    assert result.trainable_params > 0 and result.train_runtime_s > 0

    adapter = Path(result.adapter_dir)
    saved = json.loads((adapter / "training_config.json").read_text())
    assert saved["steps"] == 3
    assert saved["train_file_sha256"] == hashlib.sha256(Path(cfg.train_file).read_bytes()).hexdigest()
    assert saved["config"]["max_length"] == 128
    assert (adapter / "tokenizer_config.json").is_file()

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model_dir), str(adapter))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # lora_B starts at zero: nonzero means trained

    # Progress lines and MLflow per-step metrics.
    assert any("step 3/3" in line and "ETA" in line for line in trained.lines)
    assert [m.step for m in trained.mlflow_history["loss"]] == [1, 2, 3]
    assert [m.value for m in trained.mlflow_history["loss"]] == pytest.approx([loss for _, loss in result.loss_history])
    assert len(trained.mlflow_history["grad_norm"]) == 3
    assert [m.value for m in trained.mlflow_history["eval_loss"]] == pytest.approx([result.eval_loss])


def test_sft_rejects_empty_data(base_model_dir, tmp_path):
    from feedback_pipeline.training.chat_sft import ChatSFTConfig, main

    (tmp_path / "empty.jsonl").write_text("\n")
    cfg = ChatSFTConfig(
        base_model_path=str(base_model_dir), train_file=str(tmp_path / "empty.jsonl"), output_dir=str(tmp_path / "o")
    )
    with pytest.raises(ValueError, match="no examples"):
        main(cfg)


# --------------------------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------------------------


def test_compare_chat_models(trained, base_model_dir):
    from feedback_pipeline.evaluation.chat_eval import compare_chat_models

    liked = [{"prompt": [{"role": "user", "content": q}], "response": a} for q, a, _ in QA[:3]]
    disliked = [
        {"prompt": [{"role": "user", "content": "What is 2+2?"}], "response": "5, obviously."},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}],
         "response": "A chair."},
    ]
    metrics = compare_chat_models(base_model_dir, trained.result.adapter_dir, liked, disliked, bootstrap=200)
    for key in ("base_nll", "candidate_nll", "base_perplexity", "candidate_perplexity", "preference_margin",
                "preference_margin_ci_low", "preference_margin_ci_high"):
        assert math.isfinite(metrics[key]), key
    assert metrics["n_liked"] == 3 and metrics["n_disliked"] == 2
    assert metrics["base_perplexity"] == pytest.approx(math.exp(metrics["base_nll"]))
    assert metrics["preference_margin_ci_low"] <= metrics["preference_margin"] <= metrics["preference_margin_ci_high"]
    assert metrics["base_nll"] != metrics["candidate_nll"]  # the adapter is active for the candidate only

    with pytest.raises(ValueError):
        compare_chat_models(base_model_dir, trained.result.adapter_dir, [], disliked)


def test_response_logprobs_keeps_response_when_truncating(base_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from feedback_pipeline.evaluation.chat_eval import response_logprobs

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    example = {"prompt": [{"role": "user", "content": "Tell me about water. " * 30}], "response": "H2O is water."}
    (full_sum, full_n), = response_logprobs(model, tokenizer, [example], max_length=512)
    (cut_sum, cut_n), = response_logprobs(model, tokenizer, [example], max_length=24)
    assert full_n == cut_n == len(tokenizer("H2O is water.", add_special_tokens=False)["input_ids"]) + 1  # + <|im_end|>
    assert full_sum < 0 and cut_sum < 0 and math.isfinite(cut_sum)
    # Batched (padded) and one-by-one scores agree.
    short = {"prompt": [{"role": "user", "content": "Hi"}], "response": "Hello!"}
    together = response_logprobs(model, tokenizer, [example, short], max_length=512, batch_size=2)
    alone = response_logprobs(model, tokenizer, [short], max_length=512)
    assert together[0][0] == pytest.approx(full_sum, rel=1e-4)
    assert together[1][0] == pytest.approx(alone[0][0], rel=1e-4)


# --------------------------------------------------------------------------------------------------------------------
# checkpoints: a killed SFT run resumes; early stopping keeps the best checkpoint
# --------------------------------------------------------------------------------------------------------------------


class _StopAfter:
    """A TrainerCallback that ends training once a checkpoint at ``step`` is written: what a killed process leaves."""

    def __new__(cls, step: int):
        from transformers import TrainerCallback

        class StopAfter(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                if state.global_step >= step:
                    control.should_training_stop = True

        return StopAfter()


def test_sft_resumes_a_killed_run_and_refuses_other_data(base_model_dir, tmp_path):
    from feedback_pipeline.training.chat_sft import ChatSFTConfig, main
    from feedback_pipeline.training.checkpoints import last_complete_checkpoint

    common = dict(base_model_path=str(base_model_dir), train_file=str(_write_jsonl(tmp_path / "train.jsonl", QA)),
                  output_dir=str(tmp_path / "adapter"), max_steps=3, per_device_train_batch_size=2, max_length=96,
                  save_steps=1, learning_rate=1e-3)
    first = main(ChatSFTConfig(**common), extra_callbacks=[_StopAfter(2)], log=lambda _: None)
    assert first.steps == 2 and first.stopped_early and first.weights_changed
    assert last_complete_checkpoint(common["output_dir"]).name == "checkpoint-2"
    with pytest.raises(FileExistsError, match="resume=True"):
        main(ChatSFTConfig(**common), log=lambda _: None)
    other = _write_jsonl(tmp_path / "other.jsonl", QA[:4])
    with pytest.raises(ValueError, match="train_file_sha256"):
        main(ChatSFTConfig(**{**common, "train_file": str(other), "resume": True}), log=lambda _: None)

    lines: list[str] = []
    second = main(ChatSFTConfig(**common, resume=True), log=lines.append)
    assert second.resumed_from.endswith("checkpoint-2") and any("resuming from" in line for line in lines)
    assert second.steps == 3 and not second.stopped_early
    assert [s for s, _ in second.loss_history] == [1, 2, 3]  # steps 1-2 restored, step 3 trained now
    assert [v for _, v in second.loss_history[:2]] == pytest.approx([v for _, v in first.loss_history])
    assert json.loads((tmp_path / "adapter" / "training_config.json").read_text())["resumed_from"].endswith("checkpoint-2")


def test_sft_early_stopping_keeps_the_best_checkpoint(base_model_dir, tmp_path):
    from feedback_pipeline.training.chat_sft import ChatSFTConfig, main

    # A learning rate this high makes eval loss climb after the first steps, so patience 1 stops the run.
    cfg = ChatSFTConfig(base_model_path=str(base_model_dir), train_file=str(_write_jsonl(tmp_path / "t.jsonl", QA)),
                        eval_file=str(_write_jsonl(tmp_path / "e.jsonl", QA[:3])), output_dir=str(tmp_path / "a"),
                        max_steps=8, per_device_train_batch_size=2, max_length=96, learning_rate=0.05,
                        eval_steps=1, save_steps=1, early_stopping_patience=1)
    result = main(cfg, log=lambda _: None)
    assert result.stopped_early and result.steps < 8 and result.best_checkpoint is not None
    assert math.isfinite(result.eval_loss)
    with pytest.raises(ValueError, match="needs an eval_file"):
        ChatSFTConfig(base_model_path="x", train_file="x", output_dir="x", early_stopping_patience=1)
