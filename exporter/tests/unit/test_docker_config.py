"""Docker host configuration, tokens and request validation (no engine needed)."""

from __future__ import annotations

import pytest
from flask import Flask

from tasktree.exporter.auth import OPERATOR, VIEWER, TokenTable, require
from tasktree.exporter.docker.hosts import load_hosts
from tasktree.exporter.docker.specs import deploy_spec, pull_spec, resolve_hosts
from tasktree.exporter.errors import BadRequest, Forbidden, Unauthorized
from tasktree.exporter.services import Services, install_services
from tasktree.exporter.settings import Settings, SettingsError


def settings(**values) -> Settings:
    return Settings.from_env({}, **values)


def test_hosts_come_from_the_yaml_file_and_the_environment_merged(tmp_path):
    path = tmp_path / "hosts.yaml"
    path.write_text(
        "hosts:\n  - name: build-1\n    url: unix:///var/run/docker.sock\n"
        "    labels: {role: build}\n"
        "  - name: gpu\n    url: tcp://gpu.example:2376\n    timeout: 5\n"
        "    tls: {ca: certs/ca.pem, cert: certs/cert.pem, key: certs/key.pem}\n"
    )

    hosts = load_hosts(
        settings(docker_hosts_file=path, docker_hosts="edge=ssh://deploy@edge.example")
    )

    assert [(h.name, h.url, h.labels, h.timeout) for h in hosts] == [
        ("build-1", "unix:///var/run/docker.sock", {"role": "build"}, None),
        ("gpu", "tcp://gpu.example:2376", {}, 5.0),
        ("edge", "ssh://deploy@edge.example", {}, None),
    ]
    assert hosts[1].tls.ca == str(tmp_path / "certs/ca.pem")
    assert hosts[2].public()["url"] == "ssh://deploy@edge.example"


def test_hosts_in_the_environment_may_be_the_yaml_list_itself():
    hosts = load_hosts(settings(docker_hosts='[{name: a, url: "unix:///a.sock", labels: {x: 1}}]'))
    assert [(h.name, h.labels) for h in hosts] == [("a", {"x": "1"})]


@pytest.mark.parametrize(
    "value, words",
    [
        ("a=tcp://10.0.0.1:2375", "only with TLS"),
        ("a=http://10.0.0.1:2375", "plain http"),
        ("a=ftp://x", "must start with"),
        ("a b", "not name=url"),
        ("a=unix:///x a=unix:///y", "configured twice"),
        ("bad/name=unix:///x", "letters, digits"),
    ],
)
def test_bad_host_configuration_stops_start_up_naming_the_problem(value, words):
    with pytest.raises(SettingsError, match=words):
        load_hosts(settings(docker_hosts=value))


def test_tokens_are_named_and_an_operator_token_outranks_a_viewer_token():
    table = TokenTable(
        settings(
            operator_tokens="olga:op-secret-1", viewer_tokens="victor:view-secret, bare-token-x"
        )
    )

    assert (
        table.lookup("op-secret-1").name == "olga" and table.lookup("op-secret-1").role == OPERATOR
    )
    assert table.lookup("view-secret").role == VIEWER
    assert table.lookup("bare-token-x").name.startswith("token-")
    assert table.lookup("nope") is None and table.has_operators


def test_short_tokens_are_refused():
    with pytest.raises(SettingsError, match="8 or more"):
        TokenTable(settings(operator_tokens="olga:short"))


@pytest.mark.parametrize(
    "configured, host, header, role, outcome",
    [
        ({}, "127.0.0.1", None, VIEWER, "ok"),  # loopback, no viewer tokens
        ({"viewer_tokens": "v:view-token-1"}, "127.0.0.1", None, VIEWER, Unauthorized),
        ({"auth_token": "auth-token-123"}, "0.0.0.0", None, VIEWER, Unauthorized),  # not loopback
        ({"auth_token": "auth-token-123"}, "0.0.0.0", "auth-token-123", VIEWER, "ok"),
        ({"viewer_tokens": "v:view-token-1"}, "127.0.0.1", "view-token-1", OPERATOR, Forbidden),
        ({}, "127.0.0.1", None, OPERATOR, Unauthorized),  # anonymous never acts
        ({"operator_tokens": "o:oper-token-1"}, "127.0.0.1", "oper-token-1", OPERATOR, "ok"),
        (
            {},
            "127.0.0.1",
            "unknown-token",
            VIEWER,
            Unauthorized,
        ),  # a wrong token is never anonymous
    ],
)
def test_who_may_read_and_who_may_act(configured, host, header, role, outcome):
    app = Flask(__name__)
    install_services(app, Services(settings(host=host, **configured), pool=None))
    view = require(role)(lambda: "ok")
    headers = {"Authorization": f"Bearer {header}"} if header else {}
    with app.test_request_context(headers=headers):
        if outcome == "ok":
            assert view() == "ok"
        else:
            with pytest.raises(outcome):
                view()


HOSTS = {
    name: type("H", (), {"labels": labels})()
    for name, labels in {
        "a": {"role": "build"},
        "b": {"role": "gpu"},
        "c": {"role": "build"},
    }.items()
}


def test_deploy_requests_are_validated_and_their_environment_values_never_shown():
    spec = deploy_spec(
        {
            "image": "reg:5000/app:1",
            "name": "app",
            "selector": {"role": "build"},
            "env": ["TOKEN=abc=def", "N=1"],
            "ports": ["127.0.0.1:8080:80", "53/udp"],
            "command": "sh -c 'echo hi'",
            "restart_policy": "on-failure:3",
        },
        HOSTS,
    )

    assert spec.hosts == ["a", "c"] and spec.env == {"TOKEN": "abc=def", "N": "1"}
    assert spec.command == ["sh", "-c", "echo hi"]
    assert spec.port_bindings() == {"80/tcp": [("127.0.0.1", 8080)], "53/udp": [None]}
    assert spec.restart() == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert "abc=def" not in repr(spec) + repr(spec.public()) and spec.public()["env_keys"] == [
        "N",
        "TOKEN",
    ]


@pytest.mark.parametrize(
    "body, words",
    [
        ({"image": "x", "name": "bad name", "hosts": ["a"]}, "'name'"),
        # Docker refuses a one-character name (at the rename, once the new container runs).
        ({"image": "x", "name": "q", "hosts": ["a"], "dry_run": True}, "2-128 characters"),
        ({"image": "x y", "name": "app", "hosts": ["a"]}, "'image'"),
        ({"image": "x", "name": "app", "hosts": ["zzz"]}, "unknown docker host"),
        ({"image": "x", "name": "app"}, "give 'hosts'"),
        (
            {"image": "x", "name": "app", "hosts": ["a"], "env": {"TRACEPARENT": "1"}},
            "set by tasktree",
        ),
        (
            {"image": "x", "name": "app", "hosts": ["a"], "env": {"bad name": "sekrit-value"}},
            "variable name",
        ),
        (
            {"image": "x", "name": "app", "hosts": ["a"], "restart_policy": "sometimes"},
            "restart_policy",
        ),
        ({"image": "x", "name": "app", "hosts": ["a"], "volumes": ["relative"]}, "volumes"),
        ({"image": "x", "name": "app", "selector": {"role": "none"}}, "no docker host matches"),
        ({"image": "x", "name": "app", "hosts": ["a"], "labels": {"team": None}}, "'labels'"),
        ({"image": "x", "name": "app", "hosts": ["a"], "labels": {"cfg": {"a": 1}}}, "'labels'"),
    ],
)
def test_bad_deploy_requests_are_refused_naming_the_field(body, words):
    with pytest.raises(BadRequest, match=words) as caught:
        deploy_spec(body, HOSTS)
    assert "sekrit-value" not in caught.value.message


def test_pull_to_all_hosts():
    assert pull_spec({"image": "reg/app", "hosts": ["*"]}, HOSTS).hosts == ["a", "b", "c"]


def test_an_action_on_a_server_without_docker_hosts_says_how_to_configure_them():
    for body in ({"hosts": ["*"]}, {"selector": {"role": "build"}}):
        with pytest.raises(BadRequest, match="no docker host is configured") as caught:
            resolve_hosts(body, {})
        assert "TASKTREE_DOCKER_HOSTS_FILE" in caught.value.message


@pytest.mark.parametrize("port, binding", [
    ("8080:80", {"80/tcp": [8080]}),  # the README's example: host port 8080, on every interface
    ("127.0.0.1:8080:80", {"80/tcp": [("127.0.0.1", 8080)]}),
    ("[::1]:9000:9000/udp", {"9000/udp": [("::1", 9000)]}),
    ("80", {"80/tcp": [None]}),
])  # fmt: skip
def test_published_ports_bind_the_host_port_asked_for(port, binding):
    spec = deploy_spec({"image": "x", "name": "app", "hosts": ["a"], "ports": [port]}, HOSTS)
    assert spec.port_bindings() == binding


@pytest.mark.parametrize("port", ["99999:80", "8080:0", "1.2.3:8080:80", "host:80"])
def test_a_port_out_of_range_or_a_malformed_address_is_refused(port):
    with pytest.raises(BadRequest, match="ports"):
        deploy_spec({"image": "x", "name": "app", "hosts": ["a"], "ports": [port]}, HOSTS)
