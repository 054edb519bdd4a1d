"""Find personal data and secrets in text and replace each with a typed placeholder.

Numbers are only called card numbers when they pass the Luhn check and IBANs only when they
pass the ISO 13616 mod-97 check, so order numbers and the like are left alone.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

PLACEHOLDERS = {"SECRET": "<SECRET>", "EMAIL": "<EMAIL>", "IBAN": "<IBAN>", "CARD": "<CARD>",
                "IP": "<IP>", "PHONE": "<PHONE>"}

_SECRET = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"
    r"|\bAKIA[0-9A-Z]{16}\b"                      # AWS access key id
    r"|\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}"         # OpenAI-style secret key
    r"|\bgh[pousr]_[A-Za-z0-9]{36}\b"             # GitHub token
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"            # Slack token
    r"|\bAIza[0-9A-Za-z_-]{35}"                   # Google API key
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWT
    r"|(?i:\b(?:api[_-]?key|secret|token|password|passwd)\b[\"']?\s*[:=]\s*[\"']?)"
    r"(?P<value>[^\s\"',;<]{8,})")  # keep the key's name, replace its value
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_PHONE = re.compile(r"(?<![\w+])(?<!\d[ -])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])"
                    r"\d{3,4}[ .-]?\d{3,4}(?![\w])(?![ -]\d)")


@dataclass(frozen=True)
class Found:
    kind: str       # a key of PLACEHOLDERS
    text: str       # what was replaced


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    s = text.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _card_ok(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def _ip_ok(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# Order matters: a secret may hold an e-mail-like part, an IBAN holds digit runs, a card number
# looks like a phone number.
_RULES = [("SECRET", _SECRET, None), ("EMAIL", _EMAIL, None), ("IBAN", _IBAN, iban_ok),
          ("CARD", _CARD, _card_ok), ("IP", _IPV6, _ip_ok), ("IP", _IPV4, _ip_ok),
          ("PHONE", _PHONE, lambda t: sum(c.isdigit() for c in t) >= 9)]


def scrub(text: str) -> tuple[str, list[Found]]:
    """``text`` with every PII item replaced by its placeholder, and the items replaced."""
    found: list[Found] = []
    for kind, pattern, check in _RULES:
        def replace(m, kind=kind, check=check):
            if check is not None and not check(m.group(0)):
                return m.group(0)
            if m.groupdict().get("value"):
                found.append(Found(kind, m.group("value")))
                return m.group(0)[:m.start("value") - m.start()] + PLACEHOLDERS[kind]
            found.append(Found(kind, m.group(0)))
            return PLACEHOLDERS[kind]
        text = pattern.sub(replace, text)
    return text, found
