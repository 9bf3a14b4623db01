"""Credentials never leave the process: URLs lose their user/password and secret query parameters.

A user may write ``--base-url https://user:password@host/v1`` or an Azure URL with ``?api-key=``;
the manifest (:func:`redact_urls` over the config) and every error line the CLI prints
(:func:`redact_text`) show ``https://***@host/v1?api-key=***`` instead. Kept free of heavy imports:
the CLI applies it to every error line.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: Query parameters of a URL whose values are secrets (Azure's ``api-key``, ``sig``, ``token`` ...).
_SECRET_QUERY = re.compile(r"(key|token|secret|sig|signature|password|auth)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` without embedded credentials: ``https://user:pw@h/v1?api-key=x`` -> ``https://***@h/v1?api-key=***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = urlencode([(k, "***" if _SECRET_QUERY.search(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")
_SECRET_PARAM = re.compile(r"([?&][\w-]*(?:key|token|secret|sig|signature|password|auth)[\w-]*=)[^&#\s]+", re.IGNORECASE)


def redact_text(text: str) -> str:
    """``text`` (an error line, a log line) with every URL's credentials masked, as :func:`redact_url` does."""
    return _SECRET_PARAM.sub(r"\1***", _USERINFO.sub(r"\1***@", text))


def redact_urls(value: Any) -> Any:
    """``value`` (config-shaped: dicts, lists, strings) with every URL passed through :func:`redact_url`."""
    if isinstance(value, dict):
        return {key: redact_urls(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_urls(item) for item in value]
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value
