"""Number-shaped identifiers found by maintained libraries: phones (libphonenumber), cards, IBANs and national ids
(python-stdnum checksums).

Each finder yields ``(kind, start, end)`` spans; ``pii.find_identifiers`` resolves overlaps between kinds.

- Phones: ``phonenumbers.PhoneNumberMatcher`` with leniency POSSIBLE over ``PHONE_REGIONS`` (national formats of
  each region, and every international format). A match keeps its extension ("x4587", "ext. 22", "#12") in the
  span. Dropped: fewer than 7 digits, dates, decimals, ISBNs, and numbers right after an order/tracking/version
  cue. ``is_public_phone`` says whether a number is a public contact point (toll-free, shared-cost, premium,
  universal access), which a response may keep.
- Cards: 12-19 digits (bare or grouped by spaces or dashes) passing ``stdnum.luhn`` with a known issuer prefix
  length (``stdnum.luhn`` alone would take one random number in ten).
- IBANs: ``stdnum.iban`` (country length and mod-97), written compact or in groups of four.
- National ids (kind ``ssn``): US SSN written NNN-NN-NNNN (``stdnum.us.ssn``); Finnish, Italian, Spanish,
  Swedish, Danish and Czech ids by their distinctive shapes and checksums; French NIR, Polish PESEL and Dutch BSN
  (all digits) by checksum; and any 6-20 character code right after an id cue ("SSN", "PESEL", "tax id" ...).
"""

from __future__ import annotations

import re
from typing import Iterator

import phonenumbers
from phonenumbers import Leniency, PhoneNumberMatcher, PhoneNumberType
from phonenumbers.phonenumbermatcher import _PATTERN as _MATCHER_CANDIDATE  # pinned version: tested equivalence
from phonenumbers.phonenumbermatcher import _SECOND_NUMBER_START_PATTERN as _MATCHER_SECOND_NUMBER
from stdnum import iban as std_iban
from stdnum import luhn
from stdnum.cz import rc as cz_rc
from stdnum.dk import cpr as dk_cpr
from stdnum.es import dni as es_dni
from stdnum.es import nie as es_nie
from stdnum.fi import hetu as fi_hetu
from stdnum.fr import nir as fr_nir
from stdnum.it import codicefiscale as it_cf
from stdnum.nl import bsn as nl_bsn
from stdnum.pl import pesel as pl_pesel
from stdnum.se import personnummer as se_pnr
from stdnum.us import itin as us_itin
from stdnum.us import ssn as us_ssn

Span = tuple[str, int, int]

PHONE_REGIONS = ("US", "GB", "DE", "FR", "PL", "FI", "HU", "ES", "IT", "NL", "CZ", "SE", "PT", "AT", "CH", "BE",
                 "DK", "NO", "IE", "RO", "SK", "GR", "CA", "AU", "IN", "BR", "MX")
PUBLIC_TYPES = {PhoneNumberType.TOLL_FREE, PhoneNumberType.SHARED_COST, PhoneNumberType.PREMIUM_RATE,
                PhoneNumberType.UAN}
_TOLL_FREE_PREFIX = re.compile(r"^(?:\+?1[ .\-]?)?\(?(?:800|888|877|866|855|844|833)\)?[ .\-]|^0?[ ]?80[0-9][ \-/]|"
                               r"^06[ \-]?80[ \-/]|^020[ \-]|^0800|^0808|^900[ ]|^803[ ]")
# Words after which digits are an order, tracking, version or reference number, not a phone or a card.
_OTHER_CUE = re.compile(
    r"(?i)\b(?:order|orders|tracking|track|invoice|inv|account|acct|ref|reference|ticket|case|sku|serial|"
    r"isbn|po|transaction|txn|confirmation|booking|parcel|shipment|awb|customer|member|policy|claim|version|"
    r"ver|build|release|model|part|zip|postcode|pin|otp|code|room|flight|page|port|firmware|rev|v|no|nr)"
    r"\s*[:#.]?\s*(?:number|no\.?|nr\.?)?\s*[:#]?\s*$")
# A short local number ("555-0134") counts only after one of these.
_PHONE_CUE = re.compile(
    r"(?i)\b(?:phone|ph|tel|telephone|mobile|mob|cell|cellphone|landline|call|called|calling|ring|dial|text|sms|"
    r"whatsapp|signal|viber|telegram|fax|hotline|helpline|number|reach me|contact me|line)\b")
_EXTENSION = re.compile(r"(?i)\s*(?:ext\.?|extension|x|#)\s*\d{1,6}\b")
_DATE_LIKE = re.compile(r"\d{1,4}([./\-])\d{1,2}\1\d{2,4}")
_DECIMAL = re.compile(r"\d{1,3}(?:[,.]\d{3})*[.,]\d{1,2}")


def _digits(value: str) -> str:
    return re.sub(r"\D", "", value)


def _after_other_cue(text: str, start: int) -> bool:
    return bool(_OTHER_CUE.search(text[max(0, start - 30):start]))


# --- phones --------------------------------------------------------------------------------------------------

_DIGIT = re.compile(r"\d")
MIN_PHONE_DIGITS = 6  # ``_code_like`` drops every match with fewer (too_short), extension included


def _may_hold_phone(text: str, offset: int, candidate: str) -> bool:
    """Whether a match inside this candidate of the matcher could pass ``_code_like``'s length rule: 6+ digits
    (its extension counted), and 8+ unless a "+" or a phone cue (searched as ``_code_like`` does, before every
    start the match could have) makes fewer do."""
    end = offset + len(candidate)
    ext = _EXTENSION.match(text, end)
    digits = len(_DIGIT.findall(candidate)) + (len(_DIGIT.findall(ext.group())) if ext else 0)
    if digits < MIN_PHONE_DIGITS:
        return False
    if digits >= 8 or "+" in candidate:
        return True
    return any(_PHONE_CUE.search(text[max(0, s - 40):s]) for s in range(max(0, offset - 1), end + 1))


def _matcher_candidates(text: str) -> Iterator[tuple[int, str]]:
    """The candidates ``PhoneNumberMatcher._find`` visits in a text where nothing matches (its own loop)."""
    index = 0
    while (found := _MATCHER_CANDIDATE.search(text, index)) is not None:
        candidate = found.group()
        if (second := _MATCHER_SECOND_NUMBER.search(candidate)) is not None:
            candidate = candidate[:second.start()]
        yield found.start(), candidate
        index = found.start() + len(candidate)


class _LongNumberMatcher(PhoneNumberMatcher):
    """``PhoneNumberMatcher`` that parses only the candidates that could hold a phone ``find_phones`` keeps.

    Parsing every digit run of a text in every region is what costs (a "2023", a "3." or a bare "1234567" is
    parsed 27 times); a candidate that fails ``_may_hold_phone`` can only give matches ``_code_like`` drops, so it
    is skipped as if it did not parse. The verdicts are shared by the regions of one text. The spans kept are the
    same as with the plain matcher (tests/test_pii_speed.py compares them on corpora)."""

    def __init__(self, text: str, region: str, leniency: int, verdicts: dict):
        super().__init__(text, region, leniency=leniency)
        self._verdicts = verdicts

    def _extract_match(self, candidate, offset):
        key = (offset, len(candidate))
        if key not in self._verdicts:
            self._verdicts[key] = _may_hold_phone(self.text, offset, candidate)
        return super()._extract_match(candidate, offset) if self._verdicts[key] else None


def find_phones(text: str, plain_matcher: bool = False) -> Iterator[Span]:
    """Phone spans; ``plain_matcher`` parses every candidate (the reference the fast path is tested against)."""
    # A text with fewer digits than any kept phone yields nothing: skip the matcher, the costliest detector.
    if len(_DIGIT.findall(text)) < MIN_PHONE_DIGITS:
        return
    verdicts: dict = {}
    if not plain_matcher:
        verdicts = {(offset, len(c)): _may_hold_phone(text, offset, c) for offset, c in _matcher_candidates(text)}
        if not any(verdicts.values()):
            return  # no region can match where no candidate may hold a phone: the candidates are the same in each
    seen: set[tuple[int, int]] = set()
    for region in PHONE_REGIONS:
        matches = PhoneNumberMatcher(text, region, leniency=Leniency.POSSIBLE) if plain_matcher \
            else _LongNumberMatcher(text, region, Leniency.POSSIBLE, verdicts)
        for match in matches:
            start, end = match.start, match.end
            # a leading "(" of "(+358) 835..." or "(0)": phonenumbers starts after it
            if start > 0 and text[start - 1] == "(" and ")" in text[start:end]:
                start -= 1
            ext = _EXTENSION.match(text, end)
            if ext and not match.number.extension:
                end = ext.end()
            if (start, end) in seen:
                continue
            seen.add((start, end))
            if not _code_like(text, start, end):
                yield "phone", start, end


def _code_like(text: str, start: int, end: int) -> bool:
    """Digits that belong to a code, a date, an amount or a long bare number rather than to a phone."""
    value, digits = text[start:end], _digits(text[start:end])
    glued = (start > 0 and (text[start - 1].isalnum() or text[start - 1] in "#-/" and start > 1
                            and text[start - 2].isalnum())) or (end < len(text) and text[end].isalnum())
    bare_long = value.isdigit() and len(digits) > 12
    groups = re.split(r"[ .\-/]+", value)
    in_run = bool(re.match(r"\d[ .\-]$", text[max(0, start - 2):start]) or re.match(r"[ .\-]\d", text[end:end + 2]))
    odd = re.fullmatch(r"\d+\.\d+", value) or "x" in value[:2].lower() \
        or (len(groups) >= 6 and all(len(g) == 2 for g in groups) and "+" not in value)
    too_short = len(digits) < (6 if _TOLL_FREE_PREFIX.search(value) else 7) \
        or (len(digits) < 8 and "+" not in value and not _PHONE_CUE.search(text[max(0, start - 40):start]))
    return glued or bare_long or too_short or in_run or bool(odd) or bool(_DATE_LIKE.fullmatch(value) or _DECIMAL.fullmatch(value)) \
        or value.count("-") == 4 or text[max(0, start - 1):start] == "#" or _after_other_cue(text, start)


def is_public_phone(value: str, region: str = "US") -> bool:
    """Toll-free, shared-cost, premium or universal-access numbers: an organisation's, not a person's."""
    if _TOLL_FREE_PREFIX.search(value.strip()):
        return True
    for guess in dict.fromkeys((region, *PHONE_REGIONS[:12])):
        try:
            number = phonenumbers.parse(value, guess)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.number_type(number) in PUBLIC_TYPES:
            return True
    return False


# --- cards ---------------------------------------------------------------------------------------------------

_CARD = re.compile(r"(?<![\w.,\-])(?:\d[ \-]?){11,18}\d(?![\w]|[.,]\d|[ \-]\d)")
# Issuer prefixes and their lengths (ISO/IEC 7812 ranges of the major brands).
_ISSUERS = (
    (re.compile(r"^4"), (13, 16, 19)), (re.compile(r"^(?:5[1-5]|2[2-7])"), (16,)), (re.compile(r"^3[47]"), (15,)),
    (re.compile(r"^3(?:0[0-5]|[689])"), (14, 16, 19)), (re.compile(r"^6(?:011|4[4-9]|5)"), (16, 19)),
    (re.compile(r"^35"), (16, 19)), (re.compile(r"^(?:2131|1800)"), (15,)), (re.compile(r"^62"), (16, 17, 18, 19)),
    (re.compile(r"^(?:50|5[6-8]|6)"), tuple(range(12, 20))),  # Maestro
    (re.compile(r"^1"), (15,)),  # UATP
)


def card_ok(digits: str) -> bool:
    return luhn.is_valid(digits) and any(p.match(digits) and len(digits) in lengths for p, lengths in _ISSUERS)


def find_cards(text: str) -> Iterator[Span]:
    for m in _CARD.finditer(text):
        if card_ok(_digits(m.group())) and not _after_other_cue(text, m.start()):
            yield "credit_card", m.start(), m.end()


# --- IBAN ----------------------------------------------------------------------------------------------------

_IBAN = re.compile(r"(?<![\w])[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?(?![\w])")


def find_ibans(text: str) -> Iterator[Span]:
    for m in _IBAN.finditer(text.upper()):  # upper() keeps every offset
        # a greedy match may swallow a following word: try the longest valid prefix that ends a group
        for end in range(m.end(), m.start() + 14, -1):
            if (end == m.end() or text[end] == " ") and std_iban.is_valid(text[m.start():end], check_country=False):
                yield "iban", m.start(), end
                break


# --- national ids --------------------------------------------------------------------------------------------

_ID_CUE_WORDS = (
    r"(?:ssn|social security(?: number| no\.?)?|national id(?:entity)?(?: number)?|id number|tax id|tin|"
    r"pesel|nir|bsn|dni|nie|nif|hetu|henkilötunnus|personnummer|cpr|codice fiscale|rodné číslo|"
    r"taj(?:[ \-]szám)?|személyi azonosító|sozialversicherungsnummer|steuer-?id|insee)")
_ID_CUE = re.compile(rf"(?i)\b{_ID_CUE_WORDS}\s*(?:is|:|#|no\.?)?\s*$")
# What a cued code cannot do without: the start of a cue word, anywhere in the text, found by substring search on
# the lowercased text (a regex alternation tried at every letter costs ten times more). The translation first
# folds the letters that ``(?i)`` matches to i or s but ``str.lower`` does not (dotted and dotless I, long s).
_ID_CUE_STEMS = ("ssn", "social security", "national id", "id number", "tax id", "tin", "pesel", "nir", "bsn", "dni",
                 "nie", "nif", "hetu", "henkilötunnus", "personnummer", "cpr", "codice fiscale", "rodné číslo", "taj",
                 "személyi azonosító", "sozialversicherungsnummer", "steuer", "insee")
_CASE_FOLD = str.maketrans({"İ": "i", "ı": "i", "ſ": "s"})


def _has_id_cue(text: str) -> bool:
    folded = text.translate(_CASE_FOLD).lower()
    return any(stem in folded for stem in _ID_CUE_STEMS)
# a code holding a digit; its groups join by "-", "/", "." or by a space before a digit ("12 345 678 A" stops)
_ID_TOKEN = re.compile(r"(?<![\w])(?=[A-Za-z]*\d)[A-Za-z0-9]+(?:[\-/.][A-Za-z0-9]+|[ ](?=\d)[A-Za-z0-9]+)*")
_SHAPES = (
    (re.compile(r"(?<![\w\-])\d{3}-\d{2}-\d{4}(?![\w\-])"), lambda v: us_ssn.is_valid(v) or us_itin.is_valid(v)),
    (re.compile(r"(?<![\w])[A-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![\w])"), lambda v: True),  # UK NINO
    (re.compile(r"(?<![\w\-])\d{6}[+\-A]\d{3}[0-9A-Y](?![\w\-])"), fi_hetu.is_valid),
    (re.compile(r"(?<![\w])[A-Z]{6}\d{2}[A-Z]\d{2}[A-Z]\d{3}[A-Z](?![\w])"), it_cf.is_valid),
    (re.compile(r"(?<![\w\-])\d{8}-?[A-Z](?![\w])"), es_dni.is_valid),
    (re.compile(r"(?<![\w\-])[XYZ]-?\d{7}-?[A-Z](?![\w])"), es_nie.is_valid),
    (re.compile(r"(?<![\w\-])(?:\d{2})?\d{6}[\-+]\d{4}(?![\w\-])"), lambda v: se_pnr.is_valid(v) or dk_cpr.is_valid(v)),
    (re.compile(r"(?<![\w\-])\d{6}/\d{3,4}(?![\w\-])"), cz_rc.is_valid),
    (re.compile(r"(?<![\w\-])[12] ?\d{2} ?\d{2} ?\d{2} ?\d{3} ?\d{3} ?\d{2}(?![\w\-])"), fr_nir.is_valid),
    (re.compile(r"(?<![\w\-.,])\d{11}(?![\w\-]|[.,]\d)"), pl_pesel.is_valid),
    (re.compile(r"(?<![\w\-.,])\d{9}(?![\w\-]|[.,]\d)"), nl_bsn.is_valid),
)


def find_national_ids(text: str, prefilter: bool = True) -> Iterator[Span]:
    """National id spans; ``prefilter=False`` scans for cued codes in every text (the tested reference)."""
    for pattern, valid in _SHAPES:
        for m in pattern.finditer(text):
            if valid(m.group()) and not _after_other_cue(text, m.start()):
                yield "ssn", m.start(), m.end()
    if prefilter and not _has_id_cue(text):
        return
    for m in _ID_TOKEN.finditer(text):
        if 6 <= sum(ch.isalnum() for ch in m.group()) <= 20 and _ID_CUE.search(text[max(0, m.start() - 40):m.start()]):
            yield "ssn", m.start(), m.end()
