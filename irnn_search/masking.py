"""Hiding secrets in URLs and messages: the one implementation every layer uses (stdlib only)."""

from __future__ import annotations

import re

# The password: one with spaces runs to the last "@" before the next "/" on its line; any other,
# to the last "@" of its word. Text after a port ("host:5432/db ... ops@lab.org") is left alone.
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*):(?:[^\n/]*\s[^\n/]*|\S*)@")
_QUERY_PASSWORD = re.compile(r"((?:password|passwd|pwd|token|secret)=)[^&\s]*", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """Hide secrets in a URI, or in a message containing URIs.

    ``postgresql://user:pw@host/db`` becomes ``postgresql://user:***@host/db`` (the password runs
    to the last ``@``, so an unescaped ``@`` in it is masked too; one with spaces, to the last ``@``
    before the next ``/`` on its line), and query parameters such as
    ``password=…`` or ``token=…`` become ``password=***``. Text without a secret is unchanged.
    """
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", text))
