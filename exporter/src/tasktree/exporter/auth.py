"""Who may do what: bearer tokens and the web UI's session, roles ``viewer`` < ``operator``.

Tokens come from ``TASKTREE_VIEWER_TOKENS`` and ``TASKTREE_OPERATOR_TOKENS``: comma-separated
entries, each ``name:token`` (the name is who the audit log says acted) or a bare ``token`` (named
``token-<first 6 hex of its sha256>``).  ``TASKTREE_AUTH_TOKEN``, the service-wide token, counts as
a viewer named ``auth-token``.  Ingest tokens (``TASKTREE_INGEST_TOKENS``) are another door
altogether (``IngestTokens``): they let a job send spans and nothing else.

A request's credential is, in this order (docs: README "Authentication"):

* ``Authorization: Bearer <token>`` (API clients, Prometheus, the ``tasktree docker`` CLI);
* the session cookie set by ``/login`` (the web UI): Flask's signed session holding a keyed
  fingerprint of the token signed in with (never the token), re-checked against the configured
  tokens on every request, so a token removed from the configuration ends its sessions at the
  next restart.  A request authenticated by the cookie that changes anything (any method but
  GET/HEAD/OPTIONS) must carry the session's CSRF token, in the ``X-CSRF-Token`` header
  (``fetch``) or the ``csrf_token`` form field; bearer clients need none (a browser never adds
  that header on its own);
* *anonymous* reading, allowed only when no viewer token and no ``TASKTREE_AUTH_TOKEN`` are
  configured **and** the server is bound to a loopback address (the out-of-the-box single-user
  set-up).

The rules: an operator's action (``require(OPERATOR)``): no credential → 401; a valid non-operator
credential → 403; no operator tokens configured → every action is refused (401, the message says
what to set).  A bearer credential that matches nothing is always 401, even where anonymous
reading would be allowed; a cookie that is forged, expired or whose token was removed counts as
no cookie.  Tokens are compared in constant time and never logged or echoed.  A client address
that gives ten tokens matching nothing within a minute is refused (429, ``Retry-After``) until
the first of them is a minute old (``WrongTokens``).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from flask import Flask, current_app, g, request, session

from tasktree.exporter.errors import CsrfRejected, Forbidden, TooManyWrongTokens, Unauthorized
from tasktree.exporter.services import current_services, services_of
from tasktree.exporter.settings import Settings, SettingsError, is_loopback

__all__ = [
    "ANONYMOUS",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "HEALTH_PATH",
    "OPERATOR",
    "HostGuard",
    "VIEWER",
    "IngestTokens",
    "Principal",
    "TokenTable",
    "authenticate",
    "csrf_token",
    "current_principal",
    "guard_anonymous_reads",
    "install",
    "load_secret_key",
    "refusal",
    "require",
    "sign_in",
    "sign_out",
]

logger = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"

VIEWER = "viewer"
OPERATOR = "operator"
_RANK = {VIEWER: 1, OPERATOR: 2}

SESSION_COOKIE = "tasktree_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SECRET_KEY_FILE = "secret_key"
"""In ``TASKTREE_DATA_DIR``: the session signing key when ``TASKTREE_SECRET_KEY`` is unset."""

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
    """The configured viewer/operator tokens, parsed once.

    ``lookup(token)`` checks every entry in constant time; ``fingerprint(token)`` is what a
    session keeps (HMAC-SHA256 under ``key``, so the cookie reveals nothing about the token).
    """

    def __init__(self, settings: Settings, key: bytes | str | None = None):
        self._entries: list[tuple[bytes, Principal]] = []
        for raw, role, var in (
            (settings.operator_tokens, OPERATOR, "TASKTREE_OPERATOR_TOKENS"),
            (settings.viewer_tokens, VIEWER, "TASKTREE_VIEWER_TOKENS"),
        ):
            for name, token in parse_tokens(raw, var):
                self._entries.append((token.encode(), Principal(name, role)))
        if auth_token := service_wide_token(settings):
            self._entries.append((auth_token.encode(), Principal("auth-token", VIEWER)))
        self.has_operators = any(p.role == OPERATOR for _, p in self._entries)
        self.anonymous_reads = (
            not settings.viewer_tokens and not settings.auth_token and is_loopback(settings.host)
        )
        self._key = key.encode() if isinstance(key, str) else (key or secrets.token_bytes(32))
        self.wrong_tokens = WrongTokens()
        self._by_fingerprint: dict[str, Principal] = {}
        for secret, principal in self._entries:
            fp = self._fingerprint(secret)
            known = self._by_fingerprint.get(fp)
            if known is None or principal.may(OPERATOR):  # the same token twice: operator wins
                self._by_fingerprint[fp] = principal

    @property
    def has_tokens(self) -> bool:
        """Whether anyone can sign in at all."""
        return bool(self._entries)

    def lookup(self, token: str) -> Principal | None:
        given = token.encode()
        found = None
        for secret, principal in self._entries:  # no early exit: timing says nothing about position
            if hmac.compare_digest(given, secret) and (found is None or principal.may(OPERATOR)):
                found = principal
        return found

    def fingerprint(self, token: str) -> str:
        return self._fingerprint(token.encode())

    def by_fingerprint(self, fingerprint: str) -> Principal | None:
        return self._by_fingerprint.get(fingerprint)

    def _fingerprint(self, secret: bytes) -> str:
        return hmac.new(self._key, secret, hashlib.sha256).hexdigest()[:32]


MIN_TOKEN_LENGTH = 8


class WrongTokens:
    """Tokens that matched nothing, per client address: after ``limit`` of them within ``window``
    seconds, that address may not present a token (bearer or ``/login``) until the oldest of them
    is ``window`` old, so that a short token cannot be guessed by trying them all.

    Per process: each server of several counts its own.  Behind a proxy every client shares the
    proxy's address; a session already signed in is not affected (it presents no token)."""

    _ADDRESSES_KEPT = 10_000  # beyond it the addresses with no recent mistake are forgotten

    def __init__(self, limit: int = 10, window: float = 60.0, clock=time.monotonic):
        self.limit, self.window, self._clock = limit, window, clock
        self._mistakes: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, address: str) -> None:
        """Raises ``TooManyWrongTokens`` while ``address`` may not try a token."""
        with self._lock:
            mistakes = self._recent(address)
            if mistakes is None or len(mistakes) < self.limit:
                return
            wait = mistakes[0] + self.window - self._clock()
        raise TooManyWrongTokens(
            f"too many tokens that match nothing from {address}; try again in"
            f" {max(1, round(wait))} s",
            retry_after=wait,
        )

    def wrong(self, address: str) -> None:
        """Counts a token from ``address`` that matched nothing."""
        with self._lock:
            mistakes = self._recent(address)
            if mistakes is None:
                if len(self._mistakes) >= self._ADDRESSES_KEPT:
                    self._forget_old()
                mistakes = self._mistakes[address] = deque(maxlen=self.limit)
            mistakes.append(self._clock())
            full = len(mistakes) == self.limit
        if full:
            logger.warning(
                "%d tokens that match nothing from %s within %.0f s: its tokens are refused for"
                " %.0f s",
                self.limit, address, self.window, self.window,
            )  # fmt: skip

    def _recent(self, address: str) -> deque[float] | None:
        mistakes = self._mistakes.get(address)
        if mistakes is not None:
            while mistakes and mistakes[0] <= self._clock() - self.window:
                mistakes.popleft()
        return mistakes

    def _forget_old(self) -> None:
        for address in list(self._mistakes):
            if not self._recent(address):
                del self._mistakes[address]
        if len(self._mistakes) >= self._ADDRESSES_KEPT:  # a flood of addresses: start afresh
            self._mistakes.clear()


def service_wide_token(settings: Settings) -> str | None:
    """``TASKTREE_AUTH_TOKEN``, held to the same length as every other token."""
    token = settings.auth_token
    if token is not None and len(token.strip()) < MIN_TOKEN_LENGTH:
        raise SettingsError(f"TASKTREE_AUTH_TOKEN must be {MIN_TOKEN_LENGTH} or more characters")
    return token


def parse_tokens(raw: str | None, var: str) -> list[tuple[str, str]]:
    """``name:token,...`` (or bare tokens) → ``[(name, token)]``.

    A malformed entry raises ``SettingsError`` naming ``var``."""
    entries = []
    for item in (raw or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, token = item.partition(":")
        if not sep:
            name, token = "token-" + hashlib.sha256(item.encode()).hexdigest()[:6], item
        if not name.strip() or len(token.strip()) < MIN_TOKEN_LENGTH:
            raise SettingsError(
                f"{var}: each entry is name:token with a token of {MIN_TOKEN_LENGTH} or more"
                " characters"
            )
        entries.append((name.strip(), token.strip()))
    return entries


class IngestTokens:
    """The bearer tokens the OTLP receivers accept: ``TASKTREE_INGEST_TOKENS`` and
    ``TASKTREE_AUTH_TOKEN``.  None configured: ingest is open (loopback only, see ``Settings``).

    ``internal`` tokens (this process's own docker tracing) are accepted too, but never make
    ingest closed on their own.
    """

    def __init__(self, settings: Settings, internal: Iterable[str] = ()):
        tokens = [t for _, t in parse_tokens(settings.ingest_tokens, "TASKTREE_INGEST_TOKENS")]
        if auth_token := service_wide_token(settings):
            tokens.append(auth_token)
        self.required = bool(tokens)
        self._secrets = [t.encode() for t in (*tokens, *internal)] if tokens else []

    def check(self, authorization: str | None) -> None:
        """Raise ``Unauthorized`` unless ingest is open or ``authorization`` is ``Bearer <token>``
        with an accepted token (every entry compared, constant time)."""
        if not self.required:
            return
        if not authorization or not authorization.strip():
            raise Unauthorized(
                "missing 'Authorization: Bearer <token>': this server accepts spans only with an "
                "ingest token (OTEL_EXPORTER_OTLP_HEADERS=Authorization=Bearer%20<token>)"
            )
        scheme, _, given = authorization.strip().partition(" ")
        given_bytes = given.strip().encode()
        matched = False
        for secret in self._secrets:
            matched |= hmac.compare_digest(given_bytes, secret)
        if scheme.lower() != "bearer" or not matched:
            raise Unauthorized("the bearer token matches no ingest token")


# -- the Host a request names -------------------------------------------------------------------


class HostGuard:
    """Refuses a request whose ``Host`` is not this machine's while a door is open without
    credentials (``Forbidden``).  A web page can rebind its own host name to 127.0.0.1 (DNS
    rebinding) and then read a loopback server as same-origin: its requests still name that
    host, never ``localhost`` or a loopback address.  ``TASKTREE_ALLOWED_HOSTS`` adds names
    (a same-machine proxy's).  A door that needs a credential needs no guard: the page has none.
    """

    def __init__(self, settings: Settings):
        names = (settings.allowed_hosts or "").split(",")
        self._allowed = {_bare_name(n) for n in names if n.strip()}

    def check(self, host: str | None) -> None:
        if not host:  # HTTP/1.0 without Host: no browser sends that
            return
        name = _bare_name(host)
        if name in self._allowed or name == "localhost" or name.endswith(".localhost"):
            return
        if is_loopback(name):
            return
        raise Forbidden(
            f"Host {host[:100]!r} is not this machine: tasktree answers requests without a"
            " credential only when they name localhost or a loopback address (so that no web"
            " page can reach it by DNS rebinding); add the name to TASKTREE_ALLOWED_HOSTS if you"
            " reach tasktree through it"
        )


def _bare_name(host: str) -> str:
    """``host`` of a Host header (``name``, ``name:port``, ``[v6]:port``), lower case, without
    the port and a final dot."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def guard_anonymous_reads(app: Flask) -> None:
    """Check the ``Host`` of every request to ``app`` while reading is open to anyone on the
    machine (``TokenTable.anonymous_reads``)."""
    guard = HostGuard(services_of(app).settings)

    @app.before_request
    def _check_host() -> None:
        # /healthz says "ok" and nothing else: a proxy's or load balancer's check may name it.
        if _table().anonymous_reads and request.path != HEALTH_PATH:
            guard.check(request.headers.get("Host"))


# -- the session ------------------------------------------------------------------------------


def install(app: Flask) -> None:
    """Configure ``app``'s signed session cookie from its settings (once; ``install_ui`` calls
    it too, so any app with the pages has sign-in).

    The key: ``Services.secret_key`` (what ``Service`` loaded with ``load_secret_key``), else
    ``TASKTREE_SECRET_KEY``, else a random one (an app built in a test: sessions end with it).
    """
    services = services_of(app)
    if services.auth_installed:
        return
    services.auth_installed = True
    settings = services.settings
    app.secret_key = services.secret_key or settings.secret_key or secrets.token_hex(32)
    app.config.update(
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        # Lax, not Strict: a link from Grafana or a chat to /runs/<id> arrives signed in.
        # Cross-site POSTs carry no cookie under Lax, and every cookie-authenticated action needs
        # the CSRF token besides.
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.cookie_secure,
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=settings.session_lifetime),
        # The cookie is signed once at sign-in and its timestamp is checked on every request, so
        # a sign-in lasts TASKTREE_SESSION_LIFETIME however busy the page is.
        SESSION_REFRESH_EACH_REQUEST=False,
    )

    @app.context_processor
    def _auth_context() -> dict:
        return {"auth_state": auth_state, "csrf_token": csrf_token, "csrf_field": CSRF_FIELD}


def load_secret_key(settings: Settings) -> str:
    """``TASKTREE_SECRET_KEY``, else the key in ``data_dir/secret_key`` (created once, mode 0600,
    so restarts and other servers with the same data dir share it).  A data dir that cannot be
    written gives a random key for this process, with a warning."""
    if settings.secret_key:
        return settings.secret_key
    path = Path(settings.data_dir) / SECRET_KEY_FILE
    try:
        return _read_or_create_key(path)
    except OSError as exc:
        logger.warning(
            "cannot keep the session signing key in %s (%s): web sign-ins end when this process "
            "stops; set TASKTREE_SECRET_KEY",
            path,
            exc.strerror or exc,
        )
        return secrets.token_hex(32)


def _read_or_create_key(path: Path) -> str:
    if path.exists():
        key = path.read_text().strip()
        if len(key) >= 32:
            return key
        raise OSError(f"{path} holds no usable key (fewer than 32 characters)")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(32) + "\n")
        try:
            os.link(temporary, path)  # atomic, and refuses to replace a key another process wrote
        except FileExistsError:
            pass
    finally:
        temporary.unlink(missing_ok=True)
    return path.read_text().strip()


def sign_in(token: str) -> Principal | None:
    """Start a fresh session for ``token`` (a viewer or operator token); None if it matches none.

    The old session is dropped first (a pre-sign-in cookie never carries over), and the new one
    gets its own CSRF token.  Raises ``TooManyWrongTokens`` for an address that gave too many.
    """
    table = _table()
    principal = _lookup(table, token)
    if principal is None:
        return None
    session.clear()
    session.permanent = True
    session["fp"] = table.fingerprint(token)
    session["csrf"] = secrets.token_urlsafe(32)
    return principal


def sign_out() -> None:
    session.clear()


def csrf_token() -> str:
    """This session's CSRF token (made on first use for a visitor not yet signed in: the sign-in
    form carries one too)."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_matches() -> bool:
    """Whether the request carries this session's CSRF token (header or form field)."""
    expected = session.get("csrf")
    given = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD) or ""
    return bool(expected) and hmac.compare_digest(given.encode(), str(expected).encode())


def _lookup(table: TokenTable, token: str) -> Principal | None:
    """``table.lookup(token)``, for a client address that has not given too many wrong tokens
    (``TooManyWrongTokens`` otherwise); a wrong one is counted against its address."""
    address = request.remote_addr or "unknown"
    table.wrong_tokens.check(address)
    principal = table.lookup(token)
    if principal is None and table.has_tokens:  # with none there is nothing to guess
        table.wrong_tokens.wrong(address)
    return principal


def _session_principal(table: TokenTable) -> Principal | None:
    fingerprint = session.get("fp")
    if not fingerprint:
        return None
    principal = table.by_fingerprint(str(fingerprint))
    if principal is None:  # its token was removed from the configuration
        session.clear()
    return principal


# -- requests ---------------------------------------------------------------------------------


def _table() -> TokenTable:
    services = current_services()
    table = services.tokens
    if table is None:
        table = services.tokens = TokenTable(services.settings, key=current_app.secret_key)
    return table


def authenticate(*, acts: bool | None = None) -> Principal | None:
    """The request's principal: bearer token, else session cookie, else anonymous where allowed,
    else None.  Sets ``g.principal`` and ``g.auth_via`` (``bearer``/``session``/``anonymous``).

    Raises ``Unauthorized`` for a bearer credential that matches no token, and ``CsrfRejected``
    for a cookie-authenticated request that acts without the CSRF token.  ``acts``: whether the
    request is an action (default: any method but GET/HEAD/OPTIONS; reading a container's logs
    is an action by GET).
    """
    if acts is None:
        acts = request.method not in SAFE_METHODS
    table = _table()
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    if credential or scheme:
        principal = _lookup(table, credential.strip()) if scheme.lower() == "bearer" else None
        if principal is None:
            raise Unauthorized("the bearer token matches no configured viewer or operator token")
        return _found(principal, "bearer")
    principal = _session_principal(table)
    if principal is not None:
        if acts and not csrf_matches():
            raise CsrfRejected(
                "this action needs the page's CSRF token (header X-CSRF-Token or form field "
                "csrf_token): reload the page and try again"
            )
        return _found(principal, "session")
    return _found(ANONYMOUS, "anonymous") if table.anonymous_reads else None


def _found(principal: Principal, via: str) -> Principal:
    g.principal = principal
    g.auth_via = via
    return principal


def require(role: str, *, acts: bool | None = None) -> Callable[[F], F]:
    """Decorator for views: 401/403 unless the caller has ``role``; sets ``g.principal``.
    ``acts``: as for ``authenticate``."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            principal = authenticate(acts=acts)
            message = _refusal(principal, role)
            if message is not None:
                signed_in = principal is not None and principal is not ANONYMOUS
                raise (Forbidden if signed_in else Unauthorized)(message)
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def refusal(role: str) -> str | None:
    """Why this request's caller (``authenticate()`` already called) may not act as ``role``, as
    ``require`` would say it; None when it may.  For pages that leave out what it cannot do."""
    return _refusal(g.get("principal"), role)


def _refusal(principal: Principal | None, role: str) -> str | None:
    if principal is None or (principal is ANONYMOUS and role != VIEWER):
        return _missing_message(role)
    if not principal.may(role):
        return f"{principal.name} is a {principal.role}; this needs an {role} token"
    return None


def _missing_message(role: str) -> str:
    if role == OPERATOR and not _table().has_operators:
        return (
            "docker actions are disabled: no operator token is configured "
            "(TASKTREE_OPERATOR_TOKENS)"
        )
    article = "an" if role[:1] in "aeiou" else "a"
    return (
        f"this needs {article} {role} sign-in (/login) or the header"
        f" Authorization: Bearer <{role} token>"
    )


def current_principal() -> Principal:
    return g.get("principal", ANONYMOUS)


def auth_state() -> dict:
    """For templates: who is signed in, how, and whether signing in is possible at all."""
    return {
        "principal": g.get("principal"),
        "via": g.get("auth_via"),
        "can_sign_in": _table().has_tokens,
    }


def check_settings(settings: Settings) -> None:
    """Parse every token list once at start-up, so a malformed one stops ``tasktree serve``."""
    TokenTable(settings)
    IngestTokens(settings)
