"""Per-token views of the implicit reward: position profiles, matched prefixes, and token log-probs of real models."""

import numpy as np
import pytest
import torch

from feedback_pipeline.evaluation.length_diagnostics import (
    log_ratios, matched_prefix_margins, pair_token_logprobs, position_profile,
)
from feedback_pipeline.evaluation.preference_eval import _wins, score_pairs


def test_position_profile_averages_tokens_per_bucket_and_counts_answers():
    ratios = [np.arange(10, dtype=float), np.full(3, 2.0)]
    profile = position_profile(ratios, edges=(0, 4, 8))
    assert [(b["from"], b["to"]) for b in profile] == [(0, 4), (4, 8), (8, np.inf)]
    assert profile[0]["mean_log_ratio"] == pytest.approx((0 + 1 + 2 + 3 + 2 * 3) / 7)
    assert (profile[0]["tokens"], profile[0]["answers"]) == (7, 2)
    assert profile[1]["mean_log_ratio"] == pytest.approx((4 + 5 + 6 + 7) / 4) and profile[1]["answers"] == 1
    assert profile[2]["mean_log_ratio"] == pytest.approx(8.5) and profile[2]["tokens"] == 2
    assert np.isnan(position_profile([np.ones(2)], edges=(0, 4))[1]["mean_log_ratio"])  # nothing reaches token 4
    with pytest.raises(ValueError, match="start at 0"):
        position_profile(ratios, edges=(1, 4))


def test_a_reward_that_only_grows_with_position_is_at_chance_on_matched_prefixes():
    # Every token's gain depends only on its position: summed and even per-token rewards prefer the longer answer,
    # the matched-prefix margin is exactly 0 (a tie) for every pair.
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 80, size=(200, 2))
    chosen = [0.01 * np.arange(n) for n in lengths[:, 0]]
    rejected = [0.01 * np.arange(n) for n in lengths[:, 1]]
    per_token = np.array([c.mean() - r.mean() for c, r in zip(chosen, rejected)])
    longer_chosen = lengths[:, 0] > lengths[:, 1]
    unequal = lengths[:, 0] != lengths[:, 1]
    assert ((per_token > 0) == longer_chosen)[unequal].all()
    matched = matched_prefix_margins(chosen, rejected)
    assert np.allclose(matched, 0.0)
    assert _wins(matched, np.zeros_like(matched)).mean() == 0.5


def test_matched_prefix_margin_sums_the_first_m_tokens_of_each_answer():
    margins = matched_prefix_margins([np.array([1.0, 1.0, 1.0])], [np.array([0.5, 0.5, 0.5, 9.0, 9.0])])
    assert margins.tolist() == [1.5]
    with pytest.raises(ValueError, match="1 chosen but 2 rejected"):
        matched_prefix_margins([np.ones(2)], [np.ones(2), np.ones(2)])


def test_log_ratios_name_the_answer_whose_windows_differ():
    assert log_ratios([np.array([-1.0, -2.0])], [np.array([-1.5, -1.0])])[0].tolist() == [0.5, -1.0]
    with pytest.raises(ValueError, match="answer 1"):
        log_ratios([np.ones(2), np.ones(3)], [np.ones(2), np.ones(4)])


def test_token_logprobs_add_up_to_the_summed_scores_in_pair_order(base_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    pairs = [
        {"prompt": [{"role": "user", "content": "What is the capital of France?"}],
         "chosen": "Paris is the capital of France, and its largest city.", "rejected": "Lyon."},
        {"prompt": [{"role": "user", "content": "Name a colour."}],
         "chosen": [{"role": "assistant", "content": "Blue."}], "rejected": "I would rather not say which colour."},
    ]
    chosen, rejected = pair_token_logprobs(model, tokenizer, pairs, max_length=128, batch_size=3)
    summed = score_pairs(model, tokenizer, pairs, max_length=128, batch_size=3)
    assert [a.size for a in chosen] == summed.chosen_tokens.tolist()
    assert [a.size for a in rejected] == summed.rejected_tokens.tolist()
    assert [a.sum() for a in chosen] == pytest.approx(summed.chosen_sum.tolist(), rel=1e-6)
    assert [a.sum() for a in rejected] == pytest.approx(summed.rejected_sum.tolist(), rel=1e-6)
    assert all((a < 0).all() for a in chosen + rejected)
    # "Lyon." is shorter than the Paris answer: token lists are the answers', not a batch's padded rows.
    assert chosen[0].size > rejected[0].size
