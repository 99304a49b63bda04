"""Redaction of credentials: tracking URIs, secret-looking parameters and any text that may carry them.

One module, used everywhere bench prints, logs, stores or uploads something (docs/reliability.md,
"Input, paths and credentials"):

- :func:`redact_uri` hides the user-info part of a URI (``scheme://USER:PASSWORD@host``) and the
  values of secret-looking query keys (``?token=...``). The user info is cut at the *last* ``@``
  of the authority-and-path, because passwords typed into a URI often hold raw ``@`` or ``/``
  (which a strict parser would misread as the host or the path); the query is then parsed with
  :mod:`urllib.parse`. Over-redaction (an ``@`` inside a path) is preferred to a leak.
- :data:`SECRET_KEY` is the documented pattern of secret-looking keys; :func:`redact_secrets`
  replaces their values, at any depth of a mapping or list, by ``***``.
- Every secret found on the way is remembered (:func:`remember`), and :func:`redact_text` removes
  the remembered ones from free text (error messages, log lines, text artifacts).
"""
from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"

#: A key (parameter, query key, YAML key) whose value is treated as a secret: it contains one of
#: these words, case-insensitively (``api_key``, ``apiKey``, ``auth_token``, ``db_password``,
#: ``AWS_SECRET_ACCESS_KEY``, ``X-Amz-Signature``...), or is exactly ``sig``/``key``/``code``
#: (common names of signed-URL query parameters).
SECRET_KEY = re.compile(
    r"password|passwd|passphrase|pwd|secret|token|credential|auth|signature|cookie|session_?id"
    r"|api[-_.]?key|private[-_.]?key|access[-_.]?key|^(sig|key|code)$", re.I)

# secrets shorter than this, and numbers, are not searched for in free text (replacing 'pw' or
# '100' everywhere would mangle messages and params); they are still removed from URIs and from
# the values of secret-looking keys
_MIN_TEXT_SECRET = 6
_known: set[str] = set()
_lock = threading.Lock()


def is_secret_key(key: Any) -> bool:
    """True when ``key`` matches :data:`SECRET_KEY`."""
    return isinstance(key, str) and SECRET_KEY.search(key) is not None


def remember(secret: Any) -> None:
    """Remember a secret value so that :func:`redact_text` removes it from any text."""
    if not isinstance(secret, str) or len(secret) < _MIN_TEXT_SECRET:
        return
    with _lock:
        _known.update({secret, quote(secret, safe=""), quote_plus(secret)})


def _split_userinfo(uri: str) -> tuple[str, str, str] | None:
    """``(scheme://, userinfo, rest)`` when the URI has user info, else None."""
    scheme, sep, rest = uri.partition("://")
    if not sep or rest.startswith("/"):  # no authority (sqlite:////abs/path, file:///...)
        return None
    at = rest.rfind("@")
    if at < 0:
        return None
    return scheme + sep, rest[:at], rest[at + 1:]


def redact_uri(uri: str) -> str:
    """``uri`` with its user info and the values of secret-looking query keys replaced by ``***``.
    Remembers what it removed (see :func:`redact_text`)."""
    if not isinstance(uri, str):
        return uri
    out = uri
    split = _split_userinfo(uri)
    if split is not None:
        prefix, userinfo, rest = split
        user, _, password = userinfo.partition(":")
        remember(userinfo)
        remember(password)
        remember(unquote(password))
        out = f"{prefix}{MASK}@{rest}"
    try:
        parts = urlsplit(out)
    except ValueError:  # e.g. an unbalanced '[' in the host: show nothing after the scheme
        return out.partition("://")[0] + "://" + MASK if "://" in out else MASK
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(is_secret_key(k) for k, _ in pairs):
            for k, v in pairs:
                if is_secret_key(k):
                    remember(v)
            query = urlencode([(k, MASK if is_secret_key(k) else v) for k, v in pairs], safe="*")
            out = urlunsplit(parts._replace(query=query))
    return out


def _redact_token(token: str) -> str:
    core = token.strip("'\"()[]{}<>,;")
    if "://" not in core:
        return token
    return token.replace(core, redact_uri(core))


def redact_text(text: str) -> str:
    """``text`` with the credentials of every URI in it (a whitespace-separated word holding
    ``://``) and every remembered secret replaced by ``***``."""
    if not isinstance(text, str):
        return text
    if "://" in text:
        text = "".join(_redact_token(t) for t in re.split(r"(\s+)", text))
    if not _known:
        return text
    with _lock:
        known = sorted(_known, key=len, reverse=True)  # longest first: 'user:pw' before 'pw'
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_secrets(obj: Any) -> Any:
    """A copy of ``obj`` (dicts and lists, any depth) whose values under secret-looking keys are
    ``***`` and whose strings hold no URI credentials or remembered secret."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if is_secret_key(k):
                if not isinstance(v, (dict, list)):
                    remember(v)
                out[k] = MASK
            else:
                out[k] = redact_secrets(v)
        return out
    if isinstance(obj, list):
        return [redact_secrets(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(redact_secrets(v) for v in obj)
    if isinstance(obj, str):
        return redact_text(obj)
    return obj
