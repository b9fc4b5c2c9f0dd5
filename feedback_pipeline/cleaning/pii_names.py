"""Person names and street addresses in running text, without cue words.

Names: a gazetteer of first names and surnames from Faker's person providers in ``GAZETTEER_LOCALES`` (Latin-script
locales; nl_NL and cs_CZ are left out so the frozen evaluation can show recall on never-seen names), with rules:
a known first name followed by a known surname or by a capitalised rare word ("Krisztián Szöllösy"), a surname
followed by a first name (Hungarian order), particles ("van", "de", "da" ...) inside; a known first name alone
counts when it is rare as an English word (``wordfreq`` Zipf < 4.0: "Iida", "Krisztián", not "Will" or "Max").
A run right before a company suffix ("GmbH", "Inc", "e figli") or joined by "&" is a company, not a person.
Limits: public figures ("Albert Einstein") and brands named after people ("Ralph Lauren") are redacted like
anyone else; lowercase names are not found.

Addresses: a street-type word before the street name (rue, calle, via, ul., aleja, plaza ...), after it
(Hungarian utca/út/tér) or inside one compound word (-straße, -weg, -straat, -katu, -kuja, -vägen ...), always with
a house number; US-style "391 Johnson Burg Apt. 636" is confirmed by ``usaddress``. An apartment part and a
following postcode and city ("90-457 Żory", "New Jeffreymouth, NM 72965") join the span.
"""

from __future__ import annotations

import importlib
import re
from functools import lru_cache
from typing import Iterable, Iterator

import usaddress
from wordfreq import zipf_frequency

Span = tuple[str, int, int]

GAZETTEER_LOCALES = ("en_US", "en_GB", "en_IE", "de_DE", "de_AT", "de_CH", "fr_FR", "fr_CA", "es_ES", "es_MX",
                     "it_IT", "pt_PT", "pt_BR", "pl_PL", "fi_FI", "hu_HU", "sv_SE", "da_DK", "no_NO", "sk_SK",
                     "sl_SI", "hr_HR", "ro_RO", "lt_LT", "lv_LV", "et_EE", "tr_TR", "en_IN", "id_ID")
COMMON_WORD_ZIPF = 4.0  # a first name alone, or a capitalised unknown word after one, must be rarer than this
PARTICLES = frozenset("van von de da del der den di le la du dos das ten ter bin al mac".split())
_COMPANY_AFTER = re.compile(
    r"^\s*(?:&|and Sons|e figli|GmbH|AG|KG|GbR|OHG|e\.V\.|SE|Inc\.?|LLC|Ltd\.?|PLC|Corp\.?|Co\.|S\.A\.|S\.L\.|"
    r"S\.A\.S\.|SARL|SAS|S\.p\.A\.|SpA|s\.r\.o\.|v\.o\.s\.|a\.s\.|Kft\.|Zrt\.|Bt\.|Nyrt\.|Sp\. ?z ?o\.o\.|"
    r"Sp\.j\.|S\.Coop\.|Oy|Oyj|AB|A/S|B\.V\.|N\.V\.|Group|Holding|Foundation)(?![\w])")
_WORD = re.compile(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*")


@lru_cache(maxsize=4)
def gazetteer(exclude: tuple[str, ...] = ()) -> tuple[frozenset[str], frozenset[str]]:
    """(first names, surnames), lowercased, from Faker's person providers of the gazetteer locales."""
    first: set[str] = set()
    last: set[str] = set()
    for locale in GAZETTEER_LOCALES:
        if locale in exclude:
            continue
        provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
        for attr, into in (("first_names", first), ("first_names_male", first), ("first_names_female", first),
                           ("last_names", last), ("last_names_male", last), ("last_names_female", last)):
            names: Iterable[str] = getattr(provider, attr, ())
            into.update(n.lower() for n in names if n and n[0].isalpha())
    for name in list(last):  # "Wieloch-Bolnbach": each part of a double surname
        last.update(name.split("-"))
    return frozenset(first), frozenset(last)


def _common(word: str) -> bool:
    return zipf_frequency(word, "en") >= COMMON_WORD_ZIPF


def _strip_possessive(start: int, end: int, text: str) -> int:
    return end - 2 if text[end - 2:end] in ("'s", "’s") else end


def find_names(text: str, single_first: bool = True, exclude: tuple[str, ...] = ()) -> Iterator[Span]:
    first, last = gazetteer(exclude)
    words = [(m.start(), _strip_possessive(m.start(), m.end(), text)) for m in _WORD.finditer(text)]
    words = [(s, e) for s, e in words if e > s]
    i = 0
    while i < len(words):
        if not text[words[i][0]].isupper() and (i + 1 == len(words) or text[words[i][1]:words[i + 1][0]] != " "
                                                 or not text[words[i + 1][0]].isupper()):
            i += 1  # a lowercase word not followed by a capitalised one is a run without a name: most words
            continue
        run = [i]  # consecutive capitalised words (particles allowed inside) separated by one space
        while run[-1] + 1 < len(words) and len(run) < 5:
            s, e = words[run[-1] + 1]
            prev_end = words[run[-1]][1]
            word = text[s:e]
            if text[prev_end:s] != " " or not (word[0].isupper() or word.lower() in PARTICLES) \
                    or _COMPANY_AFTER.match(text[prev_end:]):
                break
            run.append(run[-1] + 1)
        span = _name_in_run([text[s:e] for s, e in (words[j] for j in run)], first, last, single_first)
        if span is not None:
            a, b = run[span[0]], run[span[1] - 1]
            if not _COMPANY_AFTER.match(text[words[b][1]:]) and not text[:words[a][0]].rstrip().endswith("&"):
                yield "name", words[a][0], words[b][1]
            i = b + 1
        else:
            i += 1


def _name_in_run(tokens: list[str], first: frozenset, last: frozenset, single_first: bool) -> tuple[int, int] | None:
    """Token range [a, b) of the first person name in a run of capitalised tokens, or None."""
    low = [t.lower() for t in tokens]
    is_first = [t[0].isupper() and w in first for t, w in zip(tokens, low)]
    is_last = [t[0].isupper() and (w in last or any(p in last for p in w.split("-"))) for t, w in zip(tokens, low)]
    for a, tok in enumerate(tokens):
        if not tok[0].isupper():
            continue
        b = a + 1
        while b < len(tokens) and (low[b] in PARTICLES and b + 1 < len(tokens)):
            b += 1
        if b < len(tokens) and tokens[b][0].isupper():
            nxt = tokens[b]
            if is_first[a] and (is_last[b] or not _common(nxt)):
                end = b + 1
                if end < len(tokens) and is_last[end] and tokens[end][0].isupper():  # middle name + surname
                    end += 1
                return a, end
            if is_last[a] and is_first[b] and not _common(tok):  # Hungarian order: Szabó Anna
                return a, b + 1
            if is_last[b] and not _common(tok) and not _common(nxt) and len(tok) > 2:  # unseen first name
                return a, b + 1
        if single_first and is_first[a] and not _common(tok) and len(tok) > 2:
            return a, a + 1
    return None


# --- addresses -----------------------------------------------------------------------------------------------

_CAP = r"[^\W\d_][\w'’.\-]*"
_NUMBER = r"\d{1,5}[A-Za-z]?(?:\s?[-/]\s?\d{1,5}[A-Za-z]?)?\.?"
_PREFIX_TYPES = (
    "rue|avenue|av\\.|boulevard|bd|chemin|impasse|place|allée|route|quai|cours|square|passage|voie|"
    "calle|c/|avenida|avda\\.|plaza|paseo|pasaje|camino|ronda|acceso|vía|callejón|cuesta|rambla|glorieta|carretera|"
    "urbanización|travesía|alameda|via|viale|piazza|piazzale|corso|vicolo|largo|strada|contrada|rotonda|borgo|"
    "canale|incrocio|stretto|rua|travessa|ul\\.|ulica|al\\.|aleja|plac|pl\\.|os\\.|osiedle|rynek|skwer|"
    "av|c\\.|r\\.|U|Na|Nad|Pod|Za|Ve")
_SUFFIX_WORDS = "utca|út|útja|tér|tere|körút|köz|sor|fasor|sétány|lépcső|rakpart|liget|dűlő|telep|u\\."
_COMPOUND_ENDINGS = (
    "straße|strasse|str\\.|weg|allee|platz|gasse|ring|damm|ufer|chaussee|steig|pfad|markt|"
    "straat|laan|plein|gracht|kade|singel|hof|dreef|dijk|steeg|pad|"
    "katu|tie|kuja|polku|väylä|kaari|rinne|piha|ranta|tori|aukio|raitti|tienhaara|mäki|bulevardi|puistikko|"
    "vägen|gatan|torget|gränd|stigen|backen|vej|gade|plads|stræde|"
    "ova|ová|ská|ní|ého|ových|ců")
_OCCUPANCY = r"(?:,?\s(?:Apt\.?|Apartment|Suite|Ste\.?|Unit|#|Piso|Puerta|Appartamento|Piano|Interno|m\.|lok\.|" \
             r"Bajo|Esc\.)\s?\w{1,5})*"
_POSTCODE = r"(?:(?:[A-Z]{1,2}-)?\d{2,5}(?:[ \-]\d{2,3})?(?:\s?[A-Z]{2})?|[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2})"
_CITY = rf"{_CAP}(?:[ \-](?:{_CAP}|nad|pod|am|an|der|sur|de|di|del|la|le|im|in)){{0,3}}"
_TAIL = rf"(?:,\s(?:{_POSTCODE},?\s{_CITY}(?:\s\([A-Z]{{2}}\))?|{_CITY},\s(?:[A-Z]{{2}}\s)?{_POSTCODE}))?"
_TAIL_REQUIRED = _TAIL[:-1]  # the same without the final "?"
_STREET_NAME = rf"(?:(?:{_CAP}|de|del|la|las|los|di|della|delle|dei|du|des|d'|da|do|dos)\s){{0,4}}{_CAP}"
_ADDRESS_PATTERNS = (
    re.compile(rf"(?<![\w])(?:\d{{1,4}}(?:\s?(?:bis|ter))?,?\s)?(?i:{_PREFIX_TYPES})\s{_STREET_NAME},?\s{_NUMBER}"
               rf"{_OCCUPANCY}{_TAIL}"),
    re.compile(rf"(?<![\w])(?:\d{{1,4}}(?:\s?(?:bis|ter))?,\s)(?i:{_PREFIX_TYPES})\s{_STREET_NAME}{_TAIL}"),  # 23, rue X
    re.compile(rf"(?<![\w])(?i:{_PREFIX_TYPES})\s{_STREET_NAME}{_TAIL_REQUIRED}"),  # chemin de Lamy, 05127 Ville
    re.compile(rf"(?<![\w])(?:{_CAP}\s){{1,3}}(?:{_SUFFIX_WORDS})\s{_NUMBER}{_OCCUPANCY}{_TAIL}"),
    re.compile(rf"(?<![\w])(?:{_CAP}[\s\-])?[^\W\d_][\w\-]*(?i:{_COMPOUND_ENDINGS})\s{_NUMBER}{_OCCUPANCY}{_TAIL}"),
)
_NOT_STREET_WORD = r"(?!(?:Apt|Apartment|Suite|Ste|Unit)\b)"
_US_CANDIDATE = re.compile(rf"(?<![\w.,])\d{{1,6}}\s(?:[NSEW]\.?\s)?(?:{_NOT_STREET_WORD}[A-Z][\w'’\-]*\s){{0,3}}"
                           rf"{_NOT_STREET_WORD}[A-Z][\w.]*"
                           rf"{_OCCUPANCY}{_TAIL}")


def _us_street(candidate: str) -> bool:
    street = re.split(r",\s", candidate)[0]
    try:
        tags, kind = usaddress.tag(street)
    except usaddress.RepeatedLabelError:
        return False
    return kind == "Street Address" and {"AddressNumber", "StreetName", "StreetNamePostType"} <= set(tags)


_LOWER_OK = re.compile(rf"(?i)^(?:{_PREFIX_TYPES}|{_SUFFIX_WORDS}|de|del|la|las|los|di|della|delle|dei|du|des|d|da|do|"
                       rf"dos|bis|ter|nad|pod|am|an|der|sur|le|im|in|m|lok|x)$")


def _plausible(value: str) -> bool:
    """One line, and every word but street-type words and particles capitalised ("place their orders for 2020",
    "instalment covering 3" are prose)."""
    if "\n" in value:
        return False
    words = re.findall(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*\.?", value)
    return all(w[0].isupper() or _LOWER_OK.match(w.rstrip(".")) or _LOWER_OK.match(w) for w in words) \
        and any(w[0].isupper() for w in words)


_LEADING_PROSE = re.compile(r"[^\W\d_]+[ \-]")


class _EndsBeforeDigit:
    """Whether some ``words`` ending right before a space and a digit occurs: the digits are looked up first (few),
    then the word ending there (a big alternation tried at every letter of a text is what costs)."""

    _SPACE_DIGIT = re.compile(r"\s\d")

    def __init__(self, words: str, flags: str = ""):
        self.ending = re.compile(rf"(?{flags}:{words})$" if flags else rf"(?:{words})$")

    def search(self, text: str) -> bool:
        return any(self.ending.search(text, max(0, m.start() - 16), m.start())
                   for m in self._SPACE_DIGIT.finditer(text))


# What each pattern cannot match without, found fast: a street-type word before a space (the three prefix
# patterns), a suffix word or a compound ending right before a space and a digit (the other two).
_PREFIX_CUE = re.compile(rf"(?<![\w])(?i:{_PREFIX_TYPES})\s")
_NEEDS = (_PREFIX_CUE, _PREFIX_CUE, _PREFIX_CUE, _EndsBeforeDigit(_SUFFIX_WORDS), _EndsBeforeDigit(_COMPOUND_ENDINGS, "i"))


def find_addresses(text: str, prefilter: bool = True) -> Iterator[Span]:
    """Address spans; ``prefilter=False`` runs every pattern (the reference the fast path is tested against)."""
    cues: dict = {}  # one search per cue pattern and text
    for pattern, needs in zip(_ADDRESS_PATTERNS, _NEEDS):
        if prefilter and needs not in cues:
            cues[needs] = bool(needs.search(text))
        if prefilter and not cues[needs]:
            continue
        for m in pattern.finditer(text):
            start, end = m.start(), m.end() - (text[m.end() - 1] in ".,")
            lead = _LEADING_PROSE.match(text, start, end)  # "to Scholzallee 5": the optional first word was prose
            if lead and not lead.group()[0].isupper() and not _LOWER_OK.match(lead.group()[:-1]):
                start = lead.end()
            while end > start and not _plausible(text[start:end]):  # "rue Ferrand has mould": prose follows
                cut = max(text.rfind(" ", start, end), text.rfind(",", start, end))
                end = cut if cut > start else start
                end -= text[end - 1:end] in ",." if end > start else 0
            if end > start and any(ch.isdigit() for ch in text[start:end]) and any(ch.isalpha() for ch in text[start:end]):
                yield "address", start, end
    for m in _US_CANDIDATE.finditer(text):
        if "\n" not in m.group() and _us_street(m.group()):
            yield "address", m.start(), m.end() - (text[m.end() - 1] in ".,")
