"""Roles for the web API: bearer tokens from settings, ``viewer`` < ``operator``.

Tokens come from ``TASKTREE_VIEWER_TOKENS`` and ``TASKTREE_OPERATOR_TOKENS``: comma-separated
entries, each ``name:token`` (the name is who the audit log says acted) or a bare ``token`` (named
``token-<first 6 hex of its sha256>``).  ``TASKTREE_AUTH_TOKEN``, the service-wide token, counts as
a viewer named ``auth-token``.

The rules (docs: README "Docker hosts"):

* an operator's action (``require(OPERATOR)``): no credential → 401; a valid non-operator credential
  → 403; no operator tokens configured → every action is refused (401, the message says what
  to set);
* reading (``require(VIEWER)``): a viewer or operator credential; *anonymous* reading is allowed
  only when no viewer token and no ``TASKTREE_AUTH_TOKEN`` are configured **and** the server is
  bound to a
  loopback address (the out-of-the-box single-user set-up);
* a credential that matches nothing is always 401, even where anonymous reading would be allowed.

Tokens are compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from flask import current_app, g, request

from tasktree.exporter.errors import Forbidden, Unauthorized
from tasktree.exporter.settings import Settings, SettingsError, _is_loopback

__all__ = [
    "ANONYMOUS",
    "OPERATOR",
    "VIEWER",
    "Principal",
    "TokenTable",
    "current_principal",
    "require",
]

VIEWER = "viewer"
OPERATOR = "operator"
_RANK = {VIEWER: 1, OPERATOR: 2}

F = TypeVar("F", bound=Callable)


@dataclass(frozen=True)
class Principal:
    """Who is asking: ``name`` (for the audit log) and ``role``."""

    name: str
    role: str

    def may(self, role: str) -> bool:
        return _RANK.get(self.role, 0) >= _RANK[role]


ANONYMOUS = Principal("anonymous", VIEWER)


class TokenTable:
    """The configured tokens, parsed once.  ``lookup(token)`` checks every entry, constant time."""

    def __init__(self, settings: Settings):
        self._entries: list[tuple[bytes, Principal]] = []
        for raw, role, var in (
            (settings.operator_tokens, OPERATOR, "TASKTREE_OPERATOR_TOKENS"),
            (settings.viewer_tokens, VIEWER, "TASKTREE_VIEWER_TOKENS"),
        ):
            for name, token in _parse_tokens(raw, var):
                self._entries.append((token.encode(), Principal(name, role)))
        if settings.auth_token:
            self._entries.append((settings.auth_token.encode(), Principal("auth-token", VIEWER)))
        self.has_operators = any(p.role == OPERATOR for _, p in self._entries)
        self.anonymous_reads = (
            not settings.viewer_tokens and not settings.auth_token and _is_loopback(settings.host)
        )

    def lookup(self, token: str) -> Principal | None:
        given = token.encode()
        found = None
        for secret, principal in self._entries:  # no early exit: timing says nothing about position
            if hmac.compare_digest(given, secret) and (found is None or principal.may(OPERATOR)):
                found = principal
        return found


def _parse_tokens(raw: str | None, var: str) -> list[tuple[str, str]]:
    entries = []
    for item in (raw or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, token = item.partition(":")
        if not sep:
            name, token = "token-" + hashlib.sha256(item.encode()).hexdigest()[:6], item
        if not name.strip() or len(token.strip()) < 8:
            raise SettingsError(
                f"{var}: each entry is name:token with a token of 8 or more characters"
            )
        entries.append((name.strip(), token.strip()))
    return entries


def _table() -> TokenTable:
    ext = current_app.extensions["tasktree"]
    table = ext.get("tokens")
    if table is None:
        table = ext["tokens"] = TokenTable(ext["settings"])
    return table


def authenticate() -> Principal | None:
    """The request's principal: from ``Authorization: Bearer``, else anonymous where allowed,
    else None.

    Raises ``Unauthorized`` for a credential that matches no token.
    """
    table = _table()
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    if credential or scheme:
        principal = table.lookup(credential.strip()) if scheme.lower() == "bearer" else None
        if principal is None:
            raise Unauthorized("the bearer token matches no configured viewer or operator token")
        return principal
    return ANONYMOUS if table.anonymous_reads else None


def require(role: str) -> Callable[[F], F]:
    """Decorator for views: 401/403 unless the caller has ``role``; sets ``g.principal``."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            principal = authenticate()
            if principal is None or (principal is ANONYMOUS and role != VIEWER):
                raise Unauthorized(_missing_message(role))
            if not principal.may(role):
                raise Forbidden(
                    f"{principal.name} is a {principal.role}; this needs an {role} token"
                )
            g.principal = principal
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _missing_message(role: str) -> str:
    if role == OPERATOR and not _table().has_operators:
        return (
            "docker actions are disabled: no operator token is configured "
            "(TASKTREE_OPERATOR_TOKENS)"
        )
    return f"this needs the header Authorization: Bearer <{role} token>"


def current_principal() -> Principal:
    return g.get("principal", ANONYMOUS)
