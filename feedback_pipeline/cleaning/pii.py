"""Find and redact personal identifiers in free text, offline and rule-based.

Kinds: ``email``, ``phone``, ``url``, ``handle``, ``ip``, ``credit_card``, ``iban`` and ``name``.
Checksums do the heavy lifting where they exist (Luhn for cards, mod-97 for IBANs, ``ipaddress`` for IPs), so a
17-digit order number or a hex hash is not redacted. Phone numbers have no checksum: separated shapes with a
``+`` country code, a US area code or a national trunk ``0`` count on their own; bare digit runs and loose
groupings count only after a phone cue ("call", "mobile", "tel", ...) and never right after an order, tracking
or invoice cue. ``bench/pii_eval.py`` measures precision and recall on a hand-labelled set.

Person names (limit): no NER model can be installed here (the official spaCy pipelines are not on PyPI and
this module must not download weights at run time), so names are found only after explicit cues:
"my name is X", "I'm X Y", "Mr./Mrs./Ms./Dr./Prof. X", "Dear/Hi X,", "Name: X Y" and sign-offs such as
"Regards,\\nX Y" on their own line. A name mentioned without a cue ("ask Priya in billing") is NOT redacted.

Overlaps: the longest candidate wins (a URL that embeds an email or an IP stays one URL); among candidates of
equal length the more specific kind wins, in the order of ``PRIORITY``.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

PLACEHOLDERS = {
    "email": "[EMAIL]", "url": "[URL]", "iban": "[IBAN]", "credit_card": "[CARD]", "ip": "[IP]",
    "phone": "[PHONE]", "handle": "[HANDLE]", "name": "[NAME]",
}
PRIORITY = tuple(PLACEHOLDERS)  # most specific first


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


# --- shared context cues -------------------------------------------------------------------------------------

_PHONE_CUE = re.compile(
    r"\b(?:phone|ph|tel|telephone|mobile|mob|cell|cellphone|landline|call|called|calling|ring|dial|text|sms|"
    r"whatsapp|signal|viber|telegram|fax|hotline|helpline|my number|reach me|contact me|area code)\b")
_CARD_CUE = re.compile(r"\b(?:card|visa|mastercard|amex|discover|debit|credit|cc|pan)\b")
# Words after which digits are an order/tracking/version number, not a phone or a card.
_OTHER_CUE = re.compile(
    r"\b(?:order|orders|tracking|track|invoice|inv|account|acct|ref|reference|ticket|case|id|sku|serial|sn|"
    r"isbn|po|transaction|txn|confirmation|booking|parcel|shipment|awb|customer|member|policy|claim|version|"
    r"ver|build|release|model|part|zip|postcode|pin|otp|code|room|flight|page|port|firmware|rev|v)\b")


def _last_end(pattern: re.Pattern, text: str) -> int:
    ends = [m.end() for m in pattern.finditer(text)]
    return ends[-1] if ends else -1


def _cue_before(text: str, start: int, positive: re.Pattern, window: int = 40) -> str | None:
    """'positive' or 'other' for whichever cue sits closest before ``start``, None when neither does."""
    before = text[max(0, start - window):start].lower()
    pos, neg = _last_end(positive, before), _last_end(_OTHER_CUE, before)
    if pos < 0 and neg < 0:
        return None
    return "positive" if pos >= neg else "other"  # a tie is "area code" vs "code": the longer cue wins


def _digits(value: str) -> str:
    return re.sub(r"\D", "", value)


# --- email ---------------------------------------------------------------------------------------------------

_DOMAIN = r"(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,24}"
_EMAIL_DOMAIN = re.compile(rf"{_DOMAIN}(?![\w-]|\.[^\W_])")
_LOCAL_CHARS = frozenset("._%+-'")  # RFC 5322 also allows an apostrophe: o'connor@example.ie
# "logo@2x.png", "config@v2.json": a one-label "domain" ending in a file extension is a file name.
_FILE_EXTENSIONS = frozenset("png jpg jpeg gif svg webp ico bmp tiff js ts css scss py json yaml yml md txt pdf "
                             "html htm xml csv lock".split())
# "jane [at] example [dot] com", "jane (at) example.com", "jane at example dot com"; bounded repeats keep
# a long "a dot a dot ..." text linear.
_AT = r"\s*(?:\[at\]|\(at\)|\{at\}|<at>)\s*"
_DOT = r"\s*(?:\[dot\]|\(dot\)|\{dot\}|<dot>)\s*"
_TLD_WORD = r"(?:com|org|net|edu|gov|io|co|uk|de|fr|nl|es|it|ca|au|info|biz|me|dev|ai)"
_ANY_DOT = rf"(?:{_DOT}|\.|\s+dot\s+)"
_EMAIL_OBFUSCATED = re.compile(
    rf"(?i)(?<![\w.+-])[\w.+-]+(?:(?:{_DOT}|\s+dot\s+)[\w+-]+){{0,3}}"  # local part: "chris dot b"
    rf"(?:{_AT}[\w-]+(?:{_ANY_DOT}[\w-]+){{0,3}}{_ANY_DOT}{_TLD_WORD}"  # "[at]" allows a plain "." too
    rf"|\s+at\s+[\w-]+(?:\s+dot\s+[\w-]+){{0,3}}\s+dot\s+{_TLD_WORD})\b")  # plain "at" needs a spoken "dot"


def _find_plain_emails(text: str) -> Iterator[tuple[int, int]]:
    # Anchored on each "@" and grown outwards: a left-to-right regex over the local part is quadratic on long
    # runs of punctuation.
    for at in (m.start() for m in re.finditer("@", text)):
        domain = _EMAIL_DOMAIN.match(text, at + 1)
        start = at
        while start > 0 and (text[start - 1].isalnum() or text[start - 1] in _LOCAL_CHARS):
            start -= 1
        while start < at and text[start] in ".'-":  # quotes and dashes around an address are not part of it
            start += 1
        local = text[start:at]
        if not (domain and local) or local.endswith(".") or ".." in local:
            continue
        labels = domain.group().lower().split(".")
        if not (len(labels) == 2 and labels[1] in _FILE_EXTENSIONS):
            yield start, domain.end()


def _find_emails(text: str) -> Iterator[tuple[int, int]]:
    yield from _find_plain_emails(text)
    for m in _EMAIL_OBFUSCATED.finditer(text):
        yield m.start(), m.end()


# --- url -----------------------------------------------------------------------------------------------------

_URL_BODY = r"[^\s<>\"'`]+"
_URL_SCHEME = re.compile(rf"(?i)\b(?:https?://|ftp://|www\.){_URL_BODY}")
# Bare domains only with a path, and only on real-world TLDs (not .py/.md/.sh, which end file names).
_TLDS = ("com|net|org|edu|gov|mil|int|io|ai|co|me|app|dev|info|biz|xyz|tech|shop|store|blog|site|online|cloud|"
         "page|news|live|us|uk|de|fr|nl|es|it|eu|ca|au|in|jp|cn|br|ru|ch|se|no|dk|fi|be|at|pl|ie|nz|za|mx|ly|tv|"
         "gg|to|so|cc|sg|hk|kr|tw|pt|gr|cz|hu|ro|tr|il|ar|cl")
_URL_BARE = re.compile(
    rf"(?i)(?<![\w@./:-])(?:[a-z0-9](?:[a-z0-9-]{{0,61}}[a-z0-9])?\.)+(?:{_TLDS})(?::\d{{2,5}})?/(?:{_URL_BODY})?")
_TRAILING = ".,;:!?'\"*_。，、"
_PAIRS = {")": "(", "]": "[", "}": "{"}


def _trim_url(value: str) -> str:
    """Drop sentence punctuation and unbalanced closing brackets that follow a URL in prose or markdown."""
    while value:
        last = value[-1]
        if last in _TRAILING or (last in _PAIRS and value.count(_PAIRS[last]) < value.count(last)):
            value = value[:-1]
        else:
            break
    return value


def _find_urls(text: str) -> Iterator[tuple[int, int]]:
    for pattern in (_URL_SCHEME, _URL_BARE):
        for m in pattern.finditer(text):
            value = _trim_url(m.group())
            if "." in value or "localhost" in value.lower():
                yield m.start(), m.start() + len(value)


# --- handle --------------------------------------------------------------------------------------------------

_HANDLE = re.compile(
    rf"(?<![\w@.+/:=\-`])@([A-Za-z0-9_](?:[\w.\-]{{0,37}}[A-Za-z0-9_])?)(@{_DOMAIN})?(?![\w@/-])")
# Decorators, annotations, CSS at-rules, doc tags and chat broadcasts look like handles but are not people.
_NOT_HANDLES = frozenset("""
everyone here channel all team media import keyframes font charset supports layer apply tailwind page
property staticmethod classmethod dataclass abstractmethod cached_property override overload pytest app
router api bp test before after beforeeach aftereach autowired component injectable input output ngmodule
param return returns throws see since deprecated author type typedef entity id column bean service mixin
include extend use function get post put delete patch mock lru_cache functools wraps
""".split())
_DECORATED_NEXT = re.compile(r"\s*\n\s*(?:async\s+def|def|class|public|private|protected|static|export|function|@)")


def _is_decorator(text: str, start: int, end: int) -> bool:
    line_start = text.rfind("\n", 0, start) + 1
    if text[line_start:start].strip():
        return False
    return text[end:end + 1] == "(" or bool(_DECORATED_NEXT.match(text, end))


def _find_handles(text: str) -> Iterator[tuple[int, int]]:
    for m in _HANDLE.finditer(text):
        name = m.group(1).lower()
        if name in _NOT_HANDLES or re.split(r"[.-]", name)[0] in _NOT_HANDLES:
            continue
        if re.fullmatch(r"\d+(?:am|pm|h|x|px|k|m|s)?", name):  # "@10am", "@2x"
            continue
        if _is_decorator(text, m.start(), m.end()):
            continue
        yield m.start(), m.end()


# --- ip ------------------------------------------------------------------------------------------------------

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?![\w]|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?:%[\w.]+)?(?![\w:]|\.\d)")
# Dotted quads right after these words are versions or section numbers ("firmware 10.4.1.12", "§ 3.1.4.2").
_VERSION_CUE = re.compile(
    r"(?i)(?:\b(?:v|version|ver|release|build|firmware|rev|oid|patch|notes|step|steps|section|chapter|clause)|§)"
    r"\s*[:#]?\s*$")


def _find_ips(text: str) -> Iterator[tuple[int, int]]:
    for m in _IPV4.finditer(text):
        if not _VERSION_CUE.search(text[max(0, m.start() - 12):m.start()]):
            yield m.start(), m.end()
    for m in _IPV6.finditer(text):
        value = m.group().split("%")[0]
        if not re.search(r"[0-9A-Fa-f]", value):
            continue
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            continue
        yield m.start(), m.end()


# --- credit card ---------------------------------------------------------------------------------------------

_CARD_PATTERNS = tuple(re.compile(rf"(?<![\w.,\-]){body}(?![\w]|[.,]\d|[ \-]\d)") for body in (
    r"\d{13,19}",
    r"\d{4}([ \-])\d{4}\1\d{4}\1\d{4}",            # 16: Visa, Mastercard, Discover, JCB
    r"\d{4}([ \-])\d{4}\1\d{4}\1\d{4}\1\d{1,3}",  # 17-19
    r"\d{4}([ \-])\d{4}\1\d{4}\1\d{1,3}",          # 13-15
    r"\d{4}([ \-])\d{6}\1\d{4,5}",                 # Amex 4-6-5, Diners 4-6-4
))


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


# The digits of a (mistyped) IBAN after its "DE89 " head are not a card.
_IBAN_HEAD = re.compile(r"[A-Za-z]{2}\d{2}[ \-]?$")


def _find_cards(text: str) -> Iterator[tuple[int, int]]:
    for pattern in _CARD_PATTERNS:
        for m in pattern.finditer(text):
            digits = _digits(m.group())
            # Issuer ranges start with 2-6; that alone rejects most Luhn-passing order and tracking numbers.
            if not (13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_ok(digits)):
                continue
            if _cue_before(text, m.start(), _CARD_CUE, window=25) == "other" \
                    or _IBAN_HEAD.search(text[max(0, m.start() - 6):m.start()]):
                continue
            yield m.start(), m.end()


# --- iban ----------------------------------------------------------------------------------------------------

IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21,
    "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28,
    "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22,
    "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}
# Greedy candidate: country code, check digits, then alphanumerics in optional single-space/dash groups.
_IBAN = re.compile(r"(?<![\w])[A-Za-z]{2}\d{2}(?:[ \-]?[A-Za-z0-9]){10,30}")


def iban_ok(compact: str) -> bool:
    compact = compact.upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _find_ibans(text: str) -> Iterator[tuple[int, int]]:
    for m in _IBAN.finditer(text):
        length = IBAN_LENGTHS.get(m.group()[:2].upper())
        if length is None:
            continue
        # The greedy match may run into the next word: cut it at the country's exact length.
        end, seen = m.start(), 0
        while end < m.end() and seen < length:
            seen += text[end].isalnum()
            end += 1
        if seen == length and not (end < len(text) and text[end].isalnum()) \
                and iban_ok(re.sub(r"[ \-]", "", text[m.start():end])):
            yield m.start(), end


# --- phone ---------------------------------------------------------------------------------------------------

# A phone neither starts nor ends inside a longer run of digit groups; "555-123-4567x204" may carry an extension.
_PHONE_START = r"(?<![\w+\-.])(?<!\d )(?<!\d-)"
_PHONE_END = r"(?!(?!x\d)\w|[.\-/ ]\d)"
# Shapes that are phones on their own, each with its fewest and most digits (not counting "(0)" or a leading "00").
_PHONE_STRONG = (
    (re.compile(r"(?<![\w+])(?<!\d )(?:\(\+\d{1,3}\)|\+\d{1,3}|00[1-9]\d{0,2}(?=[ .\-]))"  # +44, (+44), 0044
                r"(?:[ .\-/\u00a0]?\(0\))?(?:[ .\-/\u00a0]?(?:\(\d{1,5}\)|\d{1,5})){1,7}" + _PHONE_END), 8, 15),
    (re.compile(_PHONE_START + r"(?:1[ .\-])?(?:\([2-9]\d{2}\)[ .\-]?|[2-9]\d{2}[ .\-])\d{3}[ .\-]\d{4}"  # US
                + _PHONE_END), 10, 11),
    (re.compile(_PHONE_START + r"(?:\(0\d{1,4}\)|0\d{1,4})(?:(?:[ \-]| ?/ ?)\d{2,8}){1,4}" + _PHONE_END),
     10, 11),  # national trunk 0: 020 7946 0958, 06 12 34 56 78, 089 / 1234567
    (re.compile(_PHONE_START + r"0\d{1,4}(?:\.\d{2,4}){3,4}" + _PHONE_END), 10, 11),  # 01.23.45.67.89
    (re.compile(_PHONE_START + r"07\d{9}(?!\w)"), 11, 11),  # UK mobile written without spaces
    (re.compile(_PHONE_START + r"1[38]00[ \-]\d{3}[ \-]\d{3,4}" + _PHONE_END), 10, 11),  # AU/IE 1300/1800
)
# Shapes that are phones only after a phone cue: bare digit runs, local 7-digit and loose groupings.
_PHONE_WEAK = re.compile(_PHONE_START + r"(?:\d{7,13}|\(?\d{2,5}\)?(?:[ .\-]\d{2,5}){1,5})" + _PHONE_END)
_DATE_LIKE = re.compile(r"\d{1,4}([./\-])\d{1,2}\1\d{2,4}")


def _phone_digits(value: str) -> int:
    digits = _digits(value.replace("(0)", ""))
    return len(digits) - 2 if value.startswith("00") else len(digits)


def _find_phones(text: str) -> Iterator[tuple[int, int]]:
    for pattern, fewest, most in _PHONE_STRONG:
        for m in pattern.finditer(text):
            if fewest <= _phone_digits(m.group()) <= most and not _DATE_LIKE.fullmatch(m.group()) \
                    and _cue_before(text, m.start(), _PHONE_CUE, window=20) != "other":
                yield m.start(), m.end()
    for m in _PHONE_WEAK.finditer(text):
        if 7 <= _phone_digits(m.group()) <= 15 and not _DATE_LIKE.fullmatch(m.group()) \
                and _cue_before(text, m.start(), _PHONE_CUE) == "positive":
            yield m.start(), m.end()


# --- person names (cue-based only, see module docstring) -----------------------------------------------------

_UP, _LOW = "A-ZÀ-ÖØ-Þ", "a-zß-öø-ÿ"
# Capitalised word, also "O'Neill", "McDonald", "Jean-Luc".
_NAME_TOKEN = rf"(?:[{_UP}]['’])?[{_UP}][{_LOW}]+(?:[{_UP}][{_LOW}]+)?(?:['’\-][{_UP}]?[{_LOW}]+)*"
_PARTICLE = r"(?:van|von|de|da|del|der|di|le|la|bin|al|ten)"
_NAME = rf"{_NAME_TOKEN}(?:[ \t](?:{_PARTICLE}[ \t])?{_NAME_TOKEN}){{0,2}}"  # a name never spans lines
_FULL_NAME = rf"{_NAME_TOKEN}(?:[ \t](?:{_PARTICLE}[ \t])?{_NAME_TOKEN}){{1,2}}"
_NAME_CUES = (
    re.compile(rf"(?i:\b(?:my name is|my name's|name is|i am called|call me)\s+)(?P<name>{_NAME})"),
    re.compile(rf"(?i:\b(?:i'm|i’m|i am|this is|it's|it’s)\s+)(?P<name>{_FULL_NAME})"),
    re.compile(rf"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Madam)\.?\s(?P<name>{_NAME})"),
    re.compile(rf"(?i:\b(?:dear|hi|hello|hey|thanks|thank you)[ \t]+)(?P<name>{_NAME})[ \t]*[,!:\n]"),
    re.compile(rf"(?im:^[ \t]*(?:full[ \t]+)?name[ \t]*:[ \t]*)(?P<name>{_NAME})[ \t]*(?=\n|$)"),
    re.compile(rf"(?i:\b(?:regards|best|cheers|thanks|thank you|many thanks|sincerely|signed|yours truly|yours"
               rf"|best wishes|warm wishes|take care)\s*[,.!\-–—]?[ \t]*\n?[ \t]*)(?P<name>{_NAME})[ \t]*(?=\n|$)"),
)
_NOT_NAMES = frozenset("""
the a an all everyone everybody team support again guys folks there world great good bot assistant in for so
lot much advance not just really very sure sorry happy glad here back new still also now well yes no ok okay
thanks thank hello hi hey regards best cheers python java chrome windows linux mac google it this that you
""".split())


def _find_names(text: str) -> Iterator[tuple[int, int]]:
    for pattern in _NAME_CUES:
        for m in pattern.finditer(text):
            tokens = m.group("name").split()
            while tokens and tokens[-1].lower() in _NOT_NAMES:  # "Hi Anna Thanks" -> "Anna"
                tokens.pop()
            if tokens and tokens[0].lower() not in _NOT_NAMES:
                start = m.start("name")
                yield start, start + len(" ".join(tokens))


# --- public API ----------------------------------------------------------------------------------------------

_DETECTORS: dict[str, Callable[[str], Iterator[tuple[int, int]]]] = {
    "email": _find_emails, "url": _find_urls, "iban": _find_ibans, "credit_card": _find_cards,
    "ip": _find_ips, "phone": _find_phones, "handle": _find_handles, "name": _find_names,
}
_RANK = {kind: i for i, kind in enumerate(PRIORITY)}


def find_identifiers(text: str | None) -> list[Identifier]:
    """All identifiers in ``text``, non-overlapping, in reading order."""
    if not text:
        return []
    candidates = {(kind, s, e) for kind, find in _DETECTORS.items() for s, e in find(text) if e > s}
    starts: list[int] = []  # chosen spans never overlap, so their starts and ends sort alike
    chosen: list[tuple[int, int, str]] = []
    for kind, s, e in sorted(candidates, key=lambda c: (c[1] - c[2], _RANK[c[0]], c[1])):
        i = bisect.bisect_right(starts, s)
        if (i == 0 or chosen[i - 1][1] <= s) and (i == len(chosen) or chosen[i][0] >= e):
            starts.insert(i, s)
            chosen.insert(i, (s, e, kind))
    return [Identifier(kind, s, e, text[s:e]) for s, e, kind in chosen]


def contains_identifier(text: str | None) -> bool:
    return bool(find_identifiers(text))


def redact(text: str | None) -> Redaction:
    """``text`` with every identifier replaced by its placeholder, e.g. ``[EMAIL]``; None gives ''."""
    if not text:
        return Redaction(text or "", {})
    parts, cursor, counts = [], 0, Counter()
    for ident in find_identifiers(text):
        parts += [text[cursor:ident.start], PLACEHOLDERS[ident.kind]]
        cursor = ident.end
        counts[ident.kind] += 1
    parts.append(text[cursor:])
    return Redaction("".join(parts), dict(counts))


def redact_with_counts(value: Any) -> tuple[Any, Counter]:
    """Redact a string, or every string nested in lists/tuples/dicts (keys kept), without mutating ``value``."""
    counts: Counter = Counter()

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            result = redact(item)
            counts.update(result.counts)
            return result.text
        if isinstance(item, dict):
            return {key: walk(val) for key, val in item.items()}
        if isinstance(item, (list, tuple)) or type(item).__name__ == "ndarray":  # parquet gives numpy arrays
            return [walk(val) for val in item]
        return item

    return walk(value), counts


def redact_value(value: Any) -> Any:
    """Redact a string, or recursively the strings inside lists and dicts (conversation history, documents)."""
    return redact_with_counts(value)[0]
