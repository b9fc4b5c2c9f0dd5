"""Write the DEVELOPMENT PII set ``bench/pii_dev.jsonl``: the one to look at while tuning (not committed).

    .venv/bin/python bench/pii_dev_make.py [--out bench/pii_dev.jsonl] [--per-locale 80]

Same row format as the frozen set (see ``pii_frozen_make.py``) but other sentence templates, other seeds and
some other locales, so no frame or value of the frozen set is seen while a detector is tuned.
Evaluate with ``bench/pii_frozen_eval.py --data bench/pii_dev.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from pii_synth import Values, fill  # noqa: E402

SEED = 777
LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "pl_PL", "fi_FI", "hu_HU", "es_ES", "it_IT", "sv_SE", "pt_PT")
DEFAULT_OUT = Path(__file__).with_name("pii_dev.jsonl")

QUERY = [
    "{name} said the report is due {date}; can you outline it?",
    "Help me write a thank-you card to {name} for the flowers.",
    "Yesterday {name} told me the project was cancelled.",
    "Why would {first} ignore my messages for {count} days?",
    "Rewrite this so {name} doesn't get offended.",
    "Our neighbour {name} parks in front of our garage every day.",
    "I need a reference letter for {name}, a former intern.",
    "{first} wants to know if the meeting is still on.",
    "Deliver it to {address}, ring twice.",
    "The apartment at {address} has mould; what are my rights?",
    "Old address: {address}. New one: {address}.",
    "Send the contract to {name}, {address}.",
    "You can ring me on {phone} after {time}.",
    "This is my cell: {phone}",
    "Why does {phone} call me every night?",
    "Save {phone} as the emergency contact for {first}.",
    "Pay with {card} and ship today.",
    "The last payment from {card} failed.",
    "IBAN for the rent: {iban}",
    "Wire {price} to {iban} by {date}.",
    "SSN {ssn} is on my tax form, is it exposed?",
    "I typed {ssn} in the form by mistake.",
    "Port 443 on {ip} is open, should I close it?",
    "Ban {ip} from the forum.",
    "Email {email} the agenda.",
    "My wife's address is {email}, add her to the account.",
    "Look at {url} and tell me if the layout works.",
    "Share {url} with the team.",
    "{name} ({phone}, {email}) needs a callback.",
]
RESPONSE = [
    "Call {hotline} for free advice, or see {org_url}.",
    "Questions? Write to {org_email} or call {hotline}.",
    "{brand} is a brand owned by {company}.",
    "{famous} is known for their work in science.",
    "Here is your letter: Dear {name}, please call me at {phone}.",
    "The store at {address} opens at {time}.",
]
NEGATIVE = [
    "Version {version} broke my plugins after {date}.",
    "Order {order}: total {price}.",
    "I love {brand} more than {brand}.",
    "{famous} or {famous}: who was more influential?",
    "The code {code} shows up after reboot at {time}.",
    "Tracking {tracking}, ISBN {isbn}.",
    "{company} reported revenue of {price}.",
]


def make(per_locale: int = 80, seed: int = SEED) -> list[dict]:
    rows = []
    for index, locale in enumerate(LOCALES):
        values, rng = Values(locale, seed + 101 * index), random.Random(seed + index)
        for i in range(per_locale):
            r = rng.random()
            field, pool = ("response", RESPONSE) if r < 0.2 else (
                ("query", NEGATIVE) if r < 0.35 else ("query", QUERY))
            text, entities = fill(rng.choice(pool), values)
            rows.append({"id": f"dev-{locale}-{i:03d}", "locale": locale, "field": field, "text": text,
                         "entities": entities})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--per-locale", type=int, default=80)
    args = parser.parse_args(argv)
    rows = make(args.per_locale)
    with args.out.open("w", encoding="utf-8") as f:
        f.write(json.dumps({"meta": {"made_by": "bench/pii_dev_make.py", "seed": SEED, "texts": len(rows)}}) + "\n")
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(rows)} texts -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
