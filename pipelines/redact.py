"""Passwords masked wherever a URI or a connection string is shown."""

from __future__ import annotations

import re

# A URL's password (scheme://user:password@host) and a connection string's password=...,
# wherever they appear in a text: an error message quotes the URL it failed on.
_URL_PASSWORD = re.compile(r"(?P<user>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*):[^@\s]*@")
_KEY_PASSWORD = re.compile(r"(?P<key>\bpassword\s*=\s*)(?:'[^']*'|\"[^\"]*\"|[^\s&;]+)", re.I)


def redact(text: str) -> str:
    """`text` with every password in it masked: the one way a URI is shown (console, logs,
    errors, /model). In `pipelines`, which every package may import (serving included)."""
    return _KEY_PASSWORD.sub(r"\g<key>***", _URL_PASSWORD.sub(r"\g<user>:***@", text))
