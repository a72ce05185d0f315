"""The authentication rules without a server: which settings may listen beyond loopback, ingest
tokens, the session cookie's flags and what a session may do (the whole flow through a real
server is in tests/integration/test_auth.py)."""

from __future__ import annotations

import re

import pytest
from flask import Flask

from tasktree.exporter import auth
from tasktree.exporter.app import error_response
from tasktree.exporter.errors import TasktreeError, Unauthorized
from tasktree.exporter.services import Services, install_services
from tasktree.exporter.settings import Settings, SettingsError
from tasktree.exporter.ui import ui_blueprint
from tasktree.exporter.ui.login import login_blueprint

VIEWER, OPERATOR, INGEST = "viewer-token-1", "operator-token-1", "ingest-token-1"


def settings(**values) -> Settings:
    return Settings.from_env({}, **values)


@pytest.mark.parametrize("values", [
    {"auth_token": "service-wide"},
    {"ingest_tokens": f"j:{INGEST}", "viewer_tokens": f"v:{VIEWER}"},
    {"ingest_tokens": f"j:{INGEST}", "operator_tokens": f"o:{OPERATOR}"},
    {"auth_token": "service-wide", "ingest_tokens": f"j:{INGEST}"},
])
def test_beyond_loopback_ingest_and_reading_each_need_a_credential(values):
    assert settings(host="0.0.0.0", **values).host == "0.0.0.0"


@pytest.mark.parametrize("values, says", [
    ({}, "ingest needs TASKTREE_INGEST_TOKENS (or TASKTREE_AUTH_TOKEN); the UI and API need"),
    ({"viewer_tokens": f"v:{VIEWER}"}, "ingest needs TASKTREE_INGEST_TOKENS"),
    ({"ingest_tokens": f"j:{INGEST}"}, "the UI and API need TASKTREE_VIEWER_TOKENS"),
])
def test_beyond_loopback_a_missing_credential_is_named(values, says):
    with pytest.raises(SettingsError, match=re.escape(says)):
        settings(host="10.1.2.3", **values)
    settings(host="::1", **values)  # loopback: the single-user set-up needs nothing


@pytest.mark.parametrize("env, message", [
    ({"TASKTREE_SECRET_KEY": "short"}, "TASKTREE_SECRET_KEY must be at least 32 characters"),
    ({"TASKTREE_SESSION_LIFETIME": "5"}, "TASKTREE_SESSION_LIFETIME must be at least 60"),
    ({"TASKTREE_COOKIE_SECURE": "maybe"},
     "TASKTREE_COOKIE_SECURE='maybe' is not a valid bool (one of 1, true, yes, on, 0, false, no"),
    ({"TASKTREE_SESSION_LIFETIME": "a day"},
     "TASKTREE_SESSION_LIFETIME='a day' is not a valid int (a whole number"),
])
def test_session_settings_are_checked(env, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.from_env(env)


def test_cookie_secure_is_read_from_the_environment():
    assert Settings.from_env({"TASKTREE_COOKIE_SECURE": "true"}).cookie_secure is True
    assert Settings.from_env({"TASKTREE_COOKIE_SECURE": "0"}).cookie_secure is False


@pytest.mark.parametrize("configured, header, outcome", [
    ({}, None, "ok"),  # nothing configured: ingest is open (loopback only)
    ({"ingest_tokens": f"a:{INGEST},b:ingest-token-2"}, f"Bearer {INGEST}", "ok"),
    ({"ingest_tokens": f"a:{INGEST},b:ingest-token-2"}, "Bearer ingest-token-2", "ok"),
    ({"ingest_tokens": f"a:{INGEST}"}, None, "missing 'Authorization: Bearer <token>'"),
    ({"ingest_tokens": f"a:{INGEST}"}, "Bearer ingest-token", "matches no ingest token"),
    ({"ingest_tokens": f"a:{INGEST}"}, f"Basic {INGEST}", "matches no ingest token"),
    ({"ingest_tokens": f"a:{INGEST}", "viewer_tokens": f"v:{VIEWER}"}, f"Bearer {VIEWER}",
     "matches no ingest token"),
    ({"auth_token": "service-wide"}, "Bearer service-wide", "ok"),
])
def test_ingest_accepts_exactly_the_ingest_tokens_and_the_service_wide_token(
    configured, header, outcome
):
    tokens = auth.IngestTokens(settings(**configured))
    if outcome == "ok":
        tokens.check(header)
        return
    with pytest.raises(Unauthorized, match=re.escape(outcome)):
        tokens.check(header)


def test_an_internal_ingest_token_never_closes_open_ingest():
    open_ingest = auth.IngestTokens(settings(), internal=["internal-token-1"])
    open_ingest.check(None)
    closed = auth.IngestTokens(settings(ingest_tokens=f"a:{INGEST}"), internal=["internal-token-1"])
    closed.check("Bearer internal-token-1")


# -- the session, in an app with the pages' blueprints ---------------------------------------


def app_for(**values) -> Flask:
    app = Flask(__name__)
    install_services(app, Services(settings(**values), pool=None))
    auth.install(app)
    app.register_blueprint(ui_blueprint)
    app.register_blueprint(login_blueprint)
    app.register_error_handler(TasktreeError, error_response)

    @app.post("/act")
    @auth.require(auth.OPERATOR)
    def act():
        return {"by": auth.current_principal().name}

    return app


def signed_in(app: Flask, token: str):
    client = app.test_client()
    form = client.get("/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    answer = client.post("/login", data={"csrf_token": csrf, "token": token})
    return client, answer


def test_the_cookie_is_secure_when_configured_and_lasts_the_session_lifetime():
    app = app_for(viewer_tokens=f"v:{VIEWER}", cookie_secure=True, session_lifetime=600)
    _, answer = signed_in(app, VIEWER)
    cookie = answer.headers["Set-Cookie"]
    assert "; Secure" in cookie and "; HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert answer.status_code == 303


def test_a_session_acts_with_its_csrf_token_and_a_new_sign_in_gets_a_new_one():
    app = app_for(operator_tokens=f"olga:{OPERATOR}")
    client, _ = signed_in(app, OPERATOR)
    with client.session_transaction() as stored:
        first = stored["csrf"]
        assert OPERATOR not in str(dict(stored))
    assert client.post("/act").status_code == 403
    assert client.post("/act", headers={"X-CSRF-Token": first}).get_json() == {"by": "olga"}
    assert client.post("/act", data={"csrf_token": first}).get_json() == {"by": "olga"}

    client, _ = signed_in(app, OPERATOR)
    with client.session_transaction() as stored:
        assert stored["csrf"] != first  # a fresh session: no fixation of the old one
    assert client.post("/act", headers={"X-CSRF-Token": first}).status_code == 403


def test_the_same_token_configured_twice_signs_in_with_the_higher_role():
    table = auth.TokenTable(
        settings(viewer_tokens=f"v:{OPERATOR}", operator_tokens=f"o:{OPERATOR}"))
    assert table.by_fingerprint(table.fingerprint(OPERATOR)) == auth.Principal("o", auth.OPERATOR)


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_wrong_tokens_lock_an_address_out_until_its_first_mistake_is_a_window_old(caplog):
    clock = _Clock()
    wrong = auth.WrongTokens(limit=3, window=60.0, clock=clock)
    for _ in range(3):
        wrong.check("10.0.0.7")
        wrong.wrong("10.0.0.7")
        clock.now += 10
    with pytest.raises(TasktreeError) as refused:
        wrong.check("10.0.0.7")
    assert refused.value.status == 429 and refused.value.code == "too_many_wrong_tokens"
    assert refused.value.retry_after == pytest.approx(30.0)  # the first mistake was at 1000
    assert "10.0.0.7" in refused.value.message and "30 s" in refused.value.message
    wrong.check("10.0.0.8")  # another address is not affected
    assert "3 tokens that match nothing from 10.0.0.7" in caplog.text
    clock.now = 1060.5  # the first mistake is a window old: one more try
    wrong.check("10.0.0.7")
    wrong.wrong("10.0.0.7")
    with pytest.raises(TasktreeError):
        wrong.check("10.0.0.7")


def test_wrong_tokens_forget_quiet_addresses_rather_than_grow_without_bound(monkeypatch):
    monkeypatch.setattr(auth.WrongTokens, "_ADDRESSES_KEPT", 100)
    clock = _Clock()
    wrong = auth.WrongTokens(limit=2, window=60.0, clock=clock)
    wrong.wrong("10.0.0.1")
    wrong.wrong("10.0.0.1")
    clock.now += 61
    for n in range(200):
        wrong.wrong(f"10.1.{n // 256}.{n % 256}")
    assert len(wrong._mistakes) <= 100
