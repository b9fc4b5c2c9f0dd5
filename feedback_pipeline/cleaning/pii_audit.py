"""A second, independent identifier detector for the blocking dataset checks: Microsoft Presidio's recognizers.

The redactor (``pii.py``) uses python-stdnum, libphonenumber with leniency POSSIBLE over 27 regions, its own
email/URL/IP rules and a name gazetteer. This audit uses presidio-analyzer's own pattern recognizers (its regexes
and checksums for cards, IBANs, US SSN/ITIN, emails, IPs, URLs) and its phone recognizer (libphonenumber with
leniency VALID, over ``AUDIT_PHONE_REGIONS``), so a miss of one is often caught by the other.

No spaCy model is downloaded: presidio runs on ``spacy.blank("en")``, which means it finds no person names and no
addresses; those kinds have no independent detector here (no NER pipeline with clear provenance is on the
registry), and the checks say so in their metadata. tldextract is told not to fetch the public suffix list.
The audit applies the same field policy as the redactor: in an answer, URLs, toll-free numbers and role mailboxes
are allowed.
"""

from __future__ import annotations

import logging
import types
from collections import Counter
from functools import lru_cache

from feedback_pipeline.cleaning.pii import ANSWER, FIELD_POLICY, Identifier, public_mailbox
from feedback_pipeline.cleaning.pii_numbers import is_public_phone

ENTITY_KINDS = {"EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "CREDIT_CARD": "credit_card",
                "IBAN_CODE": "iban", "US_SSN": "ssn", "US_ITIN": "ssn", "IP_ADDRESS": "ip", "URL": "url"}
AUDIT_PHONE_REGIONS = ("US", "GB", "DE", "FR", "PL", "FI", "HU", "ES", "IT", "NL", "CZ", "SE", "IN", "CA", "AU",
                       "BR", "IL")
MIN_SCORE = 0.4
NOT_COVERED = ("name", "address")  # kinds only the redactor looks for


@lru_cache(maxsize=1)
def analyzer():
    """A presidio AnalyzerEngine on a blank spaCy pipeline (built once; about 5 s, most of it importing spaCy)."""
    import spacy
    import tldextract
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    class BlankEngine(SpacyNlpEngine):
        def __init__(self):
            super().__init__(models=[{"lang_code": "en", "model_name": "blank"}])
            self.nlp = {"en": spacy.blank("en")}

        def load(self) -> None:  # nothing to download
            return None

    logging.getLogger("tldextract").setLevel(logging.CRITICAL)
    offline = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    from presidio_analyzer.predefined_recognizers.generic import email_recognizer
    email_recognizer.tldextract = types.SimpleNamespace(extract=offline)  # its validate_result calls it: bundled list
    engine = BlankEngine()
    registry = RecognizerRegistry()
    registry.load_predefined_recognizers(nlp_engine=engine)
    registry.remove_recognizer("PhoneRecognizer")
    registry.add_recognizer(PhoneRecognizer(supported_regions=AUDIT_PHONE_REGIONS))
    return AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])


def _allowed_in_answer(kind: str, value: str) -> bool:
    if kind == "url":
        return True
    if kind == "email":
        return public_mailbox(value)
    return kind == "phone" and is_public_phone(value)


def audit_identifiers(text: str | None, field: str = "query") -> list[Identifier]:
    """Identifiers presidio finds in ``text`` that ``field``'s policy does not allow; placeholders are ignored."""
    if not text:
        return []
    results = analyzer().analyze(text, language="en", entities=list(ENTITY_KINDS), score_threshold=MIN_SCORE)
    found = sorted({(ENTITY_KINDS[r.entity_type], r.start, r.end) for r in results}, key=lambda x: (x[1], -x[2]))
    emails = [(s, e) for kind, s, e in found if kind == "email"]
    out = []
    for kind, s, e in found:
        if kind == "url" and any(a <= s and e <= b for a, b in emails):  # the domain of an email
            continue
        value = text[s:e]
        if kind == "url" and "/" not in value and not value.lower().startswith("www."):
            continue  # a bare site name ("medium.com") names no person; the redactor's convention too
        if kind == "phone" and sum(ch.isdigit() for ch in value) < 7:
            continue  # "1681": a year that some region's short-number plan accepts
        if FIELD_POLICY.get(field) == ANSWER and _allowed_in_answer(kind, value):
            continue
        out.append(Identifier(kind, s, e, value))
    return out


def _messages(record: dict) -> list[dict]:
    if record.get("messages"):
        return record["messages"]
    return [*record.get("prompt", []), *record.get("completion", []), *record.get("chosen", []),
            *record.get("rejected", [])]


def audit_records(records: list[dict]) -> dict[str, Counter]:
    """Identifier counts by kind in chat-format training records, as the audit and as the redactor see them.

    Each message is judged by its role's field policy (user and system: query; assistant: response). The
    redactor's count is a residue check: on redacted text it should be 0.
    """
    from feedback_pipeline.cleaning.pii import find_identifiers

    audit, redactor = Counter(), Counter()
    for record in records:
        for message in _messages(record):
            field = "response" if message.get("role") == "assistant" else "query"
            audit.update(i.kind for i in audit_identifiers(message.get("content"), field))
            redactor.update(i.kind for i in find_identifiers(message.get("content"), field))
    return {"audit": audit, "redactor": redactor}
