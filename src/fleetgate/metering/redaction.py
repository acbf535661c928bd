"""Redaction of request/response bodies before the I/O log stores them: compiled once, pure, linear-time.

Rules work on the body *text* (JSON, SSE or anything else), not on parsed JSON: the cost stays one bounded pass
per rule, and a JSON body stays valid JSON since no rule matches a quote or a backslash; a JSON escape such as
`\\n` right before a secret does not hide it. Speed (this runs on the serving event loop, in the background
writer): each built-in rule is skipped unless a cheap substring check finds its trigger (`fg-`, `@`, `+`...), and
its regex starts with a literal the engine scans for fast, or cannot start inside a run of the characters it
matches, so long runs (base64, hex) are scanned once, never once per position.

Known limits: a secret the model streams across several SSE events (one token per event) is not reassembled and
so not recognised; digits-only phone numbers without separators are kept, since they cannot be told apart from
timestamps and ids.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from fleetgate.config import IOLogConfig
from fleetgate.errors import ConfigError

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

EMAIL_MARK = "[REDACTED:email]"
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
