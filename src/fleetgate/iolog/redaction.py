"""Redaction of request/response bodies before the I/O log stores them: compiled once, pure, linear-time.

Rules work on the body *text* (JSON, SSE or anything else), not on parsed JSON: the cost stays one bounded pass
per rule, and a JSON body stays valid JSON since no rule matches a quote or a backslash; a JSON escape such as
`\\n` right before a secret does not hide it. Speed (this runs on the serving event loop, in the background
writer): each built-in rule is skipped unless a cheap substring check finds its trigger (`fg-`, `@`, `+`...), and
its regex starts with a literal the engine scans for fast, or cannot start inside a run of the characters it
matches, so long runs (base64, hex) are scanned once, never once per position.

Payment cards (13-19 digits, optionally grouped by spaces or hyphens) are redacted only when the digits pass the
Luhn check and start like a card of a known issuer with that length, so ids, timestamps and other digit runs stay;
national ids are US social security numbers (`123-45-6789` form, never-issued ranges excluded) and UK national
insurance numbers (`AB 12 34 56 C`, with the prefixes HMRC never issues excluded).

Known limits: a secret the model streams across several SSE events (one token per event) is not reassembled and
so not recognised; digits-only phone numbers without separators are kept, since they cannot be told apart from
timestamps and ids; a 9-digit SSN without hyphens is kept for the same reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from fleetgate.config import IOLogConfig
from fleetgate.domain.errors import ConfigError

# How far past the stored size a body is still scanned, so a secret straddling the cut is recognised whole.
SCAN_SLACK = 4096

# Characters stripped from the end of a body cut mid-scan: a phone number split by the cut is digits and these.
_PHONE_TAIL = "0123456789 ().+-"


def _lead(prefix: str, word: str) -> str:
    """`prefix` (a fixed-width regex) not preceded by a character of `word` or a backslash, yet allowed right after
    a JSON escape (`\\n`...); the look-behinds follow the prefix so the regex engine can scan for it fast.
    """
    return rf"{prefix}(?:(?<=\\[nrtbf]{prefix})|(?<![\\{word}]{prefix}))"


_KEY_CHARS = "A-Za-z0-9_-"
# A key needs a digit or an upper-case letter somewhere, so CSS names and prose (`fg-background-color`) survive.
_KEYISH = rf"(?=[{_KEY_CHARS}]*[0-9A-Z])"

FLEETGATE_KEY = re.compile(_lead("fg-", _KEY_CHARS) + rf"{_KEYISH}[{_KEY_CHARS}]{{16,}}")
SECRET_KEY = re.compile(_lead("[sr]k[-_]", _KEY_CHARS) + rf"{_KEYISH}[{_KEY_CHARS}]{{20,}}")
# Well-known vendor formats: AWS access key ids, GitHub, GitLab, Slack and Google API keys.
VENDOR_KEY = re.compile(
    rf"(?:(?<=\\[nrtbf])|(?<![\\{_KEY_CHARS}]))(?:AKIA[0-9A-Z]{{16}}|gh[pousr]_[A-Za-z0-9]{{36,}}|glpat-[A-Za-z0-9_-]{{20,}}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35})"
)
_VENDOR_PREFIXES = ("AKIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "glpat-", "xox", "AIza")
_CRED_CHAR = r"[A-Za-z0-9._~+/-]"
# The scheme is kept so the log still shows how the caller authenticated; the token needs a letter and a digit or
# an upper-case letter after its first character, so "the bearer instruments" and "basic 12345678" stay.
BEARER = re.compile(
    rf"(?i:\b(bearer|basic)(\s+))(?={_CRED_CHAR}*[A-Za-z])(?={_CRED_CHAR}*\d|{_CRED_CHAR}+[A-Z]){_CRED_CHAR}{{8,}}=*"
)
_SECRET_NAMES = ("api{}key", "access{}token", "auth{}token", "refresh{}token", "client{}secret", "secret{}key")
# `api_key: "..."`, `"access_token":"..."`, `x-api-key=...`: whatever follows such a name is a secret.
NAMED_SECRET = re.compile(
    r"(?i:(?<![A-Za-z0-9])((?:x-)?api[_-]?key|(?:access|auth|refresh)[_-]?token|client[_-]?secret|secret[_-]?key)"
    r"(['\"]?\s*[:=]\s*['\"]?))[^\s\"',;&]{8,}"
)
# +CC then 7 to 14 more digits, each optionally after up to two separators: "+44 (0)20 7946 0958", "+4915112345678".
PHONE_INTL = re.compile(_lead(r"\+", "A-Za-z0-9_+") + r"\d(?:[ .()-]{0,2}\d){7,14}(?!\d)")
# North American: "(555) 123-4567", "555-123-4567", "555.123.4567", "+1 555 123 4567"; separators are required.
PHONE_US = re.compile(
    r"(?:(?<=\\[nrtbf])|(?<![\\A-Za-z0-9_.+-]))(?:\+?1[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}"
    r"(?![A-Za-z0-9_]|[.-]\d)"
)
# Every US number ends in three digits, a separator and four digits; with digits folded to 0 that is a literal.
_TO_ZERO = str.maketrans("123456789", "000000000")
_US_SHAPES = ("000-0000", "000 0000", "000.0000")
# An address is found from its `@` (a literal the engine scans for fast); the local part is walked back in Python.
_EMAIL_DOMAIN = re.compile(r"@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}(?![A-Za-z0-9-])")
_LOCAL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-")
_MAX_LOCAL = 64

# A whole run of 13 or more digits, each after at most one space or hyphen, not part of a decimal or a word. It
# starts only where no digit group precedes it and is taken possessively, so a long run is scanned once; which
# groups of it form a card is decided in Python (`_card_in`).
CARD = re.compile(
    r"(?:(?<=\\[nrtbf])|(?<![\\A-Za-z0-9_.+-]))(?<!\d[ -])(?=\d(?:[ -]?\d){12})\d(?:[ -]?\d)*+"
    r"(?![A-Za-z0-9_]|[.,]\d)"
)
_DIGITS = re.compile(r"\d+")
# Area 000, 666 and 900-999, group 00 and serial 0000 were never issued.
SSN = re.compile(
    r"(?:(?<=\\[nrtbf])|(?<![\\A-Za-z0-9_.+-]))(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}"
    r"(?![A-Za-z0-9_]|[.-]\d)"
)
_SSN_SHAPE = "000-00-0000"
# First letter not D F I Q U V, second not D F I O Q U V, and not BG GB KN NK NT TN ZZ; suffix A-D.
NINO = re.compile(
    r"(?:(?<=\\[nrtbf])|(?<![\\A-Za-z0-9_]))(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
    r" ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![A-Za-z0-9_])"
)
# Issuer prefixes (first 1-4 digits) and the lengths their cards have: Visa, Mastercard, Amex, Discover, JCB,
# Diners, UnionPay, Maestro.
_CARD_ISSUERS: tuple[tuple[range, frozenset[int]], ...] = (
    (range(4, 5), frozenset({13, 16, 19})),
    (range(51, 56), frozenset({16})),
    (range(2221, 2721), frozenset({16})),
    (range(34, 35), frozenset({15})),
    (range(37, 38), frozenset({15})),
    (range(6011, 6012), frozenset({16, 17, 18, 19})),
    (range(644, 660), frozenset({16, 17, 18, 19})),
    (range(3528, 3590), frozenset({16, 17, 18, 19})),
    (range(300, 306), frozenset({14, 15, 16, 17, 18, 19})),
    (range(36, 37), frozenset({14, 15, 16, 17, 18, 19})),
    (range(38, 40), frozenset({14, 15, 16, 17, 18, 19})),
    (range(62, 63), frozenset({16, 17, 18, 19})),
    (range(50, 51), frozenset({13, 14, 15, 16, 17, 18, 19})),
    (range(56, 59), frozenset({13, 14, 15, 16, 17, 18, 19})),
    (range(67, 68), frozenset({13, 14, 15, 16, 17, 18, 19})),
)

EMAIL_MARK = "[REDACTED:email]"
CARD_MARK = "[REDACTED:card]"
NATIONAL_ID_MARK = "[REDACTED:national_id]"
PHONE_MARK = "[REDACTED:phone]"
KEY_MARK = "[REDACTED:api_key]"
PATTERN_MARK = "[REDACTED]"


def redact_emails(text: str) -> str:
    """Replace every e-mail address with the e-mail mark."""
    out: list[str] = []
    pos = 0
    for match in _EMAIL_DOMAIN.finditer(text):
        at = match.start()
        start = at
        while start > pos and text[start - 1] in _LOCAL_CHARS and at - start <= _MAX_LOCAL:
            start -= 1
        if start > 0 and text[start - 1] == "\\" and text[start] in "nrtbf":
            start += 1  # `\nbob@...` in JSON: the `n` belongs to the escape, not to the address
        if start == at or at - start > _MAX_LOCAL:
            continue
        out += (text[pos:start], EMAIL_MARK)
        pos = match.end()
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn check (the last digit checks the others)."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = ord(char) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# Every issuer prefix spelled out ("4", "51", ..., "2720"): a card's first 1-4 digits are looked up, not parsed.
_ISSUER_LENGTHS = {str(prefix): lengths for prefixes, lengths in _CARD_ISSUERS for prefix in prefixes}
_ISSUER_FIRST = frozenset(prefix[0] for prefix in _ISSUER_LENGTHS)


def is_card_number(digits: str) -> bool:
    """Whether digits look like a real payment card: a known issuer's prefix and length, and a valid Luhn digit."""
    for width in (1, 2, 3, 4):
        lengths = _ISSUER_LENGTHS.get(digits[:width])
        if lengths is not None:
            return len(digits) in lengths and luhn_valid(digits)
    return False


def _card_in(text: str) -> str:
    """`text` (digit groups and single separators) with every card made of whole groups marked: the longest from
    each group on, so a grouped card next to other numbers ("4111 1111 1111 1111 123", a CVV) is still found."""
    groups = [m.group() for m in _DIGITS.finditer(text)]
    seps = _DIGITS.split(text)[1:-1]
    out: list[str] = []
    i = 0
    while i < len(groups):
        found, digits = 0, ""
        for j in range(
            i, len(groups) if groups[i][0] in _ISSUER_FIRST else i
        ):  # at most 19 digits: a bounded window, however long the run
            digits += groups[j]
            if len(digits) > 19:
                break
            if len(digits) >= 13 and is_card_number(digits):
                found = j + 1
        if found:
            out.append(CARD_MARK)
            i = found
        else:
            out.append(groups[i])
            i += 1
        if i < len(groups):
            out.append(seps[i - 1])
    return "".join(out)


def _card(match: re.Match[str]) -> str:
    text = match.group()
    digits = text.replace(" ", "").replace("-", "")
    if len(digits) <= 19 and is_card_number(digits):
        return CARD_MARK
    return _card_in(text) if len(digits) != len(text) else text


def redact_cards(text: str) -> str:
    """Replace every payment card number (issuer, length and Luhn checked) with the card mark."""
    return CARD.sub(_card, text)


def _digit_run(min_length: int) -> Callable[[str], bool]:
    needle = "0" * min_length

    def check(text: str) -> bool:
        return needle in text.translate(_TO_ZERO)

    return check


def _ssn_shaped(text: str) -> bool:
    return "-" in text and _SSN_SHAPE in text.translate(_TO_ZERO)


def _nino_shaped(text: str) -> bool:
    folded = text.translate(_TO_ZERO)
    return "000000" in folded or "00 00 00" in folded


@dataclass(frozen=True, slots=True)
class Rule:
    """One redaction rule: a replacement, and a cheap check that skips it when its trigger is absent."""

    name: str
    replace: Callable[[str], str]
    check: Callable[[str], bool] | None = None

    def apply(self, text: str) -> str:
        """The text with this rule's matches replaced."""
        if self.check is not None and not self.check(text):
            return text
        return self.replace(text)


def _regex(pattern: re.Pattern[str], mark: str, keep_groups: int = 0) -> Callable[[str], str]:
    # `keep_groups` re-emits the leading groups (a scheme, a field name) before the mark.
    template = "".join(rf"\{i}" for i in range(1, keep_groups + 1)) + mark
    return partial(pattern.sub, template)


def _contains(*needles: str) -> Callable[[str], bool]:
    return lambda text: any(n in text for n in needles)


def _contains_folded(*needles: str) -> Callable[[str], bool]:
    def check(text: str) -> bool:
        folded = text.lower()
        return any(n in folded for n in needles)

    return check


def _us_shaped(text: str) -> bool:
    folded = text.translate(_TO_ZERO)
    return any(shape in folded for shape in _US_SHAPES)


def rules_from_config(config: IOLogConfig) -> list[Rule]:
    """The built-in rules the config enables, then its own patterns (ConfigError names a bad one)."""
    rules: list[Rule] = []
    if config.redact_api_keys:
        names = tuple(n.format(sep) for n in _SECRET_NAMES for sep in ("", "_", "-"))
        # Bearer and named secrets first: they keep their scheme/name, which the bare-key rules would not.
        rules += [
            Rule("bearer", _regex(BEARER, KEY_MARK, 2), _contains_folded("bearer", "basic")),
            Rule("named_secret", _regex(NAMED_SECRET, KEY_MARK, 2), _contains_folded(*names)),
            Rule("fleetgate_key", _regex(FLEETGATE_KEY, KEY_MARK), _contains("fg-")),
            Rule("secret_key", _regex(SECRET_KEY, KEY_MARK), _contains("sk-", "sk_", "rk-", "rk_")),
            Rule("vendor_key", _regex(VENDOR_KEY, KEY_MARK), _contains(*_VENDOR_PREFIXES)),
        ]
    if config.redact_emails:
        rules.append(Rule("email", redact_emails, _contains("@")))
    # Cards and national ids before phones: a phone rule must not take part of a card's digits first.
    if config.redact_cards:
        rules.append(Rule("card", redact_cards, _digit_run(4)))
    if config.redact_national_ids:
        rules += [
            Rule("ssn", _regex(SSN, NATIONAL_ID_MARK), _ssn_shaped),
            Rule("nino", _regex(NINO, NATIONAL_ID_MARK), _nino_shaped),
        ]
    if config.redact_phones:
        rules += [
            Rule("phone_intl", _regex(PHONE_INTL, PHONE_MARK), _contains("+")),
            Rule("phone_us", _regex(PHONE_US, PHONE_MARK), _us_shaped),
        ]
    for i, source in enumerate(config.patterns):
        try:
            compiled = re.compile(source)
        except re.error as exc:
            raise ConfigError(f"iolog.patterns[{i}]: not a valid regular expression ({exc}): {source!r}") from None
        if compiled.search(""):
            raise ConfigError(f"iolog.patterns[{i}]: matches the empty string, so it cannot mark a secret")
        rules.append(Rule(f"pattern_{i}", _regex(compiled, PATTERN_MARK)))
    return rules


def _drop_cut_tail(text: str) -> str:
    """Remove what a cut may have split: the last word, then a phone-number-looking run before it."""
    if text and not text[-1].isspace():
        words = text.rsplit(maxsplit=1)
        text = text[: len(text) - len(words[-1])] if words else ""
    return text.rstrip(_PHONE_TAIL)


class Redactor:
    """Applies the configured redaction rules to text and to raw bodies (with truncation)."""

    def __init__(self, config: IOLogConfig | None = None, *, rules: Sequence[Rule] | None = None) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules if rules is not None else rules_from_config(config or IOLogConfig()))

    def redact(self, text: str) -> str:
        """The text with every rule's matches replaced by its mark."""
        for rule in self.rules:
            text = rule.apply(text)
        return text

    def redact_body(self, body: bytes, limit: int, *, cut: bool = False) -> tuple[str, bool]:
        """Redact a body and truncate it to `limit` UTF-8 bytes; returns the text and whether it was truncated.

        Only the first `limit + SCAN_SLACK` bytes are looked at (callers may pass just those, with `cut=True`
        when more existed): the rules see a secret that straddles `limit` whole, and the cost stays bounded.
        """
        window = body[: limit + SCAN_SLACK]
        cut = cut or len(body) > len(window)
        text = self.redact(window.decode("utf-8", "replace"))
        encoded = text.encode()
        if len(encoded) > limit:
            # Cutting already-redacted text cannot expose a secret: at worst it splits a mark.
            return encoded[:limit].decode("utf-8", "ignore"), True
        if cut:
            # Redaction shrank the window below `limit`, so its raw end (maybe half a secret) would be kept.
            return _drop_cut_tail(text), True
        return text, False
