"""Session fixtures: two real docker engines, a local registry with a busybox image (design.md §6).

Import the fixtures into a test module (``from .docker_fixtures import docker_lab  # noqa: F401``).
Missing tools are installed with apt-get when running as root; if that is impossible the tests
are skipped, and under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest

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


@pytest.fixture(scope="session")
def docker_lab():
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
