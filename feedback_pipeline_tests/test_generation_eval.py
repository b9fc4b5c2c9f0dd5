"""Release-gate building blocks: batched greedy generation with named adapters, guardrails, the gold set and its
scores. The generation tests run the real SmolLM2-135M (converted once per session by ``base_model_dir``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from feedback_pipeline.evaluation.generation import ChatGenerator, guardrail_arrays, guardrail_metrics
from feedback_pipeline.evaluation.gold import GoldSetError, load_gold_set, reference_streams, score_gold, seed_gold_set

PROMPTS = [  # four different prompt lengths, one with a system message: left padding has work to do
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "What is the capital of France? Answer briefly please."}],
    [{"role": "user", "content": "Explain in two sentences why the sky is blue, and name Rayleigh scattering."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "List three fruits."}],
]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the cores are shared; tiny batches gain little from a second thread
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def generator(base_model_dir, tmp_path_factory):
    """Base as "v0", a freshly initialised LoRA (lora_B = 0, so it is the identity) and a perturbed one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    lora_b = [param for name, param in model.named_parameters() if "lora_B" in name]
    assert lora_b and all(torch.count_nonzero(p) == 0 for p in lora_b)  # peft's default init: a no-op adapter
    adapters = {"fresh": tmp_path_factory.mktemp("fresh")}
    model.save_pretrained(adapters["fresh"])
    with torch.no_grad():
        for param in lora_b:
            param.normal_(0.0, 0.5)
    adapters["perturbed"] = tmp_path_factory.mktemp("perturbed")
    model.save_pretrained(adapters["perturbed"])
    return ChatGenerator(base_model_dir, {"v0": None, **adapters}, max_prompt_tokens=64)


@pytest.fixture(scope="module")
def base_answers(generator):
    return generator.generate("v0", PROMPTS, max_new_tokens=12, batch_size=4)


def test_batched_generation_equals_one_at_a_time(generator, base_answers):
    one_by_one = generator.generate("v0", PROMPTS, max_new_tokens=12, batch_size=1)
    assert base_answers == one_by_one
    assert all(answers.strip() for answers in base_answers)
    assert "<|im_end|>" not in "".join(base_answers) and "<|im_start|>" not in "".join(base_answers)
    assert generator.last_stats.prompts == 4 and 4 <= generator.last_stats.new_tokens <= 48
    # deterministic: the same call again gives the same answers
    assert generator.generate("v0", PROMPTS, max_new_tokens=12, batch_size=4) == base_answers


def test_named_adapters_switch_and_zero_lora_is_the_base(generator, base_answers):
    perturbed = generator.generate("perturbed", PROMPTS, max_new_tokens=12, batch_size=4)
    assert perturbed != base_answers  # the adapter really is active when named
    # switching from the perturbed adapter to the zero one: identical to the base
    assert generator.generate("fresh", PROMPTS, max_new_tokens=12, batch_size=4) == base_answers
    generator.generate("perturbed", PROMPTS[:1], max_new_tokens=2)
    # switching back to the bare base is not contaminated by the last active adapter
    assert generator.generate("v0", PROMPTS[:2], max_new_tokens=12, batch_size=2) == base_answers[:2]
    with pytest.raises(KeyError, match="unknown model"):
        generator.generate("nope", PROMPTS)


def test_long_prompts_are_cut_from_the_left_keeping_the_last_user_turn(generator):
    history = []
    for i in range(5):
        history += [{"role": "user", "content": f"Question {i}: " + "tell me more " * 12},
                    {"role": "assistant", "content": f"Answer {i}: " + "here is more " * 12}]
    long_prompt = [*history, {"role": "user", "content": "FINAL QUESTION?"}]
    (ids,) = generator.encode([long_prompt])
    assert len(ids) <= generator.max_prompt_tokens
    assert "FINAL QUESTION?" in generator.tokenizer.decode(ids)
    assert "Question 0" not in generator.tokenizer.decode(ids)
    (answer,) = generator.generate("v0", [long_prompt], max_new_tokens=4)
    assert isinstance(answer, str)


def test_guardrail_metrics_on_hand_made_answers(generator):
    answers = [
        "I'm sorry, but I can't help with that request.",
        "the same words again and again " * 6,  # 36 words, 4-gram repetition ratio 0.8
        "",
        "Open Settings, then Security, and choose Reset password.",
    ]
    m = guardrail_metrics(answers)
    assert m["n_answers"] == 4
    assert m["refusal_rate"] == 0.25 and m["repetition_rate"] == 0.25 and m["empty_rate"] == 0.25
    assert m["mean_words"] == (9 + 36 + 0 + 8) / 4 and m["median_words"] == 8.5
    arrays = guardrail_arrays(answers)
    assert arrays["refusal"].tolist() == [1, 0, 0, 0] and arrays["repetitive"].tolist() == [0, 1, 0, 0]
    assert arrays["empty"].tolist() == [0, 0, 1, 0] and arrays["words"].tolist() == [9, 36, 0, 8]
    with_tokens = guardrail_metrics(answers, generator.tokenizer)
    counts = [len(generator.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
    assert with_tokens["mean_tokens"] == np.mean(counts) and with_tokens["median_tokens"] == np.median(counts)
    with pytest.raises(ValueError):
        guardrail_metrics([])


def _kto(prompt: str, answer: str, label: bool, fid: int) -> dict:
    return {"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": answer}],
            "label": label, "feedback_id": fid}


def test_gold_seed_groups_liked_answers_and_never_overwrites(tmp_path):
    rows = [_kto("reset password?", "Open Settings.", True, 1), _kto("reset password?", "Use the link.", True, 2),
            _kto("reset password?", "No idea.", False, 3), _kto("delete account?", "Not possible.", False, 4),
            _kto("export data?", "Settings, then Export.", True, 5)]
    path = tmp_path / "gold" / "gold.jsonl"
    gold = seed_gold_set(path, rows, n=50, seed=0)
    by_prompt = {item.prompt[0]["content"]: item for item in gold.items}
    assert set(by_prompt) == {"reset password?", "export data?"}  # liked only
    assert by_prompt["reset password?"].references == ("Open Settings.", "Use the link.")
    assert {item.source for item in gold.items} == {"held_out_liked"} and len(gold.version) == 12
    assert len(seed_gold_set(tmp_path / "small.jsonl", rows, n=1, seed=0).items) == 1

    curated = {"id": "c1", "prompt": [{"role": "user", "content": "hello?"}], "references": ["Hi!"],
               "source": "curated", "added_at": "2026-12-01"}
    with path.open("a") as fh:
        fh.write(json.dumps(curated) + "\n")
    edited_bytes = path.read_bytes()
    again = seed_gold_set(path, [_kto("other?", "Other.", True, 9)], n=50, seed=1)
    assert path.read_bytes() == edited_bytes  # the curated file is returned, not rewritten
    assert again.version != gold.version and again.items[-1].id == "c1" and len(again.items) == 3
    assert not list(path.parent.glob(".*.tmp"))
    with pytest.raises(ValueError, match="no liked answer"):
        seed_gold_set(tmp_path / "none.jsonl", rows[2:4])


@pytest.mark.parametrize("bad_line, reason", [
    ("{not json", "Expecting property name"),
    ('{"id": "x", "prompt": [], "references": ["r"], "source": "curated", "added_at": "2026-12-01"}', "'prompt'"),
    ('{"id": "x", "prompt": [{"role": "user", "content": "q"}], "references": [], "source": "curated", '
     '"added_at": "2026-12-01"}', "'references'"),
    ('{"id": "x", "prompt": [{"role": "user", "content": "q"}], "references": ["r"], "source": "web", '
     '"added_at": "2026-12-01"}', "'source'"),
    ('{"id": "g1", "prompt": [{"role": "user", "content": "q"}], "references": ["r"], "source": "curated", '
     '"added_at": "2026-12-01"}', "duplicate id 'g1' \\(first on line 1\\)"),
])
def test_bad_gold_line_raises_naming_line_and_reason(tmp_path, bad_line, reason):
    good = {"id": "g1", "prompt": [{"role": "user", "content": "q"}], "references": ["r"], "source": "curated",
            "added_at": "2026-12-01T10:00:00+00:00"}
    path = tmp_path / "gold.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + bad_line + "\n")
    with pytest.raises(GoldSetError, match=f"gold.jsonl:3: .*{reason}"):
        load_gold_set(path)


def test_score_gold_identical_unrelated_and_best_reference():
    refs = ["Open the Settings page, then choose Security and click Reset password.",
            "The capital of France is Paris, a city on the Seine."]
    perfect = score_gold(refs, [[r] for r in refs])
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)
    assert perfect["rougeL"] == pytest.approx(1.0)
    assert perfect["sentence_chrf"].tolist() == pytest.approx([100.0, 100.0])

    unrelated = score_gold(["Bananas grow quickly in warm humid climates.", "Quantum spin is measured by Zeemans."],
                           [[r] for r in refs])
    assert unrelated["bleu"] < 5 and unrelated["chrf"] < 25 and unrelated["rougeL"] < 0.15

    hyp = ["Open the Settings page, then choose Security and click Reset password."]
    single_bad = score_gold(hyp, [["Bananas grow quickly in warm humid climates."]])
    multi = score_gold(hyp, [["Bananas grow quickly in warm humid climates.", refs[0]]])
    assert multi["bleu"] == pytest.approx(100.0) and multi["rougeL"] == pytest.approx(1.0)
    assert multi["sentence_chrf"][0] == pytest.approx(100.0) and single_bad["sentence_chrf"][0] < 25
    # padding by repetition: a second item with fewer references scores as it would alone
    assert reference_streams([["a", "b", "c"], ["x"]]) == [["a", "x"], ["b", "x"], ["c", "x"]]
    mixed = score_gold([refs[1], hyp[0]], [[refs[1]], ["Bananas grow quickly.", "Something else", refs[0]]])
    assert mixed["bleu"] == pytest.approx(100.0)
    with pytest.raises(ValueError):
        score_gold(["a"], [[]])
