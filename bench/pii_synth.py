"""Shared machinery of the Faker-made PII sets: values per locale and span-exact template filling.

The templates live in the scripts that use them (``pii_frozen_make.py`` for the frozen evaluation set,
``pii_dev_make.py`` for the development set), so the two sets share no sentence frame and no seed.

A template is a string with ``{slot}`` fields; ``fill`` draws a value for each slot and records the exact
character span of every labelled value. Slots and what they produce:

name / name2 (full person name), first (a first name alone), address (street line, sometimes with postcode and
city), phone (national, international or with an extension), card, iban, ssn, ip, email, url: labelled private
identifiers. hotline, org_url, org_email: public contact points, labelled with ``public: true`` (a policy that
keeps public contact points in answers must keep them). Everything else (order, date, price, version, brand,
company, famous, tracking, isbn, code, money, time, count) is an unlabelled look-alike.
"""

from __future__ import annotations

import random
import re

import phonenumbers
from faker import Faker

LOCALE_REGION = {"en_US": "US", "de_DE": "DE", "fr_FR": "FR", "pl_PL": "PL", "fi_FI": "FI", "hu_HU": "HU",
                 "es_ES": "ES", "it_IT": "IT", "nl_NL": "NL", "cs_CZ": "CZ", "sv_SE": "SE", "pt_PT": "PT",
                 "en_GB": "GB", "da_DK": "DK", "ro_RO": "RO", "tr_TR": "TR"}
CARD_TYPES = ("amex", "diners", "discover", "jcb15", "jcb16", "maestro", "mastercard", "visa13", "visa16", "visa19")
LABELLED = {"name": "name", "name2": "name", "first": "name", "address": "address", "phone": "phone",
            "card": "credit_card", "iban": "iban", "ssn": "ssn", "ip": "ip", "email": "email", "url": "url",
            "hotline": "phone", "org_url": "url", "org_email": "email"}
PUBLIC = {"hotline", "org_url", "org_email"}
TOLL_FREE = {"US": ["1-800-{3}-{4}", "(888) {3}-{4}", "1 (877) {3}-{4}"], "DE": ["0800 {3} {4}", "0800 {7}"],
             "FR": ["0 800 {3} {3}", "0800 {6}"], "PL": ["800 {3} {3}", "801 {3} {3}"], "FI": ["0800 {3} {3}"],
             "HU": ["06 80 {3} {3}", "06-80/{3}-{3}"], "ES": ["900 {3} {3}", "800 {3} {3}"],
             "IT": ["800 {3} {3}", "803 {3}"], "NL": ["0800 {4}", "0800-{4}"], "CZ": ["800 {3} {3}"],
             "SE": ["020-{2} {2} {2}"], "GB": ["0800 {3} {4}", "0808 {3} {4}"]}


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _group_card(number: str, rng: random.Random) -> str:
    style = rng.random()
    if style < 0.4:
        return number
    sep = " " if style < 0.8 else "-"
    if len(number) == 15 and number[:2] in ("34", "37"):
        return sep.join((number[:4], number[4:10], number[10:]))
    return sep.join(number[i:i + 4] for i in range(0, len(number), 4))


class Values:
    """Draws slot values for one locale from a seeded Faker and a seeded ``random.Random``."""

    def __init__(self, locale: str, seed: int):
        self.locale, self.region = locale, LOCALE_REGION[locale]
        self.fake = Faker(locale)
        self.fake.seed_instance(seed)
        self.rng = random.Random(seed)

    def person(self) -> str:
        first, last = self.fake.first_name(), self.fake.last_name()
        return f"{last} {first}" if self.locale == "hu_HU" else f"{first} {last}"

    def address(self) -> str:
        street = re.sub(r"\s+", " ", self.fake.street_address()).strip()
        if self.rng.random() < 0.4:
            return street
        full = re.sub(r"\s*\n\s*", ", ", self.fake.address().strip())
        return re.sub(r"\s+", " ", full)

    def phone(self) -> str:
        raw = self.fake.phone_number()
        r = self.rng.random()
        try:
            parsed = phonenumbers.parse(raw, self.region)
        except phonenumbers.NumberParseException:
            parsed = None
        if parsed is not None and r < 0.25:
            raw = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
        elif parsed is not None and r < 0.35:
            raw = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
        if "x" not in raw and self.rng.random() < 0.15:
            raw += self.rng.choice([" ext. ", " x", " ext ", " #"]) + _digits(self.rng, self.rng.randint(2, 4))
        return raw

    def hotline(self) -> str:
        pattern = self.rng.choice(TOLL_FREE.get(self.region, TOLL_FREE["US"]))
        return re.sub(r"\{(\d)\}", lambda m: _digits(self.rng, int(m.group(1))), pattern)

    def card(self) -> str:
        return _group_card(self.fake.credit_card_number(self.rng.choice(CARD_TYPES)), self.rng)

    def iban(self) -> str:
        iban = self.fake.iban()
        return " ".join(iban[i:i + 4] for i in range(0, len(iban), 4)) if self.rng.random() < 0.5 else iban

    def ip(self) -> str:
        r = self.rng.random()
        return self.fake.ipv6() if r < 0.2 else (self.fake.ipv4_private() if r < 0.5 else self.fake.ipv4_public())

    def url(self) -> str:
        return self.fake.uri() if self.rng.random() < 0.6 else self.fake.url()

    def value(self, slot: str) -> str:
        f, rng = self.fake, self.rng
        makers = {
            "name": self.person, "name2": self.person, "first": f.first_name, "address": self.address,
            "phone": self.phone, "card": self.card, "iban": self.iban, "ssn": f.ssn, "ip": self.ip,
            "email": f.email, "url": self.url, "hotline": self.hotline,
            "org_url": lambda: f"https://www.{f.domain_name()}/" + rng.choice(["", "help", "contact", "faq"]),
            "org_email": lambda: rng.choice(["support", "info", "help", "contact", "service"]) + "@" + f.domain_name(),
            "order": lambda: rng.choice(["#", "", "A", "NO-"]) + _digits(rng, rng.randint(6, 16)),
            "date": lambda: f.date(pattern=rng.choice(["%Y-%m-%d", "%d.%m.%Y", "%d/%m/%Y", "%m/%d/%Y", "%B %d, %Y"])),
            "price": lambda: rng.choice(["${:,}.{:02d}", "€{:,}.{:02d}", "£{:,}.{:02d}", "{:,}.{:02d} EUR",
                                         "{:,},{:02d} zł", "{:,} Ft"]).format(rng.randint(1, 99999),
                                                                               rng.randint(0, 99)),
            "version": lambda: ".".join(str(rng.randint(0, 40)) for _ in range(rng.choice([2, 3, 4]))),
            "brand": lambda: rng.choice(BRANDS), "famous": lambda: rng.choice(FAMOUS), "company": f.company,
            "tracking": lambda: "1Z" + _digits(rng, 3) + "AA" + _digits(rng, 10),
            "isbn": f.isbn13, "code": lambda: f"{f.lexify('???').upper()}-{_digits(rng, 4)}-{_digits(rng, 4)}",
            "money": lambda: f"{rng.randint(1, 9)} {_digits(rng, 3)} {_digits(rng, 3)}",
            "time": lambda: f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
            "count": lambda: str(rng.randint(2, 500)), "city": f.city,
        }
        return makers[slot]()


BRANDS = ["Hello Fresh", "Ben & Jerry's", "Marks & Spencer", "Ralph Lauren", "Tommy Hilfiger", "Dr. Oetker",
          "Hugo Boss", "Calvin Klein", "Louis Vuitton", "Wells Fargo", "Morgan Stanley", "Mercedes-Benz",
          "Tim Hortons", "Johnson & Johnson", "Dolce & Gabbana", "Jack Daniel's", "Harley-Davidson",
          "Procter & Gamble", "Rolls-Royce", "Ferrero Rocher", "Giorgio Armani", "Estée Lauder", "Martha Stewart",
          "Kellogg's", "McDonald's", "Trader Joe's", "Bang & Olufsen", "Lidl", "Aldi Süd", "Carrefour"]
FAMOUS = ["Albert Einstein", "Marie Curie", "Frédéric Chopin", "Ada Lovelace", "Isaac Newton", "Nikola Tesla",
          "Wolfgang Amadeus Mozart", "Leonardo da Vinci", "Jane Austen", "Mahatma Gandhi", "Charles Darwin",
          "Barack Obama", "Angela Merkel", "William Shakespeare", "Pablo Picasso", "Alan Turing", "Taylor Swift"]


def fill(template: str, values: Values) -> tuple[str, list[dict]]:
    """The text of ``template`` with every slot filled, and the labelled entities with exact spans."""
    parts, entities, pos = [], [], 0
    for piece in re.split(r"(\{\w+\})", template):
        slot = piece[1:-1] if re.fullmatch(r"\{\w+\}", piece) else None
        text = values.value(slot) if slot else piece
        if slot in LABELLED:
            entities.append({"kind": LABELLED[slot], "start": pos, "end": pos + len(text), "value": text,
                             "public": slot in PUBLIC})
        parts.append(text)
        pos += len(text)
    return "".join(parts), entities
