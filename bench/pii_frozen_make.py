"""Write the FROZEN labelled PII evaluation set ``bench/pii_frozen_eval.jsonl`` (never tune on it).

    .venv/bin/python bench/pii_frozen_make.py [--out bench/pii_frozen_eval.jsonl] [--per-locale 120]

Made once, before any detector change, from the sentence templates below (written for this set only; the
development set ``pii_dev_make.py`` uses other templates and other seeds) and values drawn by Faker 40.63 with
seed 20261201 + locale index. Ten locales; nl_NL and cs_CZ are also held out of the name gazetteer, so their
name recall shows how the detector does on names it has never seen. The first line is a ``{"meta": ...}``
header; every other line is ``{"id", "locale", "field", "text", "entities": [{"kind", "start", "end", "value",
"public"}]}`` with exact character spans. ``field`` is where such a text would live (query: a user's words;
response: an answer); ``public`` marks public contact points (toll-free hotlines, organisation URLs and role
mailboxes) that a response policy may keep. Brand names, famous people, company names, order numbers, dates,
prices, versions, ISBNs and tracking numbers are unlabelled look-alikes: redacting them is a false positive.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from pii_synth import Values, fill  # noqa: E402

SEED = 20261201
LOCALES = ("en_US", "de_DE", "fr_FR", "pl_PL", "fi_FI", "hu_HU", "es_ES", "it_IT", "nl_NL", "cs_CZ")
HELD_OUT_OF_GAZETTEER = ("nl_NL", "cs_CZ")
DEFAULT_OUT = Path(__file__).with_name("pii_frozen_eval.jsonl")

QUERY = [
    # names without a cue word
    "{name} listed his top {count} songs, can you turn them into a playlist?",
    "Write a short birthday poem for {name}, she turns {count} tomorrow.",
    "I had a fight with {name} about the rent. How do I apologise without losing face?",
    "{name} and {name2} both applied for the job; compare their cover letters below.",
    "Can you translate this message from {name} into English?",
    "My manager {name} keeps scheduling meetings at {time}. Is that legal?",
    "Draft an email to {name} asking to move our call to next week.",
    "what does it mean when {first} says she needs space",
    "Summarise the notes {name} took in the meeting on {date}.",
    "Is {name}'s argument about inflation right? He says prices rose {count}% in a year.",
    "The landlord, {name}, refuses to return my deposit of {price}.",
    "{first} from accounting sent me a spreadsheet with errors, help me fix the formulas.",
    "Give me ideas for a retirement speech for {name}, who worked here {count} years.",
    "how do i tell {first} that i dont want to go to the wedding",
    "Make a rhyme with the name {name}.",
    # addresses
    "Please ship the replacement to {address} instead.",
    "I moved to {address} last month, how do I update my voter registration?",
    "Is {address} in a flood zone?",
    "My parcel was delivered to {address} but I live two doors down.",
    "Write a complaint to the council about the noise at {address}.",
    "The party is at {address}, can you suggest what to bring?",
    "{name} lives at {address} and I need to send her a formal notice.",
    # phones
    "Call me back on {phone} please, I've been waiting since {time}.",
    "My new number is {phone}, can you update my profile?",
    "I keep getting spam calls from {phone}. Who is it?",
    "Text {first} at {phone} when the order ({order}) is ready.",
    "reach me at {phone} or {email}",
    "Format this number for my contacts: {phone}",
    "{phone} is my office line; the mobile is {phone} if I'm out.",
    # cards
    "My card {card} was charged twice for order {order}.",
    "Refund to {card} please, the charge on {date} was {price}.",
    "Why was card number {card} declined at checkout?",
    "Is {card} a valid test number? My shop rejects it.",
    # iban
    "My IBAN is {iban}, please send the refund there.",
    "Transfer the deposit to {iban} before {date}.",
    "Can you check whether {iban} is a correct account number?",
    # ssn
    "Here's my SSN: {ssn}. Why does the form keep saying it is invalid?",
    "The IRS letter mentions {ssn}, is that mine or my wife's?",
    "{name}, SSN {ssn}, needs a new W-2.",
    # ip
    "My server at {ip} stopped answering pings after the update to {version}.",
    "Why is {ip} blocked by my firewall?",
    "Someone from {ip} tried to log in to my account at {time}.",
    # email
    "Send the invoice to {email} instead of me.",
    "Can you write a polite reply to {email} declining the offer?",
    "My login is {email} and the reset link never arrives.",
    # url
    "Check my portfolio at {url} and tell me what to improve.",
    "Is {url} a phishing site? It asked for my password.",
    "My blog post {url} is not indexed yet.",
    # mixtures
    "Hi, I'm {name}, my phone is {phone} and I live at {address}.",
    "Update my details: {email}, {phone}, card {card}.",
    "{name} ({email}) sent {price} to {iban} on {date}.",
    "Contact {name} at {phone}; the contract is at {url}.",
]

RESPONSE = [
    "If you are in crisis, call the helpline at {hotline}, free and open 24/7, or visit {org_url}.",
    "You can reach customer service at {hotline} or write to {org_email}.",
    "The official guidance is at {org_url}; for questions email {org_email}.",
    "{brand} offers a refund within 30 days; their support line is {hotline}.",
    "According to {famous}, imagination matters more than knowledge.",
    "As {famous} wrote, the answer depends on context. See {org_url} for the full text.",
    "Sure! Here is a reply to {name}: thank you for your message, I will call you at {phone} tomorrow.",
    "I have updated the shipping address to {address} and will email {email} the confirmation.",
    "{company} was founded in {count}; its headquarters are in {city}.",
    "To compare prices: {brand} charges {price}, {company} charges {price}.",
    "Your order {order} ships on {date}; track it with {tracking}.",
    "Upgrade to version {version} and restart; the build from {date} fixes it.",
    "The book's ISBN is {isbn} and it costs {price}.",
]

NEGATIVE_QUERY = [
    "Order {order} arrived damaged on {date}, the box was crushed.",
    "I'm on version {version} of the app, still crashing after {time}.",
    "The total was {price} but I was charged {price}.",
    "tracking number {tracking} says delivered but nothing arrived",
    "Is {brand} better than {brand} for a family of {count}?",
    "What did {famous} mean by that quote?",
    "I work at {company} and need help with a presentation.",
    "Code {code} appears on my router after updating to {version}.",
    "Why did the population of {city} grow to {money}?",
    "My flight on {date} at {time} was cancelled, can I get {price} back?",
    "Reference {order}: please confirm the ISBN {isbn}.",
    "Compare {brand} with {company} for meal kits.",
]


def make(per_locale: int = 120, seed: int = SEED) -> list[dict]:
    rows = []
    for index, locale in enumerate(LOCALES):
        values, rng = Values(locale, seed + index), random.Random(seed * 31 + index)
        for i in range(per_locale):
            r = rng.random()
            field, pool = ("response", RESPONSE) if r < 0.22 else (
                ("query", NEGATIVE_QUERY) if r < 0.35 else ("query", QUERY))
            template = pool[i % len(pool)] if pool is QUERY and i < len(QUERY) else rng.choice(pool)
            text, entities = fill(template, values)
            rows.append({"id": f"{locale}-{i:03d}", "locale": locale, "field": field, "text": text,
                         "entities": entities})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--per-locale", type=int, default=120)
    args = parser.parse_args(argv)
    rows = make(args.per_locale)
    meta = {"meta": {"made_by": "bench/pii_frozen_make.py", "faker": "40.63.0", "seed": SEED,
                     "locales": list(LOCALES), "held_out_of_gazetteer": list(HELD_OUT_OF_GAZETTEER),
                     "texts": len(rows), "entities": sum(len(r["entities"]) for r in rows),
                     "made_on": date.today().isoformat(),
                     "note": "Frozen before any detector change; never tune on it (use pii_dev_make.py)."}}
    with args.out.open("w", encoding="utf-8") as f:
        for row in [meta, *rows]:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(json.dumps(meta["meta"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
