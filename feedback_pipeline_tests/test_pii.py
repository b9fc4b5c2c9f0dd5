"""PII detection: each kind's valid shapes, its look-alikes that must stay untouched, overlaps and redaction."""

import pytest

from feedback_pipeline.cleaning.pii import (
    Identifier, contains_identifier, find_identifiers, iban_ok, luhn_ok, redact, redact_value, redact_with_counts,
)


def found(text: str) -> list[tuple[str, str]]:
    return [(i.kind, i.value) for i in find_identifiers(text)]


def kinds(text: str) -> set[str]:
    return {i.kind for i in find_identifiers(text)}


# --- email vs handle ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("mail john.doe@example.com today", "john.doe@example.com"),
    ("UPPER: ROBERT.KING@OUTLOOK.COM", "ROBERT.KING@OUTLOOK.COM"),
    ("plus tag li.wei+shop@qq.com.", "li.wei+shop@qq.com"),
    ("irish j.o'connor@example.ie ok", "j.o'connor@example.ie"),
    ("quoted 'anna@beispiel.de'", "anna@beispiel.de"),
    ("<help@tickets.example.org>", "help@tickets.example.org"),
    ("umlaut müller@beispiel.de", "müller@beispiel.de"),
    ("obfuscated jane [at] example [dot] com", "jane [at] example [dot] com"),
    ("spoken chris dot b at protonmail dot com", "chris dot b at protonmail dot com"),
])
def test_emails(text, value):
    assert found(text) == [("email", value)]


def test_email_domain_is_not_a_handle_and_handles_are_found():
    assert found("write to bob@example.com or ping @bob_k") == [("email", "bob@example.com"), ("handle", "@bob_k")]


@pytest.mark.parametrize("text, value", [
    ("thanks @dave_k!", "@dave_k"),
    ("cc @octo-cat please", "@octo-cat"),
    ("IG @the.daily.baker.", "@the.daily.baker"),
    ("mastodon @kay@fosstodon.org", "@kay@fosstodon.org"),
])
def test_handles(text, value):
    assert found(text) == [("handle", value)]


@pytest.mark.parametrize("text", [
    "@dataclass\nclass Point:\n    x: int",
    "@app.route('/users')\ndef users(): ...",
    "npm i @types/node @babel/preset-env",
    "@media (max-width: 600px) { }",
    "meet @ 10am or @10am, hi @everyone",
    "result = A @ B",
    "user@localhost and icon@2x.png",
])
def test_handle_look_alikes_are_not_handles(text):
    assert "handle" not in kinds(text) and "email" not in kinds(text)


# --- phone ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    "+44 20 7946 0958", "+44 (0)20 7946 0958", "+1 (212) 555-0147", "+1-425-555-0110", "+33 1 42 68 53 00",
    "+49 170 1234567", "+91 98765 43210", "+7 (495) 123-45-67", "+81 3-1234-5678", "0044 20 7946 0958",
    "(555) 123-4567", "555-123-4567", "555.123.4567", "1-800-555-0175", "1 (888) 555-0123",
    "020 7946 0958", "07700 900123", "0161 496 0000", "06 12 34 56 78", "030 12345678", "089 / 12 34 56 78",
])
def test_phone_shapes(value):
    assert found(f"reach us at {value}, thanks") == [("phone", value)]


def test_phone_extension_is_part_of_the_number():  # changed in issue 11: no fragment of a number may stay
    assert found("call 415-555-2671x204") == [("phone", "415-555-2671x204")]
    assert found("call +1 (212) 555-0147 ext. 22") == [("phone", "+1 (212) 555-0147 ext. 22")]
    assert redact("call +1-841-258-6834x4978 now").text == "call [PHONE] now"


@pytest.mark.parametrize("text", [
    "Between 2019 and 2020 sales rose 12.5%.",
    "Released 2024-01-15, patched 15/01/2024 and 01.02.2023.",
    "Timestamp 2024-05-01T12:34:56Z",
    "Upgrade from 1.9.4 to 2.0.0-rc.1 (build 4417).",
    "Total $1,299.99, or 1 234,56 € with 19 % VAT; pi is 3.14159265358979.",
    "Population 8,336,817; order 112-3456789-1234567; ticket #48213.",
    "ISBN 978-0-13-468599-1",
    "Lottery numbers: 04 11 23 35 42 47",
    "order number 4829103746 and dial-in code 8812 442 19#",
    "9400 1118 9922 3397 4567 89 is the USPS tracking number",
])
def test_phone_look_alikes_are_left_alone(text):
    assert find_identifiers(text) == []


def test_bare_digit_runs_need_a_phone_cue():
    assert found("my number is 4155552671") == [("phone", "4155552671")]
    assert found("call 555-0134 now") == [("phone", "555-0134")]
    assert find_identifiers("invoice 4155552671") == []
    assert find_identifiers("the answer is 555-0134") == []


# --- url -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("See https://example.com/foo?bar=1.", "https://example.com/foo?bar=1"),
    ("(see https://docs.acme.io/setup#proxy), ok", "https://docs.acme.io/setup#proxy"),
    ("wiki https://en.wikipedia.org/wiki/Python_(programming_language).",
     "https://en.wikipedia.org/wiki/Python_(programming_language)"),
    ("Go to https://status.example.com!!!", "https://status.example.com"),
    ("[docs](https://docs.example.org/a/b)", "https://docs.example.org/a/b"),
    ("visit www.example.org, now", "www.example.org"),
    ("repo at github.com/annak/tools; star it", "github.com/annak/tools"),
    ("<https://lists.example.org/2023/001.html>", "https://lists.example.org/2023/001.html"),
])
def test_urls_without_trailing_punctuation(text, value):
    assert found(text) == [("url", value)]


def test_bare_domain_without_path_and_file_paths_are_not_urls():
    assert find_identifiers("try regex101.com or open src/utils/file.py and docs/api.md") == []


def test_url_embedding_an_ip_or_email_stays_one_url():
    assert found("open http://192.168.0.1/admin") == [("url", "http://192.168.0.1/admin")]
    assert found("https://example.com/u/bob@example.com") == [("url", "https://example.com/u/bob@example.com")]


# --- ip ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("gateway 192.168.1.254.", "192.168.1.254"),
    ("client=10.12.0.7 GET", "10.12.0.7"),
    ("host 10.0.0.15:8443", "10.0.0.15"),
    ("ping6 2001:db8:85a3::8a2e:370:7334 fails", "2001:db8:85a3::8a2e:370:7334"),
    ("localhost ::1 works", "::1"),
    ("mapped ::ffff:192.0.2.128.", "::ffff:192.0.2.128"),
    ("link-local fe80::1%eth0 here", "fe80::1%eth0"),
])
def test_ips(text, value):
    assert found(text) == [("ip", value)]


@pytest.mark.parametrize("text", [
    "bad export 256.1.3.4 and 999.10.10.10",
    "firmware 10.4.1.12 and version 1.2.3.4",
    "OID 1.3.6.1.2.1.1.3.0",
    "std::vector<int> and Foo::bar()",
    "at 12:30:45 the MAC 00:1A:2B:3C:4D:5E",
])
def test_ip_look_alikes(text):
    assert "ip" not in kinds(text)


# --- credit cards (Luhn) -------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    "4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", "5555 5555 5555 4444",
    "3782 822463 10005", "371449635398431", "6011000990139424", "3530 1113 3330 0000", "3056 930902 5904",
    "4222222222222", "2223003122003222",
])
def test_luhn_valid_cards(value):
    assert found(f"card: {value} exp 09/27") == [("credit_card", value)]


@pytest.mark.parametrize("value", ["4111 1111 1111 1112", "5555555555554445", "3782 822463 10006"])
def test_luhn_invalid_cards_are_not_cards(value):
    assert "credit_card" not in kinds(f"card: {value}")


def test_luhn_passing_numbers_outside_issuer_ranges_or_after_order_cues_are_not_cards():
    tracking = next(n for n in (f"940011189922339{d}" for d in range(10)) if luhn_ok(n))
    assert "credit_card" not in kinds(f"parcel {tracking}")  # no card issuer range starts with 9
    assert "credit_card" not in kinds("order 4111111111111111 shipped")  # nearest cue says order number


def test_luhn():
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")


# --- iban (mod 97) -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    "DE89 3704 0044 0532 0130 00", "DE89370400440532013000", "GB82 WEST 1234 5698 7654 32",
    "GB29NWBK60161331926819", "FR14 2004 1010 0505 0001 3M02 606", "NL91ABNA0417164300",
    "ES91 2100 0418 4502 0005 1332", "IT60 X054 2811 1010 0000 0123 456", "BE68 5390 0754 7034",
    "CH93 0076 2011 6238 5295 7", "NO93 8601 1117 947", "PL61 1090 1014 0000 0712 1981 2874",
    "SA03 8000 0000 6080 1016 7519", "ie29 aibk 9311 5212 3456 78",
])
def test_valid_ibans(value):
    assert found(f"IBAN: {value}, thanks") == [("iban", value)]


@pytest.mark.parametrize("value", [
    "DE89 3704 0044 0532 0130 01",  # check digits wrong
    "GB82WEST12345698765433",
    "NL91ABNA0417164301",
    "DE89 3704 0044 0532 0130",     # too short for Germany
    "XX12 3456 7890 1234 56",       # no such country
])
def test_invalid_ibans(value):
    assert "iban" not in kinds(f"IBAN: {value}")
    assert "credit_card" not in kinds(f"IBAN: {value}")


def test_iban_followed_by_words_is_cut_at_the_country_length():
    assert found("IBAN DE89 3704 0044 0532 0130 00 please") == [("iban", "DE89 3704 0044 0532 0130 00")]
    assert iban_ok("de89370400440532013000")


# --- names (cue-based) ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("Hello, my name is Priya Raman and I", "Priya Raman"),
    ("I'm John Carter, moderator here.", "John Carter"),
    ("Dear Mrs. Okafor, your parcel", "Okafor"),
    ("Best regards,\nTomasz Kowalski", "Tomasz Kowalski"),
    ("Yours sincerely,\nGrace O'Neill", "Grace O'Neill"),
    ("Name: Olusegun Adeyemi\nDOB: 1987", "Olusegun Adeyemi"),
])
def test_cued_names(text, value):
    assert found(text) == [("name", value)]


@pytest.mark.parametrize("text", ["I'm Not Sure this works", "Thanks, Team!", "Hi there,", "Regards,\nThe Acme Team"])
def test_name_cues_without_a_name(text):
    assert "name" not in kinds(text)


# --- redaction API -------------------------------------------------------------------------------------------

def test_redact_replaces_each_kind_and_counts():
    text = ("Mail a@b.com or +44 20 7946 0958, pay DE89370400440532013000 or 4111 1111 1111 1111, "
            "see https://x.com/a from 10.0.0.1 @zed")
    result = redact(text)
    assert result.text == "Mail [EMAIL] or [PHONE], pay [IBAN] or [CARD], see [URL] from [IP] [HANDLE]"
    assert result.counts == {"email": 1, "phone": 1, "iban": 1, "credit_card": 1, "url": 1, "ip": 1, "handle": 1}
    assert result.total == 7


@pytest.mark.parametrize("text", [
    "The answer is 42; see section 3.2 of the 2023 report.",
    "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "uuid 550e8400-e29b-41d4-a716-446655440000, md5 5d41402abc4b2a76b9719d911017c592",
    "Tracking 1Z999AA10123456784, commit a3f9c21, error 0x80070005.",
])
def test_text_without_identifiers_is_unchanged(text):
    assert redact(text).text == text and redact(text).counts == {}
    assert not contains_identifier(text)


@pytest.mark.parametrize("value", [None, ""])
def test_none_and_empty(value):
    assert redact(value).text == "" and redact(value).counts == {}
    assert find_identifiers(value) == [] and not contains_identifier(value)


def test_identifier_offsets_point_into_the_text():
    text = "x bob@example.com y"
    assert find_identifiers(text) == [Identifier("email", 2, 17, "bob@example.com")]


def test_redact_value_recurses_without_mutating():
    history = [{"role": "user", "content": "I am at 10.0.0.1"}, {"role": "assistant", "content": "ok"}]
    docs = [{"id": 7, "text": "Call +1 (212) 555-0147", "tags": ["mail x@y.org"], "score": 0.5}]
    assert redact_value(history) == [{"role": "user", "content": "I am at [IP]"},
                                     {"role": "assistant", "content": "ok"}]
    assert redact_value(docs) == [{"id": 7, "text": "Call [PHONE]", "tags": ["mail [EMAIL]"], "score": 0.5}]
    assert history[0]["content"] == "I am at 10.0.0.1" and docs[0]["tags"] == ["mail x@y.org"]
    assert redact_value(None) is None and redact_value(3) == 3
    assert redact_with_counts(docs)[1] == {"phone": 1, "email": 1}


def test_long_adversarial_input_is_fast():
    import time
    text = "-'" * 5000 + "a dot " * 2000 + "@a.b-c " * 2000 + "1-" * 5000
    start = time.perf_counter()
    find_identifiers(text)
    assert time.perf_counter() - start < 2.0


def test_redaction_is_idempotent():
    # The dataset checks scan redacted text again: placeholders must not create new identifiers.
    text = "Hi @bob, Dear Dr. Smith,\nmail a@b.com@c.org, call +44 20 7946 0958 or 10.0.0.1:80\nRegards,\nAnn Lee"
    once = redact(text)
    assert once.counts and find_identifiers(once.text) == [] and redact(once.text).text == once.text
