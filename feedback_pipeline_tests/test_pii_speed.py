"""The fast paths of PII detection find exactly what the plain detectors find.

Phones: ``find_phones`` parses only the matcher candidates that could hold a phone it keeps, and skips a text
whose candidates cannot; the reference parses every candidate in every region. Addresses: a pattern is skipped
when the street-type word it needs is absent; the reference runs every pattern. National ids: the scan for cued
codes is skipped when no id cue word is in the text. Compared on real replies (with the large numbers chat traffic carries), on the frozen PII set of ten
locales and on hand-made phone edge cases.
"""

import json
from pathlib import Path

import pytest

from feedback_pipeline.cleaning.pii_names import find_addresses
from feedback_pipeline.cleaning.pii_numbers import find_national_ids, find_phones

from .conftest import OASST1

BENCH = Path(__file__).resolve().parents[1] / "bench"

EDGE_CASES = [
    "call me on 555-0134 tomorrow", "ring 555 0134 x12", "my number is 0134 ext. 4587", "tel: 12 34 56",
    "order 55501340 shipped", "meeting on 12/03/2024 at 10:30", "the price is 1,234.56 EUR", "+358 40 123 4567",
    "(+358) 835 1234", "call 0800 123 456", "1-800-555-0199 x4587", "ISBN 978-3-16-148410-0",
    "my cell is 07700 900123, or the office 020 7946 0958", "fax:+44(0)20 7946 0958#12", "version 1234567",
    "it costs 1234567 dollars", "Dial 9 then 12345678", "phone\n5550134", "from 10:45:00 to 11:00",
    "+1 (555) 010-0134 / x 12", "text 612 345 678 or 612-345-679", "2023 2024 2025 2026 2027 2028",
    "See pp. 123-4567 of the report", "call me 1 2 3 4 5 6 7 8", "numbers ٠١٢٣٤٥٦٧٨٩ in Arabic-Indic digits",
]


def _texts() -> list[str]:
    texts = list(EDGE_CASES)
    for i, line in enumerate(OASST1.read_text().splitlines()[:1500]):
        text = json.loads(line).get("text") or ""
        texts += [text, f"{text}\n(answer {1_000_000 + i * 7919})"]  # a unique number, as the scale bench adds
    rows = BENCH.joinpath("pii_frozen_eval.jsonl").read_text().splitlines()[1:]
    rows += BENCH.joinpath("pii_labelled.jsonl").read_text().splitlines()
    texts += [json.loads(row)["text"] for row in rows]
    return texts


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return _texts()


def test_phone_fast_path_finds_what_the_plain_matcher_finds(texts):
    differ = [t for t in texts if list(find_phones(t)) != list(find_phones(t, plain_matcher=True))]
    assert not differ, differ[:3]
    assert sum(bool(list(find_phones(t))) for t in texts) > 100  # the corpus holds phones to find


def test_address_prefilter_finds_what_every_pattern_finds(texts):
    differ = [t for t in texts if list(find_addresses(t)) != list(find_addresses(t, prefilter=False))]
    assert not differ, differ[:3]
    assert sum(bool(list(find_addresses(t))) for t in texts) > 50


def test_national_id_cue_prefilter_finds_what_the_token_scan_finds(texts):
    cued = ["SSN: 123-45-6789", "my social security no.123456789", "PESEL 44051401359", "tax id is AB123456",
            "national identity number: X1234567L", "Steuer-ID #12345678901", "hetu 131052-308T", "tin:ZX99887766"]
    differ = [t for t in texts + cued
              if list(find_national_ids(t)) != list(find_national_ids(t, prefilter=False))]
    assert not differ, differ[:3]
    assert all(list(find_national_ids(t)) for t in cued)
