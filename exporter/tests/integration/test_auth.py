"""Authentication through a real ``tasktree serve`` (issue 7): ingest tokens sent by the real
OpenTelemetry exporters, the web UI's session cookie with CSRF protection, bearer API clients,
the refusal to listen beyond loopback without credentials, and what start-up says about a taken
port or a database URL that cannot work.  The browser flow is in
``tests/ui/test_login.py``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import zlib

import grpc
import itsdangerous
import pytest
import requests
from flask import Flask
from google.rpc.status_pb2 import Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from psycopg.conninfo import make_conninfo

from .faults_support import otlp_request

VIEWER = "viewer-token-3f9a1c77"
OPERATOR = "operator-token-b41d2e08"
INGEST = "ingest-token-a7c3e915"
INGEST_OTHER = "ingest-token-team-b-0c2f"
SERVICE_WIDE = "service-wide-token-58e1"
TOKENS = {
    "TASKTREE_VIEWER_TOKENS": f"victor:{VIEWER}",
    "TASKTREE_OPERATOR_TOKENS": f"olga:{OPERATOR}",
    "TASKTREE_INGEST_TOKENS": f"nightly:{INGEST}, team-b:{INGEST_OTHER}",
    "TASKTREE_AUTH_TOKEN": SERVICE_WIDE,
}
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


@pytest.fixture
def server(start_tasktree, private_db, tmp_path):
    """A server with every kind of token, a docker host that is down, its own data dir."""
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(f"hosts:\n  - name: gone\n    url: unix://{tmp_path}/no-such.sock\n")
    return start_tasktree(
        env={**TOKENS, "TASKTREE_DATA_DIR": str(tmp_path / "data"),
             "TASKTREE_DOCKER_HOSTS_FILE": str(hosts)},
        database=private_db,
    )


def sign_in(server, token: str) -> requests.Session:
    """A browser-like client signed in through the /login form."""
    client = requests.Session()
    form = client.get(server.web + "/login", timeout=10)
    assert form.status_code == 200
    answer = client.post(server.web + "/login", timeout=10, allow_redirects=False, data={
        "csrf_token": CSRF_FIELD.search(form.text).group(1), "token": token, "next": "/docker"})
    assert answer.status_code == 303 and answer.headers["Location"] == "/docker"
    return client


def csrf_of(server, client: requests.Session) -> str:
    """The CSRF token the /docker page gives its script."""
    page = client.get(server.web + "/docker", timeout=10)
    assert page.status_code == 200
    return CSRF_META.search(page.text).group(1)


DRY_RUN = {"image": "registry:5000/app:1", "name": "app", "hosts": ["gone"], "dry_run": True}


# -- ingest ----------------------------------------------------------------------------------


def sdk_export(protocol: str, server, headers_variable: str | None, monkeypatch) -> bool:
    """Export one span with the real SDK exporter, configured only through the environment."""
    if headers_variable is None:
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_HEADERS", raising=False)
    else:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", headers_variable)
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint="http://" + server.otlp_grpc, insecure=True)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=server.otlp_http + "/v1/traces")
    finished = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": f"auth-{protocol}"}))
    provider.add_span_processor(SimpleSpanProcessor(finished))
    with provider.get_tracer("auth-test").start_as_current_span("ingest"):
        pass
    try:
        return exporter.export(finished.get_finished_spans()) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
        provider.shutdown()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_sdk_exporters_send_with_an_ingest_token_from_otel_exporter_otlp_headers(
    protocol, server, monkeypatch
):
    assert sdk_export(protocol, server, f"Authorization=Bearer {INGEST}", monkeypatch)
    assert sdk_export(protocol, server, f"Authorization=Bearer%20{INGEST_OTHER}", monkeypatch)
    assert sdk_export(protocol, server, f"Authorization=Bearer {SERVICE_WIDE}", monkeypatch)
    assert not sdk_export(protocol, server, None, monkeypatch)
    assert not sdk_export(protocol, server, "Authorization=Bearer wrong-token-123", monkeypatch)
    # A viewer or operator token reads and acts; it does not send spans.
    assert not sdk_export(protocol, server, f"Authorization=Bearer {OPERATOR}", monkeypatch)


@pytest.mark.parametrize("status, headers", [
    (401, {}), (401, {"Authorization": "Bearer wrong-token-123"}),
    (401, {"Authorization": f"Basic {INGEST}"}), (200, {"Authorization": f"Bearer {INGEST}"}),
])
def test_otlp_http_answers_401_with_the_reason_without_an_ingest_token(server, status, headers):
    answer = requests.post(server.otlp_http + "/v1/traces", data=b"{}", timeout=10,
                           headers={"Content-Type": "application/json", **headers})
    assert answer.status_code == status
    if status == 401:
        assert answer.json()["code"] == 16 and "ingest token" in answer.json()["message"]
        assert INGEST not in answer.text and "wrong-token" not in answer.text
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")


def refused_export(protocol: str, server, authorization: str | None) -> None:
    """One export of one span that the server must refuse for its token."""
    body = otlp_request(os.urandom(16), [(os.urandom(8), None, "refused", False)], "no-token")
    credential = {"authorization": authorization} if authorization else {}
    if protocol == "http":
        answer = requests.post(server.otlp_http + "/v1/traces", data=body, timeout=10,
                               headers={"Content-Type": "application/x-protobuf", **credential})
        assert answer.status_code == 401
        return
    with grpc.insecure_channel(server.otlp_grpc) as channel:
        export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        with pytest.raises(grpc.RpcError) as refused:
            export(body, timeout=10, metadata=list(credential.items()))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def unauthenticated_total(server, protocol: str,
                          counted: tuple[str, str] = ("spans_rejected", "reason")) -> float:
    name, label = counted
    text = requests.get(server.web + "/metrics", headers={"Authorization": f"Bearer {VIEWER}"},
                        timeout=10).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == f"tasktree_ingest_{name}_total"
               and s.labels == {"protocol": protocol, label: "unauthenticated"})


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_exports_refused_for_their_token_are_counted_and_warned_about_once_a_minute(
    protocol, server
):
    """Issue 18: an operator sees a job sending without its token, in /metrics and the log."""
    for authorization in (None, "Bearer wrong-token-123", f"Basic {INGEST}", None):
        refused_export(protocol, server, authorization)

    assert unauthenticated_total(server, protocol) == 4  # requests: their bodies are not read
    assert unauthenticated_total(server, protocol, ("requests", "outcome")) == 4
    log = server.log_path.read_text()
    warnings = [line for line in log.splitlines() if "refused an OTLP" in line]
    assert len(warnings) == 1, log
    name = {"http": "OTLP/HTTP", "grpc": "OTLP/gRPC"}[protocol]
    assert " WARNING " in warnings[0]
    assert f"refused an {name} export from 127.0.0.1: " in warnings[0]
    assert "ingest token" in warnings[0] and "once every 60 s" in warnings[0]
    assert "wrong-token" not in log and INGEST not in log


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_configure_of_the_instrumentation_honours_otel_exporter_otlp_headers(
    protocol, server
):
    endpoint = server.otlp_http if protocol != "grpc" else "http://" + server.otlp_grpc
    script = ("from tasktree.instrumentation import configure, task\n"
              "configure(service_name=%r)\n"
              "with task('authenticated job'):\n    pass\n")
    attempts = ((f"with-token-{protocol}", INGEST), (f"wrong-token-{protocol}", "nope-nope-1"))
    for job, token in attempts:
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
               "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
               "OTEL_EXPORTER_OTLP_HEADERS": f"Authorization=Bearer {token}",
               "OTEL_BSP_SCHEDULE_DELAY": "100"}
        subprocess.run([sys.executable, "-c", script % job], env=env, check=True, timeout=60)
    server.wait_folded()
    runs = requests.get(server.web + "/api/runs", timeout=10,
                        headers={"Authorization": f"Bearer {VIEWER}"}).json()["runs"]
    jobs = {run["job"] for run in runs}
    assert f"with-token-{protocol}" in jobs and f"wrong-token-{protocol}" not in jobs


# -- the web UI's session --------------------------------------------------------------------


def test_a_viewer_signed_in_reads_pages_and_api_but_docker_actions_are_403(server):
    client = sign_in(server, VIEWER)

    runs_page = client.get(server.web + "/", timeout=10)
    assert runs_page.status_code == 200 and "<bdi>victor</bdi> (viewer)" in runs_page.text
    assert client.get(server.web + "/api/runs", timeout=10).status_code == 200
    assert client.get(server.web + "/metrics", timeout=10).status_code == 200
    assert client.get(server.web + "/api/docker/hosts", timeout=10).status_code == 200
    refused = client.post(server.web + "/api/docker/deploy", json=DRY_RUN, timeout=10,
                          headers={"X-CSRF-Token": csrf_of(server, client)})
    assert refused.status_code == 403
    assert refused.json()["error"] == {
        "code": "forbidden", "message": "victor is a viewer; this needs an operator token"}


def test_the_session_cookie_is_httponly_samesite_lax_and_holds_no_token(server):
    client = requests.Session()
    form = client.get(server.web + "/login", timeout=10)
    answer = client.post(server.web + "/login", allow_redirects=False, timeout=10, data={
        "csrf_token": CSRF_FIELD.search(form.text).group(1), "token": OPERATOR})
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith("tasktree_session=") and "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie and "Secure" not in cookie and "Expires=" in cookie
    payload = cookie.split("=", 1)[1].split(".", 1)[0]
    assert OPERATOR not in itsdangerous.base64_decode(payload).decode()
    assert "fp" in _session_of(answer)  # signed in: the session names the token by fingerprint
    assert answer.headers["Cache-Control"] == "no-store"


def test_an_operator_signed_in_acts_with_the_csrf_token_and_the_audit_log_names_them(server):
    client = sign_in(server, OPERATOR)
    csrf = csrf_of(server, client)

    answer = client.post(server.web + "/api/docker/deploy?wait=10", json=DRY_RUN, timeout=30,
                         headers={"X-CSRF-Token": csrf})
    assert answer.status_code in (200, 202), answer.text
    operation = answer.json()["operation"]
    assert operation["actor"] == "olga" and operation["dry_run"]
    audit = client.get(server.web + "/api/docker/audit", timeout=10).json()["entries"]
    assert audit[0]["actor"] == "olga" and audit[0]["role"] == "operator"
    # The deploy's run reaches the tree through the server's own receiver, which now needs a token.
    deadline = time.monotonic() + 30
    run_url = server.web + f"/api/runs/{operation['trace_id']}"
    while client.get(run_url, timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the deploy's run never reached the tree"
        time.sleep(0.2)


@pytest.mark.parametrize("csrf", [None, "", "forged-csrf-token"], ids=["none", "empty", "wrong"])
def test_an_action_by_cookie_without_the_right_csrf_token_is_403_saying_why(server, csrf):
    client = sign_in(server, OPERATOR)
    headers = {} if csrf is None else {"X-CSRF-Token": csrf}

    answer = client.post(server.web + "/api/docker/deploy", json=DRY_RUN, headers=headers,
                         timeout=10)
    assert answer.status_code == 403
    error = answer.json()["error"]
    assert error["code"] == "csrf_token_missing" and "X-CSRF-Token" in error["message"]
    stopped = client.post(server.web + "/api/docker/hosts/gone/containers/app/stop", timeout=10,
                          headers=headers)
    assert stopped.status_code == 403 and stopped.json()["error"]["code"] == "csrf_token_missing"
    # Reading logs is an action by GET: a link from another site (the cookie is sent on a
    # top-level GET) must not start one, nor hold a server thread with follow=1.
    logs = client.get(server.web + "/api/docker/hosts/gone/containers/app/logs?follow=1",
                      headers=headers, timeout=10)  # fmt: skip
    assert logs.status_code == 403 and logs.json()["error"]["code"] == "csrf_token_missing"
    assert client.get(server.web + "/api/docker/audit", timeout=10).json()["entries"] == []


def test_a_log_read_that_fails_is_in_the_audit_log_like_a_failed_stop(server):
    client = sign_in(server, OPERATOR)
    logs = client.get(server.web + "/api/docker/hosts/gone/containers/app/logs", timeout=30,
                      headers={"X-CSRF-Token": csrf_of(server, client)})  # fmt: skip
    assert logs.status_code >= 500, logs.text  # the host is down
    [entry] = client.get(server.web + "/api/docker/audit", timeout=10).json()["entries"]
    assert (entry["actor"], entry["action"], entry["status"]) == ("olga", "logs", "error")


def test_bearer_api_clients_need_no_session_and_no_csrf_token(server):
    viewer = {"Authorization": f"Bearer {VIEWER}"}
    operator = {"Authorization": f"Bearer {OPERATOR}"}

    assert requests.get(server.web + "/api/runs", headers=viewer, timeout=10).status_code == 200
    acted = requests.post(server.web + "/api/docker/deploy", json=DRY_RUN, headers=operator,
                          timeout=10)
    assert acted.status_code in (200, 202) and "Set-Cookie" not in acted.headers
    wrong = requests.get(server.web + "/api/runs", timeout=10,
                         headers={"Authorization": "Bearer not-a-token-at-all"})
    assert wrong.status_code == 401 and "not-a-token" not in wrong.text


def test_without_a_credential_pages_redirect_to_login_and_the_api_answers_401(server):
    page = requests.get(server.web + "/runs/0123?node=ab", allow_redirects=False, timeout=10)
    assert page.status_code == 302
    assert page.headers["Location"] == "/login?next=/runs/0123?node%3Dab"
    docker = requests.get(server.web + "/docker", allow_redirects=False, timeout=10)
    assert docker.status_code == 302 and docker.headers["Location"] == "/login?next=/docker"
    assert requests.get(server.web + "/api/runs", timeout=10).status_code == 401
    assert requests.get(server.web + "/metrics", timeout=10).status_code == 401
    assert requests.get(server.web + "/api/openapi.json", timeout=10).status_code == 200
    action = requests.post(server.web + "/api/docker/pull", json={"image": "x", "hosts": ["*"]},
                           timeout=10)  # fmt: skip
    assert action.status_code == 401
    assert action.json()["error"]["message"].startswith("this needs an operator sign-in (/login)")


def test_a_wrong_token_at_login_is_401_and_never_echoed(server):
    client = requests.Session()
    form = client.get(server.web + "/login", timeout=10)
    answer = client.post(server.web + "/login", allow_redirects=False, timeout=10, data={
        "csrf_token": CSRF_FIELD.search(form.text).group(1), "token": "guess-guess-123"})
    assert answer.status_code == 401 and "matches no viewer or operator token" in answer.text
    assert "guess-guess-123" not in answer.text
    # An ingest token signs nobody in.
    answer = client.post(server.web + "/login", allow_redirects=False, timeout=10, data={
        "csrf_token": CSRF_FIELD.search(form.text).group(1), "token": INGEST})
    assert answer.status_code == 401


def test_login_without_the_forms_csrf_token_is_refused(server):
    answer = requests.post(server.web + "/login", data={"token": OPERATOR}, timeout=10,
                           allow_redirects=False)
    assert answer.status_code == 403 and "expired" in answer.text
    assert "fp" not in _session_of(answer)


def _session_of(answer) -> dict:
    """The Flask session a response set, read without its secret (the payload is only signed)."""
    cookie = answer.cookies.get("tasktree_session")
    if not cookie:
        return {}
    compressed = cookie.startswith(".")
    payload = itsdangerous.base64_decode(cookie.lstrip(".").split(".", 1)[0])
    return json.loads(zlib.decompress(payload) if compressed else payload)


def test_login_never_redirects_to_another_site(server):
    client = requests.Session()
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example", "runs"):
        form = client.get(server.web + "/login", timeout=10)
        answer = client.post(server.web + "/login", allow_redirects=False, timeout=10, data={
            "csrf_token": CSRF_FIELD.search(form.text).group(1), "token": VIEWER,
            "next": target})
        assert answer.status_code == 303 and answer.headers["Location"] == "/"


def forge(server, tmp_path, payload: dict, age: float, key: str | None = None) -> str:
    """A session cookie signed as Flask signs it, ``age`` seconds ago, with the server's key."""
    key = key or (tmp_path / "data" / "secret_key").read_text().strip()
    app = Flask("forger")
    app.secret_key = key
    serializer = app.session_interface.get_signing_serializer(app)
    signed_at = int(time.time() - age)
    real = itsdangerous.TimestampSigner.get_timestamp
    itsdangerous.TimestampSigner.get_timestamp = lambda self: signed_at
    try:
        return serializer.dumps(payload)
    finally:
        itsdangerous.TimestampSigner.get_timestamp = real


def session_payload(server, tmp_path, client: requests.Session) -> dict:
    app = Flask("reader")
    app.secret_key = (tmp_path / "data" / "secret_key").read_text().strip()
    serializer = app.session_interface.get_signing_serializer(app)
    return serializer.loads(client.cookies["tasktree_session"])


def test_a_forged_or_expired_cookie_is_no_credential(server, tmp_path):
    payload = session_payload(server, tmp_path, sign_in(server, OPERATOR))

    def get(cookie: str, path: str):
        return requests.get(server.web + path, cookies={"tasktree_session": cookie},
                            allow_redirects=False, timeout=10)

    fresh = forge(server, tmp_path, payload, age=0)
    assert get(fresh, "/api/runs").status_code == 200  # the forger signs exactly as the server
    expired = forge(server, tmp_path, payload, age=12 * 3600 + 60)  # TASKTREE_SESSION_LIFETIME
    other_key = forge(server, tmp_path, payload, age=0, key="another-key-" + "x" * 32)
    tampered = fresh[:-3] + ("AAA" if not fresh.endswith("AAA") else "BBB")
    unsigned_role = forge(server, tmp_path, {**payload, "fp": "0" * 32}, age=0)
    for cookie in (expired, other_key, tampered, unsigned_role):
        assert get(cookie, "/api/runs").status_code == 401
        page = get(cookie, "/")
        assert page.status_code == 302 and page.headers["Location"].startswith("/login")


def test_logout_ends_the_session(server):
    client = sign_in(server, OPERATOR)
    page = client.get(server.web + "/", timeout=10)
    csrf = CSRF_FIELD.search(page.text).group(1)
    refused = client.post(server.web + "/logout", timeout=10, allow_redirects=False)
    assert refused.status_code == 403 and "Signing out needs the page" in refused.text
    assert client.get(server.web + "/api/runs", timeout=10).status_code == 200  # still signed in

    answer = client.post(server.web + "/logout", data={"csrf_token": csrf}, timeout=10,
                         allow_redirects=False)
    assert answer.status_code == 303 and answer.headers["Location"] == "/login?signed_out=1"
    assert client.get(server.web + "/api/runs", timeout=10).status_code == 401
    assert client.get(server.web + "/", allow_redirects=False, timeout=10).status_code == 302


def test_a_sign_in_survives_a_restart_and_ends_when_its_token_is_removed(
    start_tasktree, private_db, tmp_path
):
    env = {**TOKENS, "TASKTREE_DATA_DIR": str(tmp_path / "data")}
    first = start_tasktree(env=env, database=private_db)
    client = sign_in(first, VIEWER)
    cookie = client.cookies["tasktree_session"]
    first.stop()
    assert oct((tmp_path / "data" / "secret_key").stat().st_mode & 0o777) == "0o600"

    again = start_tasktree(env=env, database=private_db)
    assert requests.get(again.web + "/api/runs", cookies={"tasktree_session": cookie},
                        timeout=10).status_code == 200
    again.stop()
    revoked = start_tasktree(env={**env, "TASKTREE_VIEWER_TOKENS": "vera:another-viewer-token"},
                             database=private_db)
    assert requests.get(revoked.web + "/api/runs", cookies={"tasktree_session": cookie},
                        timeout=10).status_code == 401


# -- where tasktree listens ------------------------------------------------------------------


def serve_exit(env: dict, *args: str, database: str = "postgresql://nobody@127.0.0.1:1/none"
               ) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKTREE_")}
    return subprocess.run(
        [sys.executable, "-m", "tasktree.exporter", "serve", "--database-url", database, *args],
        env={**clean, **env}, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("env, missing", [
    ({}, ["TASKTREE_INGEST_TOKENS", "TASKTREE_VIEWER_TOKENS"]),
    ({"TASKTREE_VIEWER_TOKENS": f"v:{VIEWER}"}, ["TASKTREE_INGEST_TOKENS"]),
    ({"TASKTREE_INGEST_TOKENS": f"j:{INGEST}"}, ["TASKTREE_VIEWER_TOKENS"]),
    ({"TASKTREE_OPERATOR_TOKENS": f"o:{OPERATOR}"}, ["TASKTREE_INGEST_TOKENS"]),
], ids=["nothing", "no-ingest-token", "no-viewer-token", "operator-only"])
def test_serve_refuses_a_non_loopback_address_without_credentials(env, missing):
    done = serve_exit(env, "--host", "0.0.0.0")

    assert done.returncode != 0 and "TASKTREE_READY" not in done.stdout
    assert "refusing to listen on '0.0.0.0' without authentication" in done.stderr
    for variable in missing:
        assert variable in done.stderr
    assert "or bind 127.0.0.1" in done.stderr


@pytest.mark.parametrize("flag, variable", [
    ("--port", "TASKTREE_PORT"),
    ("--otlp-http-port", "TASKTREE_OTLP_HTTP_PORT"),
    ("--otlp-grpc-port", "TASKTREE_OTLP_GRPC_PORT"),
])
def test_serve_says_which_port_is_taken_and_how_to_choose_another(private_db, flag, variable):
    ports = {"--port": "0", "--otlp-http-port": "0", "--otlp-grpc-port": "0"}
    with socket.socket() as taken:  # another program listens there
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports[flag] = str(taken.getsockname()[1])
        done = serve_exit({}, *[a for pair in ports.items() for a in pair], database=private_db)

    assert done.returncode == 1 and "TASKTREE_READY" not in done.stdout
    assert "tasktree: cannot listen for " in done.stderr
    assert f"on 127.0.0.1:{ports[flag]} (" in done.stderr
    assert f"choose another with {flag} ({variable})" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_refuses_a_malformed_token_list_at_start_up():
    done = serve_exit({"TASKTREE_INGEST_TOKENS": "nightly:short"})

    assert done.returncode != 0
    assert "TASKTREE_INGEST_TOKENS: each entry is name:token" in done.stderr
    assert "short" not in done.stderr.replace("nightly:short", "")  # the value is not echoed


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
def test_serve_refuses_a_service_wide_token_shorter_than_every_other_token(host):
    done = serve_exit({"TASKTREE_AUTH_TOKEN": "short"}, "--host", host)

    assert done.returncode != 0 and "TASKTREE_READY" not in done.stdout
    assert "TASKTREE_AUTH_TOKEN must be 8 or more characters" in done.stderr
    assert "short" not in done.stderr.replace("TASKTREE_AUTH_TOKEN", "")  # not echoed


def test_the_secret_key_file_is_shared_by_processes_that_race_to_create_it(tmp_path):
    code = ("import sys; from tasktree.exporter.auth import load_secret_key;"
            "from tasktree.exporter.settings import Settings;"
            "print(load_secret_key(Settings(data_dir=sys.argv[1])))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "d")],
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    keys = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert len(keys) == 1 and len(keys.pop()) == 64
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["secret_key"]


def test_the_secret_key_variable_wins_over_the_file(tmp_path):
    from tasktree.exporter.auth import load_secret_key
    from tasktree.exporter.settings import Settings

    key = "k" * 40
    assert load_secret_key(Settings(data_dir=tmp_path, secret_key=key)) == key
    assert not (tmp_path / "secret_key").exists()
    shown = repr(Settings(secret_key=key, auth_token="t" * 10, ingest_tokens="j:" + "i" * 10))
    assert key not in shown and "t" * 10 not in shown and "i" * 10 not in shown


# -- the database it is given -----------------------------------------------------------------


@pytest.mark.parametrize("url, says", [
    ("notaurl", 'missing "=" after "notaurl"'),
    ("http://db.example/tasktree", 'missing "=" after "http://db.example/tasktree"'),
    ("postgresql://127.0.0.1/tasktree?colour=blue", 'invalid URI query parameter: "colour"'),
])
def test_serve_refuses_a_database_url_libpq_cannot_read_in_one_line(url, says):
    done = serve_exit({}, database=url)

    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "TASKTREE_DATABASE_URL is neither a PostgreSQL URL" in done.stderr
    assert says in done.stderr


def test_serve_says_at_once_that_the_database_is_unreachable_without_its_password():
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKTREE_")}
    url = "postgresql://tt:pa55word-9x@127.0.0.1:1/runs"
    started = time.monotonic()
    with subprocess.Popen(
        [sys.executable, "-m", "tasktree.exporter", "serve", "--database-url", url],
        env=clean, stderr=subprocess.PIPE, text=True,
    ) as serve:  # fmt: skip
        try:
            assert serve.stderr is not None
            said = next(line for line in serve.stderr if "not reachable" in line)
            waited = time.monotonic() - started
        finally:
            serve.kill()
    assert waited < 20  # the give-up, 30 s later, is not the first word
    assert "PostgreSQL at 127.0.0.1:1 (database runs, user tt) is not reachable yet" in said
    assert "trying again for up to 30 s" in said and "Connection refused" in said
    assert "pa55word" not in said


@pytest.mark.parametrize("user, database, says, what_to_do", [
    ("postgres", "tasktree_no_such_db_7c1", 'database "tasktree_no_such_db_7c1" does not exist',
     "create it (createdb, or CREATE DATABASE)"),
    ("tasktree_no_such_role_7c1", "postgres", 'role "tasktree_no_such_role_7c1" does not exist',
     "create the role, or use another user"),
], ids=["no-database", "no-role"])
def test_serve_stops_at_once_when_postgresql_refuses_for_good(database_url, user, database, says,
                                                               what_to_do):
    url = make_conninfo(database_url, dbname=database, user=user)
    started = time.monotonic()
    done = serve_exit({}, database=url)

    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert time.monotonic() - started < 20  # not the 30 s wait for a server that may come up
    [said] = [line for line in done.stderr.splitlines() if line.startswith("tasktree: ")]
    assert "refused: FATAL:" in said and says in said and said.endswith(what_to_do)
    assert "not reachable yet" not in done.stderr


# -- DNS rebinding: a door open without credentials answers this machine's names only ---------


def _with_host(method: str, url: str, host: str, **kw) -> requests.Response:
    return requests.request(method, url, headers={"Host": host, **kw.pop("headers", {})},
                            timeout=30, **kw)  # fmt: skip


def test_an_open_server_answers_requests_that_name_this_machine(start_tasktree, private_db):
    server = start_tasktree(database=private_db, env={"TASKTREE_ALLOWED_HOSTS": "proxy.example"})
    body = otlp_request(os.urandom(16), [(os.urandom(8), None, "job", False)], "named")
    headers = {"Content-Type": "application/x-protobuf"}
    for host in ("127.0.0.1", "localhost:8080", "LOCALHOST.", "[::1]:9", "tasktree.localhost",
                 "127.9.9.9:80", "proxy.example:443"):  # fmt: skip
        assert _with_host("GET", server.web + "/api/runs", host).status_code == 200, host
        answer = _with_host("POST", server.otlp_http + "/v1/traces", host, data=body,
                            headers=headers)  # fmt: skip
        assert answer.status_code == 200, (host, answer.text)


def test_an_open_server_refuses_a_web_page_that_rebound_its_name_to_loopback(
    start_tasktree, private_db
):
    """With no viewer and no ingest token (the out-of-the-box set-up), a page of
    attacker.example whose name now resolves to 127.0.0.1 would read the API and send spans as
    same-origin; its requests still name its own host."""
    server = start_tasktree(database=private_db)
    trace = os.urandom(16)
    body = otlp_request(trace, [(os.urandom(8), None, "job", False)], "rebound")
    headers = {"Content-Type": "application/x-protobuf"}
    for host in ("attacker.example", "attacker.example:4318", "localhost.attacker.example",
                 "10.1.2.3", "[2001:db8::1]:80"):  # fmt: skip
        for path in ("/api/runs", "/", "/metrics", f"/api/runs/{trace.hex()}"):
            answer = _with_host("GET", server.web + path, host)
            assert answer.status_code == 403, (host, path, answer.status_code)
            assert "TASKTREE_ALLOWED_HOSTS" in answer.text  # JSON, or a page for / saying it
        answer = _with_host("POST", server.otlp_http + "/v1/traces", host, data=body,
                            headers=headers)  # fmt: skip
        assert answer.status_code == 403, (host, answer.status_code)
        assert Status.FromString(answer.content).code == 7  # PERMISSION_DENIED, not INTERNAL
    # Refused exports are counted and named in the log, as those without a token are.
    refused = 'tasktree_ingest_spans_rejected_total{protocol="http",reason="unauthenticated"} 5.0'
    assert refused in requests.get(server.web + "/metrics", timeout=30).text
    assert "refused an OTLP/HTTP export from 127.0.0.1: Host 'attacker.example'" in (
        server.log_path.read_text()
    )
    # /healthz says nothing but "ok": a proxy's health check may name its own host.
    assert _with_host("GET", server.web + "/healthz", "attacker.example").status_code == 200
    requests.post(server.otlp_http + "/v1/traces", data=body, headers=headers, timeout=30)
    server.wait_folded()  # the same spans, sent by a program on this machine
    assert [r["trace_id"] for r in server.get("/api/runs")["runs"]] == [trace.hex()]


@pytest.mark.parametrize("names", ["http://myproxy.local", "myproxy.local/tasktree", "a b"])
def test_serve_refuses_allowed_hosts_that_are_not_host_names(private_db, names):
    done = subprocess.run(
        [sys.executable, "-m", "tasktree.exporter", "serve", "--database-url", private_db],
        env={**os.environ, "TASKTREE_ALLOWED_HOSTS": f"localhost,{names}"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "is not a host name" in done.stderr, done.stderr


def test_doors_that_need_a_credential_do_not_look_at_the_host(server):
    assert _with_host("GET", server.web + "/api/runs", "proxy.example").status_code == 401
    answer = _with_host("GET", server.web + "/api/runs", "proxy.example",
                        headers={"Authorization": f"Bearer {VIEWER}"})  # fmt: skip
    assert answer.status_code == 200
    body = otlp_request(os.urandom(16), [(os.urandom(8), None, "job", False)], "proxied")
    answer = _with_host("POST", server.otlp_http + "/v1/traces", "proxy.example", data=body,
                        headers={"Content-Type": "application/x-protobuf",
                                 "Authorization": f"Bearer {INGEST}"})  # fmt: skip
    assert answer.status_code == 200, answer.text


def test_ten_wrong_tokens_from_one_address_lock_it_out_of_every_token_door(server):
    viewer = sign_in(server, VIEWER)  # signed in before: not affected
    for n in range(10):
        wrong = requests.get(server.web + "/api/runs", timeout=10,
                             headers={"Authorization": f"Bearer guess-{n:04d}"})  # fmt: skip
        assert wrong.status_code == 401
    right = requests.get(server.web + "/api/runs", timeout=10,
                         headers={"Authorization": f"Bearer {OPERATOR}"})  # fmt: skip
    assert right.status_code == 429
    assert right.json()["error"]["code"] == "too_many_wrong_tokens"
    assert 1 <= int(right.headers["Retry-After"]) <= 60
    client = requests.Session()
    form = client.get(server.web + "/login", timeout=10)
    answer = client.post(server.web + "/login", allow_redirects=False, timeout=10, data={
        "csrf_token": CSRF_FIELD.search(form.text).group(1), "token": OPERATOR})
    assert answer.status_code == 429 and "Too many wrong tokens" in answer.text
    assert "fp" not in _session_of(answer) and "Retry-After" in answer.headers
    assert viewer.get(server.web + "/api/runs", timeout=10).status_code == 200
    assert "10 tokens that match nothing from 127.0.0.1" in server.log_path.read_text()
