"""The docker tests' lab and helpers (design.md §6): two real docker engines, a local registry with
a busybox image, the Flask app on them, and a real ``tasktree serve`` on them.

The fixtures (``docker_lab``, ``lab``, ``docker_pool``, ``make_app``) reach the tests through this
folder's conftest.py; the helpers (``call``, ``deploy_body``, ``serve_docker``, the tokens) are
imported.  Missing tools are installed with apt-get when running as root; if that is impossible
the tests are skipped, and under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import pytest

from tasktree.exporter.app import create_app
from tasktree.exporter.docker import DockerService
from tasktree.exporter.settings import Settings
from tasktree.exporter.store.pool import open_pool

from . import docker_lab as lab


@dataclass
class DockerLab:
    engines: dict[str, lab.Dockerd]
    registry: lab.Registry
    repository: str  # <registry>/tasktree-test/busybox, tags "1" and "2"
    extras: list = field(default_factory=list)

    def image(self, tag: str = "1") -> str:
        return f"{self.repository}:{tag}"

    def hosts_yaml(self, extra: dict[str, str] | None = None, timeout: float | None = None) -> str:
        """A hosts file for these engines (plus ``extra`` name → url)."""
        lines = ["hosts:"]
        urls = {name: engine.url for name, engine in self.engines.items()} | (extra or {})
        for name, url in urls.items():
            lines += [
                f"  - name: {name}",
                f"    url: {url}",
                f"    labels: {{lab: 'yes', role: {name}}}",
            ]
            if timeout is not None:
                lines.append(f"    timeout: {timeout}")
        return "\n".join(lines) + "\n"

    def client(self, name: str):
        return self.engines[name].client()

    def reset(self) -> None:
        """Remove every container and image from both engines (they exist only for these tests)."""
        for engine in self.engines.values():
            engine.remove_all_containers()
            with engine.client() as client:
                for image in client.images():
                    client.remove_image(image["Id"], force=True)


def _need_tools() -> None:
    missing = lab.missing_tools()
    if not missing:
        return
    if os.geteuid() == 0:
        try:
            lab.install_tools()
        except Exception as exc:  # noqa: BLE001
            missing_after = lab.missing_tools()
            if missing_after:
                _unavailable(f"installing {' '.join(lab.PACKAGES)} failed: {exc}")
        missing = lab.missing_tools()
    if missing:
        _unavailable(f"missing {', '.join(missing)} (apt-get install {' '.join(lab.PACKAGES)})")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"real docker engines are required under CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session", name="docker_lab")
def docker_lab_session():
    """Engines ``alpha`` and ``beta``, a registry with ``busybox:1`` and ``:2``; stopped by PID."""
    _need_tools()
    if os.geteuid() != 0:
        _unavailable("dockerd needs root")
    started: list = []
    try:
        registry = lab.Registry()
        started.append(registry)
        engines = {}
        for name in ("alpha", "beta"):
            engines[name] = lab.Dockerd(name)
            started.append(engines[name])
        repository = lab.publish_busybox(engines["alpha"], registry)
        yield DockerLab(engines, registry, repository)
    finally:
        for thing in reversed(started):
            thing.stop()


# -- the app on the lab, in-process --------------------------------------------------------------

OPERATOR = "ops-token-7f1c2a9e"
VIEWER = "viewer-token-55d0b3c1"
SECRET = "s3cr3t-Zq81-never-shown"
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; echo started; while true; do sleep 1; done"]


@pytest.fixture(name="lab")
def emptied_lab(docker_lab):
    """The session's engines and registry, emptied of containers and test images."""
    docker_lab.reset()
    return docker_lab


@pytest.fixture(scope="module")
def docker_pool(database_url):
    """The pool of the apps ``make_app`` makes (their audit log is in the session database)."""
    pool = open_pool(database_url, max_size=4)
    pool.wait(10)
    yield pool
    pool.close()


@pytest.fixture
def make_app(docker_pool, lab, tmp_path):
    """Factory: ``make_app(extra_hosts=None, **settings)`` → (Flask test client, DockerService)."""
    services = []

    def make(extra_hosts: dict | None = None, timeout: float | None = None, **overrides):
        hosts_file = tmp_path / f"hosts-{len(services)}.yaml"
        hosts_file.write_text(lab.hosts_yaml(extra_hosts, timeout))
        values = {
            "docker_hosts_file": hosts_file,
            "operator_tokens": f"olga:{OPERATOR}",
            "viewer_tokens": f"victor:{VIEWER}",
            "docker_cache_ttl": 5.0,
            **overrides,
        }
        settings = Settings.from_env({}, **values)
        service = DockerService(settings, docker_pool)
        services.append(service)
        app = create_app(settings, docker_pool, docker=service)
        return app.test_client(), service

    yield make
    for service in services:
        service.close()


def call(
    client,
    method: str,
    path: str,
    token: str | None = OPERATOR,
    body=None,
    expect: int | None = 200,
):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = client.open(path, method=method, headers=headers, json=body)
    if expect is not None:
        assert response.status_code == expect, (
            f"{method} {path}: {response.status_code} {response.data[:800]!r}"
        )
    return response.get_json() if response.is_json else response.data


def deploy_body(lab, tag="1", **extra) -> dict:
    return {
        "image": lab.image(tag),
        "name": "web",
        "hosts": ["alpha", "beta"],
        "command": SLEEPER,
        "network_mode": "none",
        "stop_timeout": 5,
        **extra,
    }


def containers_named(lab, host: str, name: str) -> list[dict]:
    with lab.client(host) as client:
        return [c for c in client.containers(all=True) if f"/{name}" in c["Names"]]


# -- a real `tasktree serve` on the lab -----------------------------------------------------------


def serve_docker(start_tasktree, lab, tmp_path):
    """A real ``tasktree serve`` on the lab's engines, with the operator and viewer tokens."""
    hosts_file = tmp_path / "hosts.yaml"
    hosts_file.write_text(lab.hosts_yaml())
    return start_tasktree(
        env={
            "TASKTREE_DOCKER_HOSTS_FILE": str(hosts_file),
            "TASKTREE_OPERATOR_TOKENS": f"olga:{OPERATOR}",
            "TASKTREE_VIEWER_TOKENS": f"victor:{VIEWER}",
        }
    )


def call_server(server, method: str, path: str, token: str | None, body=None, expect: int = 200):
    """A request to a real ``tasktree serve`` (``serve_docker``); the body of its answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        server.web + path,
        data=data,
        method=method,
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {token}"} if token else {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=90) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    assert status == expect, f"{method} {path}: {status} {raw[:600]!r}"
    return raw
