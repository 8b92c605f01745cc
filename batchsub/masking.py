"""Secrets kept out of every output: a URL's password is shown as ``***``, wherever it is shown.

The one place that knows how a password sits in a URL or a libpq DSN (``user:PASSWORD@host``,
``?password=...``, ``password=... host=...``). ``config show``, log events, error messages,
reports and the ledger show URLs through ``mask_url``; text written by a library that may echo
a URL (asyncpg, aio-pika) goes through ``scrub`` with the passwords ``url_passwords`` finds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, unquote_plus

__all__ = ["MASK", "mask_url", "scrub", "url_passwords"]

MASK = "***"
# ``password=`` as a URL query parameter or a libpq keyword: up to the next & or blank.
_PASSWORD_PARAM = re.compile(r"(?i)(password=)[^&\s]*")
# scheme://user:password@host...: the user part runs to the last @ before the path. A regex,
# not urlsplit, so that a URL urlsplit refuses (a stray bracket, a bad port) is masked too.
_USER_PART = re.compile(r"(?i)^([a-z][a-z0-9+.-]*://)([^/?#]*)@")


def mask_url(url: str) -> str:
    """``url`` with every password in it as ``***``; a string without one is returned as is."""
    masked = _PASSWORD_PARAM.sub(r"\g<1>" + MASK, url)
    found = _USER_PART.match(masked)
    if found is None or ":" not in found.group(2):
        return masked
    user = found.group(2).partition(":")[0]
    return f"{found.group(1)}{user}:{MASK}@{masked[found.end() :]}"


def url_passwords(url: str) -> list[str]:
    """Every password written in ``url``, as written and percent-decoded, longest first."""
    found = [m.group(0).partition("=")[2] for m in _PASSWORD_PARAM.finditer(url)]
    user_part = _USER_PART.match(url)
    if user_part is not None:
        found.append(user_part.group(2).partition(":")[2])
    found += [unquote(password) for password in found] + [unquote_plus(p) for p in found]
    return sorted({password for password in found if password}, key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each of ``secrets`` replaced by ``***`` (for messages a library wrote)."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, MASK)
    return text
