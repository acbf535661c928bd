"""Redaction rules: what must go (emails, phones, keys, cards, national ids, custom patterns) and what must stay
(counts, ids, prose, digit runs that are not cards)."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.config import IOLogConfig
from fleetgate.domain.errors import ConfigError
from fleetgate.iolog.redaction import (
    CARD_MARK,
    EMAIL_MARK,
    KEY_MARK,
    NATIONAL_ID_MARK,
    PATTERN_MARK,
    PHONE_MARK,
    SCAN_SLACK,
    Redactor,
    is_card_number,
    luhn_valid,
)
from fleetgate.tenancy.keys import generate_key

R = Redactor(IOLogConfig())


@pytest.mark.parametrize(
    "email",
    ["bob@example.com", "bob.smith+tag@mail.example.co.uk", "a_b-c%d@sub-domain.example.io", "X.Y@EXAMPLE.ORG"],
)
def test_emails_are_redacted(email: str) -> None:
    assert R.redact(f"write to {email}, thanks") == f"write to {EMAIL_MARK}, thanks"


@pytest.mark.parametrize(
    "phone",
    [
        "+44 20 7946 0958",
        "+44 (0)20 7946 0958",
        "+33 1 42 68 53 00",
        "+49 151 1234 5678",
        "+4915112345678",
        "+81-3-1234-5678",
        "+1 (555) 123-4567",
        "+1 555 123 4567",
        "(555) 123-4567",
        "555-123-4567",
        "555.123.4567",
        "555 123 4567",
        "1-800-555-1234",
    ],
)
def test_international_and_us_phones_are_redacted(phone: str) -> None:
    assert R.redact(f"call {phone} today") == f"call {PHONE_MARK} today"


@pytest.mark.parametrize(
    "secret",
    [
        generate_key(),
        "fg-demo-0123456789abcdef",
        "sk-proj-abcDEF1234567890abcdefXYZ0123",
        "sk-ant-api03-AbCdEf0123456789aBcDeF0123456789",
        "sk_live_51Habcdefghijklmnop0123456789",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_" + "a1B2" * 9,
    ],
)
def test_api_keys_are_redacted(secret: str) -> None:
    out = R.redact(f"my key is {secret}.")
    assert out == f"my key is {KEY_MARK}." and secret not in out


@pytest.mark.parametrize(
    "header",
    [
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl",
        "authorization: bearer abc123def456",
        "Authorization: Basic dXNlcjpwYXNzd29yZA==",
    ],
)
def test_bearer_and_basic_tokens_keep_the_scheme(header: str) -> None:
    name, _, rest = header.partition(": ")
    scheme = rest.split()[0]
    assert R.redact(header) == f"{name}: {scheme} {KEY_MARK}"


@pytest.mark.parametrize(
    "text",
    [
        "OPENAI_API_KEY=abc123xyz789",
        '{"api_key": "zzzzzzzz9"}',
        "x-api-key: Q2hhbmdlTWUxMjM",
        "client_secret='hunter2hunter2'",
    ],
)
def test_named_secrets_are_redacted(text: str) -> None:
    out = R.redact(text)
    assert KEY_MARK in out and not re.search(r"abc123|zzzz|Q2hh|hunter2", out)


def test_custom_patterns_are_redacted_and_bad_ones_name_the_field() -> None:
    # The built-in national id rule would take the SSN first: this test is about the operator's own patterns.
    redactor = Redactor(
        IOLogConfig(redact_national_ids=False, patterns=[r"\b\d{3}-\d{2}-\d{4}\b", r"(?i)project\s+falcon"])
    )
    assert redactor.redact("SSN 123-45-6789 for Project  Falcon") == f"SSN {PATTERN_MARK} for {PATTERN_MARK}"
    with pytest.raises(ConfigError, match=r"iolog\.patterns\[1\]"):
        Redactor(IOLogConfig(patterns=["ok", "(unclosed"]))
    with pytest.raises(ConfigError, match=r"iolog\.patterns\[0\].*empty"):
        Redactor(IOLogConfig(patterns=["x*"]))


@pytest.mark.parametrize(
    "text",
    [
        "prompt_tokens 1234 completion_tokens 56, total 1290",
        '{"created": 1718049123, "usage": {"prompt_tokens": 1418, "cached_tokens": 1024}}',
        "2024-06-10 12:30:45 and 2024-06-10T12:30:45+00:00",
        "ip 192.168.1.100, version 3.11.4, pi 3.14159, 1,234,567 and 12345678901234",
        "id 0190a8b2-7c3d-7e4f-8123-456789abcdef, ref 4111 1111 1111 1112",
        "The bearer instruments, basic understanding, the token budget, a secret garden",
        "--fg-background-color: red; var(--fg-color-primary); sklearn, sk-learn, task-list",
        "@property def x(self): npm i @types/node; user@localhost; a@b",
        "math: 3 + 4 = 7, x+1, +12 points",
    ],
)
def test_ordinary_text_is_kept(text: str) -> None:
    assert R.redact(text) == text


def test_secrets_right_after_a_json_escape_are_found_and_json_stays_valid() -> None:
    content = "key:\nfg-demo-0123456789abcdef\nbob@example.com\n+44 20 7946 0958\n555-123-4567\tsk-" + "aB3" * 8
    content += "\rAKIAIOSFODNN7EXAMPLE"
    body = json.dumps({"messages": [{"role": "user", "content": content}]})
    out = R.redact(body)
    parsed = json.loads(out)["messages"][0]["content"]
    assert parsed == f"key:\n{KEY_MARK}\n{EMAIL_MARK}\n{PHONE_MARK}\n{PHONE_MARK}\t{KEY_MARK}\r{KEY_MARK}"


def test_rules_can_be_switched_off() -> None:
    text = "bob@example.com +44 20 7946 0958 fg-demo-0123456789abcdef"
    assert Redactor(IOLogConfig(redact_emails=False, redact_phones=False, redact_api_keys=False)).redact(text) == text
    only_keys = Redactor(IOLogConfig(redact_emails=False, redact_phones=False))
    assert only_keys.redact(text) == f"bob@example.com +44 20 7946 0958 {KEY_MARK}"


def test_body_truncation_is_utf8_safe_and_flagged() -> None:
    text, truncated = R.redact_body("é".encode() * 5000, 1025)
    assert truncated and len(text.encode()) <= 1025 and set(text) == {"é"}
    text, truncated = R.redact_body(b'{"short": true}', 1024)
    assert (text, truncated) == ('{"short": true}', False)


def test_a_secret_straddling_the_limit_is_not_kept_in_part() -> None:
    key = "fg-demo-0123456789abcdef"
    for offset in range(1, len(key)):
        body = b"x" * (2048 - offset) + f" {key} tail".encode()
        text, truncated = R.redact_body(body, 2048)
        assert truncated and "0123" not in text and "fg-demo" not in text


def test_a_secret_at_the_scan_window_edge_is_dropped_not_kept_in_part() -> None:
    # Long addresses shrink to short marks, so the redacted window ends below the limit and its raw end would show.
    address = b"a.rather.long.local.part.for.testing@" + b"mail.a-rather-long-domain-name-for-testing.example.com "
    filler = address * ((1024 + SCAN_SLACK) // len(address) + 1)
    assert len(R.redact(filler[: 1024 + SCAN_SLACK].decode())) < 1024
    key = b"fg-demo-0123456789abcdef"
    for cut in range(3, len(key)):
        body = filler[: 1024 + SCAN_SLACK - cut] + b" " + key + b" more"
        text, truncated = R.redact_body(body, 1024)
        assert truncated and "fg-d" not in text and "0123" not in text
    phone = b"+44 20 7946 0958"
    for cut in range(2, len(phone)):
        body = filler[: 1024 + SCAN_SLACK - cut] + b" " + phone + b" more"
        text, _ = R.redact_body(body, 1024)
        assert not re.search(r"\+\d", text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab1 -.@+()\\n_"), max_size=300))
def test_redaction_is_idempotent_and_never_raises(text: str) -> None:
    once = R.redact(text)
    assert R.redact(once) == once


# --- payment cards and national ids --------------------------------------------------------------------------

# Issuers' published test numbers: all pass the Luhn check.
CARDS = [
    "4111111111111111",  # Visa
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "4222222222222",  # Visa, 13 digits
    "5555555555554444",  # Mastercard
    "2223003122003222",  # Mastercard 2-series
    "378282246310005",  # American Express
    "3782 822463 10005",
    "6011111111111117",  # Discover
    "3530111333300000",  # JCB
    "30569309025904",  # Diners Club
    "6200000000000005",  # UnionPay
]


@pytest.mark.parametrize("card", CARDS)
def test_card_numbers_are_redacted(card: str) -> None:
    assert R.redact(f"my card is {card}, exp 12/29") == f"my card is {CARD_MARK}, exp 12/29"


def test_a_grouped_card_next_to_other_numbers_is_still_found() -> None:
    assert R.redact("card 4111 1111 1111 1111 123 (cvv)") == f"card {CARD_MARK} 123 (cvv)"
    assert R.redact("ref 1234 4111 1111 1111 1111") == f"ref 1234 {CARD_MARK}"
    assert R.redact("5555555555554444 and 4111 1111 1111 1111") == f"{CARD_MARK} and {CARD_MARK}"


@pytest.mark.parametrize(
    "text",
    [
        "4111111111111112",  # Luhn fails
        "1234567812345670",  # Luhn passes, no issuer starts with 1
        "ts 1718049123456 and id 9007199254740993",
        "4111111111111111111111",  # longer than any card
        "pi 3.4111111111111111 and v4111111111111111",  # part of a decimal, part of a word
        "1234-5678-9012-3456",
    ],
)
def test_digit_runs_that_are_not_cards_are_kept(text: str) -> None:
    assert R.redact(text) == text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789", min_size=13, max_size=19))
def test_random_digit_runs_are_kept_unless_they_are_card_numbers(digits: str) -> None:
    # The check digit decides: about 9 in 10 random runs fail Luhn, and those must stay.
    redacted = R.redact(f"n={digits};")
    assert (redacted == f"n={CARD_MARK};") == is_card_number(digits)
    if not luhn_valid(digits):
        assert redacted == f"n={digits};"


@pytest.mark.parametrize("ssn", ["123-45-6789", "078-05-1120", "899-99-9999"])
def test_social_security_numbers_are_redacted(ssn: str) -> None:
    assert R.redact(f"SSN {ssn}.") == f"SSN {NATIONAL_ID_MARK}."


@pytest.mark.parametrize(
    "text",
    [
        "000-12-3456",  # area 000 was never issued
        "666-12-3456",
        "912-34-5678",  # 900-999: never issued
        "123-00-4567",  # group 00
        "123-45-0000",  # serial 0000
        "1123-45-67890",  # part of a longer number
        "2024-06-10",
        "v123-45-6789a",
    ],
)
def test_invalid_ssns_and_lookalikes_are_kept(text: str) -> None:
    assert R.redact(text) == text


@pytest.mark.parametrize("nino", ["AB123456C", "AB 12 34 56 C", "JG 10 37 59 A"])
def test_uk_national_insurance_numbers_are_redacted(nino: str) -> None:
    assert R.redact(f"NI number {nino} on file") == f"NI number {NATIONAL_ID_MARK} on file"


@pytest.mark.parametrize("text", ["QQ123456C", "GB123456A", "DA123456A", "AB123456E", "XAB123456C"])
def test_invalid_national_insurance_numbers_are_kept(text: str) -> None:
    assert R.redact(text) == text


def test_cards_and_national_ids_in_json_stay_valid_json() -> None:
    content = "card:\n4111 1111 1111 1111\nssn\t123-45-6789\nNI\nAB123456C"
    out = R.redact(json.dumps({"content": content}))
    assert json.loads(out)["content"] == f"card:\n{CARD_MARK}\nssn\t{NATIONAL_ID_MARK}\nNI\n{NATIONAL_ID_MARK}"


def test_card_and_national_id_rules_can_be_switched_off() -> None:
    text = "4111 1111 1111 1111 / 123-45-6789 / AB123456C"
    assert Redactor(IOLogConfig(redact_cards=False, redact_national_ids=False)).redact(text) == text
    assert Redactor(IOLogConfig(redact_national_ids=False)).redact(text) == f"{CARD_MARK} / 123-45-6789 / AB123456C"
    only_ids = Redactor(IOLogConfig(redact_cards=False)).redact(text)
    assert only_ids == f"4111 1111 1111 1111 / {NATIONAL_ID_MARK} / {NATIONAL_ID_MARK}"


def test_a_card_straddling_the_stored_size_is_not_kept_in_part() -> None:
    card = "4111 1111 1111 1111"
    for offset in range(1, len(card)):
        body = b"x" * (2048 - offset) + f" {card} tail".encode()
        text, truncated = R.redact_body(body, 2048)
        assert truncated and "4111" not in text and "1111" not in text
