"""Find and redact personal identifiers in free text, offline, with a per-field policy.

Kinds and who finds them: ``email``, ``url``, ``handle``, ``ip`` (rules in ``pii_patterns``); ``phone``
(libphonenumber), ``credit_card``, ``iban`` and ``ssn`` (national ids; python-stdnum checksums) in ``pii_numbers``;
``name`` (Faker-name gazetteer plus cue phrases such as "my name is") and ``address`` in ``pii_names``.
``bench/pii_frozen_eval.py`` measures recall and precision per kind on a frozen Faker-made set of ten locales.

Overlaps: the longest candidate wins (a URL that embeds an email stays one URL, an address keeps the name of its
street); among equally long candidates the more specific kind wins, in the order of ``PRIORITY``. No fragment
of a number-shaped identifier survives: a span grows over letters or digits glued to it ("[PHONE]x4587").

Per-field policy (``FIELD_POLICY``): what a user wrote (``query``, ``comment``, ``subject``, user turns of
``history``) loses every identifier. An answer (``response``, ``retrieved_context``, assistant turns of
``history``) keeps public contact points: every URL, toll-free / shared-cost / premium phone numbers, role
mailboxes (info@, support@, dsa_team@ ...), addresses at government domains and handles; its person names go
only after a cue ("my name is", "Dear X,"), not by the gazetteer (a full name in an answer is far more often a
public figure, an author or a character than a person to protect: 64 of 645 liked oasst1 answers); every other
kind goes as in user text.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from stdnum import iban as std_iban
from stdnum import luhn

from feedback_pipeline.cleaning import pii_names, pii_numbers, pii_patterns

PLACEHOLDERS = {
    "email": "[EMAIL]", "url": "[URL]", "iban": "[IBAN]", "credit_card": "[CARD]", "ssn": "[SSN]", "ip": "[IP]",
    "phone": "[PHONE]", "address": "[ADDRESS]", "handle": "[HANDLE]", "name": "[NAME]",
}
PRIORITY = tuple(PLACEHOLDERS)  # most specific first
USER, ANSWER = "user", "answer"
FIELD_POLICY = {"query": USER, "comment": USER, "subject": USER, "history": USER,
                "response": ANSWER, "retrieved_context": ANSWER}
ROLE_MAILBOXES = frozenset("""info support help contact service services hello office press media sales admin
enquiries inquiries customerservice customercare care feedback team privacy security webmaster noreply no-reply
billing accounts jobs careers hr questions""".split())
_GLUED_KINDS = frozenset({"phone", "credit_card", "iban", "ssn", "ip"})


@dataclass(frozen=True)
class Identifier:
    kind: str
    start: int
    end: int
    value: str


@dataclass(frozen=True)
class Redaction:
    text: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def luhn_ok(digits: str) -> bool:
    return luhn.is_valid(digits)


def iban_ok(compact: str) -> bool:
    return std_iban.is_valid(compact, check_country=False)


def _spans(finder: Callable[[str], Iterable[tuple[int, int]]], kind: str) -> Callable[[str], Iterator]:
    return lambda text: ((kind, s, e) for s, e in finder(text))


FINDERS: tuple[Callable[[str], Iterable[tuple[str, int, int]]], ...] = (
    _spans(pii_patterns.find_emails, "email"), _spans(pii_patterns.find_urls, "url"),
    _spans(pii_patterns.find_handles, "handle"), _spans(pii_patterns.find_ips, "ip"),
    pii_numbers.find_phones, pii_numbers.find_cards, pii_numbers.find_ibans, pii_numbers.find_national_ids,
    pii_names.find_addresses, _spans(pii_patterns.find_cued_names, "name"),
)
GAZETTEER_NAMES = pii_names.find_names  # user text only: in answers, names are public figures far more often
_RANK = {kind: i for i, kind in enumerate(PRIORITY)}


def _grow(text: str, kind: str, start: int, end: int) -> tuple[int, int]:
    if kind in _GLUED_KINDS:
        while start > 0 and text[start - 1].isalnum():
            start -= 1
        while end < len(text) and text[end].isalnum():
            end += 1
    return start, end


def is_public(ident: Identifier) -> bool:
    """A public contact point: kept in answers by the ANSWER policy."""
    if ident.kind in ("url", "handle"):
        return True
    if ident.kind == "email":
        return public_mailbox(ident.value)
    if ident.kind == "phone":
        return pii_numbers.is_public_phone(ident.value)
    return False


_ROLE_PART = re.compile(r"team|office|info|support|help|service|enquir|inquir|contact|policy|admin|desk")
_PUBLIC_DOMAIN = re.compile(r"(?i)(?:\.gov|\.gov\.[a-z]{2}|\.gouv\.fr|\.bund\.de|\.gc\.ca|\.nhs\.uk|\.europa\.eu|"
                            r"\.who\.int|\.un\.org)$")


def public_mailbox(email: str) -> bool:
    """A role mailbox (support@, dsa_team@) or any address at a government / public-health domain."""
    local, _, domain = email.lower().partition("@")
    return local in ROLE_MAILBOXES or bool(_ROLE_PART.search(local)) or bool(_PUBLIC_DOMAIN.search(domain))


def _kept_by_policy(ident: Identifier, policy: str) -> bool:
    return policy == ANSWER and is_public(ident)


def find_identifiers(text: str | None, field: str = "query") -> list[Identifier]:
    """The identifiers that ``field``'s policy redacts in ``text``, non-overlapping, in reading order."""
    if not text:
        return []
    policy = FIELD_POLICY.get(field, USER)
    finders = FINDERS if policy == ANSWER else (*FINDERS, GAZETTEER_NAMES)
    candidates = {(kind, *_grow(text, kind, s, e)) for find in finders for kind, s, e in find(text) if e > s}
    starts: list[int] = []  # chosen spans never overlap, so their starts and ends sort alike
    chosen: list[tuple[int, int, str]] = []
    for kind, s, e in sorted(candidates, key=lambda c: (c[1] - c[2], _RANK[c[0]], c[1])):
        i = bisect.bisect_right(starts, s)
        if (i == 0 or chosen[i - 1][1] <= s) and (i == len(chosen) or chosen[i][0] >= e):
            starts.insert(i, s)
            chosen.insert(i, (s, e, kind))
    found = (Identifier(kind, s, e, text[s:e]) for s, e, kind in chosen)
    return [ident for ident in found if not _kept_by_policy(ident, policy)]


def contains_identifier(text: str | None, field: str = "query") -> bool:
    return bool(find_identifiers(text, field))


def redact(text: str | None, field: str = "query") -> Redaction:
    """``text`` with every identifier ``field``'s policy removes replaced by its placeholder; None gives ''."""
    if not text:
        return Redaction(text or "", {})
    parts, cursor, counts = [], 0, Counter()
    for ident in find_identifiers(text, field):
        parts += [text[cursor:ident.start], PLACEHOLDERS[ident.kind]]
        cursor = ident.end
        counts[ident.kind] += 1
    parts.append(text[cursor:])
    return Redaction("".join(parts), dict(counts))


def redact_with_counts(value: Any, field: str = "query") -> tuple[Any, Counter]:
    """Redact a string, or every string nested in lists/tuples/dicts (keys kept), without mutating ``value``.

    A message dict ``{"role": "assistant", "content": ...}`` inside a history takes the ANSWER policy.
    """
    counts: Counter = Counter()

    def walk(item: Any, where: str) -> Any:
        if isinstance(item, str):
            result = redact(item, where)
            counts.update(result.counts)
            return result.text
        if isinstance(item, dict):
            inner = "response" if item.get("role") == "assistant" else where
            return {key: walk(val, inner) for key, val in item.items()}
        if isinstance(item, (list, tuple)) or type(item).__name__ == "ndarray":  # parquet gives numpy arrays
            return [walk(val, where) for val in item]
        return item

    return walk(value, field), counts


def redact_value(value: Any, field: str = "query") -> Any:
    """Redact a string, or recursively the strings inside lists and dicts (conversation history, documents)."""
    return redact_with_counts(value, field)[0]
