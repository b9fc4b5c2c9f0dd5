"""Issue 11 PII kinds: names without cues, addresses, national ids, every card length, the no-fragment rule, the
per-field policy, the independent audit detector and the frozen-set evaluation script."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from feedback_pipeline.cleaning.pii import find_identifiers, redact, redact_with_counts
from feedback_pipeline.cleaning.pii_audit import audit_identifiers, audit_records

BENCH = Path(__file__).resolve().parents[1] / "bench"


def found(text: str, field: str = "query") -> list[tuple[str, str]]:
    return [(i.kind, i.value) for i in find_identifiers(text, field)]


@pytest.mark.parametrize("text, name", [
    ("Krisztián Szöllösy listed his top 20 songs", "Krisztián Szöllösy"),
    ("Write a poem for Anna Kowalczyk, she turns 30.", "Anna Kowalczyk"),
    ("I had a fight with Szabó Zoltán about rent.", "Szabó Zoltán"),
    ("what does it mean when Iida says she needs space", "Iida"),
    ("Is Päivikki Hartikainen's argument right?", "Päivikki Hartikainen"),
])
def test_names_without_cue_words(text, name):
    assert ("name", name) in found(text)


def test_cued_name_keeps_no_non_latin1_fragment():
    assert redact("Dear Mr. Łukasiewicz, thanks").text == "Dear Mr. [NAME], thanks"
    assert "łowski" not in redact("Mr. Kowalczykłowski called").text


@pytest.mark.parametrize("text", [
    "Ortmann Lehmann GbR charges less.", "I work at Weimer e.V. now.", "Ben & Jerry's is my favourite",
])
def test_company_names_are_not_people(text):
    assert "name" not in {k for k, _ in found(text)}


@pytest.mark.parametrize("address", [
    "391 Johnson Burg Apt. 636", "Schlosserallee 7, 39150 Auerbach", "aleja Zielona 690, 90-457 Żory",
    "Agroksenkuja 90", "23, rue Victoire Perrier, 55722 Sainte René", "Via Roma, 13", "Plaza de Josefa Salinas 23",
])
def test_street_addresses(address):
    assert found(f"Please ship it to {address} instead.") == [("address", address)]


@pytest.mark.parametrize("text", ["they place their orders for 2020", "the instalment covering 3 months",
                                  "you applied for a Tier 4 visa", "about 63 square miles or 165 km"])
def test_address_look_alikes(text):
    assert find_identifiers(text) == []


@pytest.mark.parametrize("value", ["460-89-9847", "180960-665T", "VRGNTL26C60M427N", "298091038755276",
                                   "72100437042"])
def test_national_ids(value):
    assert found(f"The letter mentions {value}, is it mine?") == [("ssn", value)]


def test_ssn_after_a_cue_of_any_shape():
    assert found("Here's my SSN: 23612040147") == [("ssn", "23612040147")]


@pytest.mark.parametrize("value", ["569806962373", "342352030262887", "38352187536827", "180053662596965",
                                   "4984075655796", "4619497941472950227", "3590-8614-4650-0766"])
def test_cards_of_every_valid_length(value):
    assert found(f"charge card {value} please") == [("credit_card", value)]


@pytest.mark.parametrize("text, placeholder", [
    ("call +1-841-258-6834x4978 now", "call [PHONE] now"),
    ("ring (08063) 60837 ext. 22 today", "ring [PHONE] today"),
    ("Mr. Nowakówna Żółć called", "Mr. [NAME] called"),
])
def test_no_fragment_of_an_identifier_stays(text, placeholder):
    assert redact(text).text == placeholder


def test_answers_keep_public_contact_points_but_not_personal_ones():
    answer = ("Call the helpline at 1-800-273-8255, see https://www.cdc.gov/help or write to support@acme.com. "
              "Albert Einstein said so. I will call you at +44 7700 900123 and mail jane.doe@gmail.com.")
    kept = redact(answer, "response").text
    assert "1-800-273-8255" in kept and "https://www.cdc.gov/help" in kept and "support@acme.com" in kept
    assert "Albert Einstein" in kept and "[PHONE]" in kept and "[EMAIL]" in kept
    user = redact(answer, "query").text
    assert "1-800-273-8255" not in user and "cdc.gov" not in user and "Einstein" not in user


def test_history_assistant_turns_take_the_answer_policy():
    history = [{"role": "user", "content": "see https://my.blog/x"},
               {"role": "assistant", "content": "see https://docs.python.org/3/"}]
    redacted, counts = redact_with_counts(history, "history")
    assert redacted[0]["content"] == "see [URL]" and redacted[1]["content"] == "see https://docs.python.org/3/"
    assert counts == {"url": 1}


def test_audit_is_independent_and_follows_the_policy():
    assert {i.kind for i in audit_identifiers("card 4111 1111 1111 1111, SSN 460-89-9847, mail a@b.com")} \
        >= {"credit_card", "ssn", "email"}
    assert audit_identifiers("Call 1-800-273-8255 or see https://www.cdc.gov/x", "response") == []
    assert audit_identifiers("founded by William Penn in 1681, a bare site medium.com") == []
    records = [{"messages": [{"role": "user", "content": "my card 4111 1111 1111 1111"},
                             {"role": "assistant", "content": "See https://example.org/help"}]}]
    result = audit_records(records)
    assert result["audit"] == {"credit_card": 1} and result["redactor"] == {"credit_card": 1}


def test_frozen_set_evaluation_runs_on_a_slice(tmp_path):
    out = tmp_path / "summary.json"
    done = subprocess.run([sys.executable, str(BENCH / "pii_frozen_eval.py"), "--limit", "60", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(out.read_text())
    assert summary["texts"] == 60 and summary["data_meta"]["texts"] >= 1000
    assert summary["per_kind"]["name"]["gold"] > 0 and 0 <= summary["per_kind"]["name"]["recall"] <= 1


def test_frozen_set_is_frozen():
    meta = json.loads((BENCH / "pii_frozen_eval.jsonl").open(encoding="utf-8").readline())["meta"]
    assert meta["texts"] >= 1000 and len(meta["locales"]) >= 5 and meta["seed"] == 20261201
