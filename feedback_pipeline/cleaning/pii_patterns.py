"""Rule-based finders kept from the first detector: emails, URLs, handles, IPs and cue-based names.

They measured 1.0 recall on emails, URLs and IPs of the frozen set; ``pii_numbers`` and ``pii_names`` add the
library-based kinds. Each finder yields ``(start, end)``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterator

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


def find_emails(text: str) -> Iterator[tuple[int, int]]:
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


def find_urls(text: str) -> Iterator[tuple[int, int]]:
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


def find_handles(text: str) -> Iterator[tuple[int, int]]:
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
    r"(?i)(?:\b(?:v|version|ver|release|build|firmware|rev|oid|patch|notes|step|steps|section|chapter|clause|"
    r"(?:update|upgrade|updated|upgraded|updating|upgrading)\s+to)|§)"
    r"\s*[:#]?\s*$")


def find_ips(text: str) -> Iterator[tuple[int, int]]:
    for m in _IPV4.finditer(text):
        if not _VERSION_CUE.search(text[max(0, m.start() - 25):m.start()]):
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


# --- person names (cue-based only, see module docstring) -----------------------------------------------------

# Any letters (not only Latin-1: "Kowalczykówna", "Łukasiewicz"); find_cued_names keeps the capitalised ones.
_NAME_TOKEN = r"[^\W\d_]+(?:['’\-][^\W\d_]+)*"
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


def find_cued_names(text: str) -> Iterator[tuple[int, int]]:
    for index, pattern in enumerate(_NAME_CUES):
        for m in pattern.finditer(text):
            tokens = []
            for token in m.group("name").split():  # the capitalised words right after the cue
                if not token[0].isupper() and token not in ("van", "von", "de", "da", "del", "der", "di", "le",
                                                            "la", "bin", "al", "ten"):
                    break
                tokens.append(token)
            while tokens and (tokens[-1].lower() in _NOT_NAMES or not tokens[-1][0].isupper()):
                tokens.pop()  # "Hi Anna Thanks" -> "Anna"
            if tokens and tokens[0].lower() not in _NOT_NAMES and (index != 1 or len(tokens) >= 2):
                start = m.start("name")
                yield start, start + len(" ".join(tokens))
