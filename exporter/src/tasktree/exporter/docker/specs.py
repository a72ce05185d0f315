"""Validated requests for pull and deploy, from JSON bodies.  Each error is a ``BadRequest``
naming the field.

``DeploySpec.env`` holds the only secrets tasktree handles: it is read here and given to the
docker engine, and every other view of a spec (``public()``, the audit log, spans, logs) shows
the variable names only.
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterable
from dataclasses import dataclass, field

from docker.utils import parse_repository_tag

from tasktree.exporter.errors import BadRequest
from tasktree.exporter.settings import NO_DOCKER_HOSTS

# Docker's own rule ([a-zA-Z0-9][a-zA-Z0-9_.-]+: at least 2 characters), at most 128 here.
_CONTAINER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{1,127}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
# [ip:][host_port:]port[/proto]; the ip is a whole IPv4 address or a bracketed IPv6 one, so that
# in 8080:80 the 8080 is the host port (a looser ip took it: the port was published on a random
# host port on every interface).
_PORT = re.compile(
    r"^(?:(?P<ip>\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):)?(?:(?P<host>\d{1,5}):)?"
    r"(?P<container>\d{1,5})(?:/(?P<proto>tcp|udp|sctp))?$"
)
_RESTART = re.compile(r"^(no|always|unless-stopped|on-failure(?::\d{1,4})?)$")
PULL_POLICIES = ("missing", "always", "never")


def check_host_names(names: Iterable[str], configured: Container[str]) -> None:
    """A 400 naming the hosts (the first ten) that are no configured docker host."""
    unknown = [n for n in names if n not in configured]
    if unknown:
        raise BadRequest(f"unknown docker host(s): {', '.join(unknown[:10])}")


@dataclass(frozen=True)
class PullSpec:
    image: str
    hosts: list[str]

    def public(self) -> dict:
        return {"image": self.image, "hosts": self.hosts}


@dataclass(frozen=True)
class DeploySpec:
    image: str
    name: str
    hosts: list[str]
    command: list[str] | None = None
    env: dict[str, str] = field(
        default_factory=dict, repr=False
    )  # repr=False: never in a traceback
    ports: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    restart_policy: str = "no"
    labels: dict[str, str] = field(default_factory=dict)
    network_mode: str | None = None
    pull: str = "missing"
    stop_timeout: int = 10
    """Seconds the replaced container gets between SIGTERM and SIGKILL."""
    dry_run: bool = False

    def public(self) -> dict:
        """Everything but the environment's values (its names are kept: ``env_keys``)."""
        return {
            "image": self.image,
            "name": self.name,
            "hosts": self.hosts,
            "command": self.command,
            "env_keys": sorted(self.env),
            "ports": self.ports,
            "volumes": self.volumes,
            "restart_policy": self.restart_policy,
            "labels": self.labels,
            "network_mode": self.network_mode,
            "pull": self.pull,
            "stop_timeout": self.stop_timeout,
            "dry_run": self.dry_run,
        }

    def port_bindings(self) -> dict:
        bindings: dict[str, list] = {}
        for text in self.ports:
            m = _PORT.match(text)
            assert m is not None  # deploy_spec admits only ports of this form
            key = f"{m['container']}/{m['proto'] or 'tcp'}"
            host_port = int(m["host"]) if m["host"] else None
            ip = (m["ip"] or "").strip("[]")
            bindings.setdefault(key, []).append((ip, host_port) if ip else host_port)
        return bindings

    def restart(self) -> dict | None:
        if self.restart_policy == "no":
            return None
        name, _, count = self.restart_policy.partition(":")
        return {"Name": name, "MaximumRetryCount": int(count or 0)}


def split_image(image: str) -> tuple[str, str]:
    """``repo[:tag|@digest]`` → (repository, tag or digest); no tag means ``latest``."""
    if "@" in image:
        repo, digest = image.split("@", 1)
        return repo, digest
    repo, tag = parse_repository_tag(image)
    return repo, tag or "latest"


def resolve_hosts(body: dict, configured: dict) -> list[str]:
    """``hosts`` (names, or ``["*"]`` for all) and/or ``selector`` (labels that must all match)."""
    names = body.get("hosts")
    selector = body.get("selector")
    if names is None and selector is None:
        raise BadRequest("give 'hosts' (a list of host names, or [\"*\"]) or 'selector' (labels)")
    if names is not None and (
        not isinstance(names, list) or not all(isinstance(n, str) for n in names)
    ):
        raise BadRequest("'hosts' must be a list of host names")
    if not configured:
        raise BadRequest(NO_DOCKER_HOSTS)
    chosen = list(configured) if names in (None, ["*"]) else names
    check_host_names(chosen, configured)
    if selector is not None:
        if not isinstance(selector, dict):
            raise BadRequest("'selector' must be an object of labels")
        chosen = [
            n
            for n in chosen
            if all(configured[n].labels.get(k) == str(v) for k, v in selector.items())
        ]
    if not chosen:
        raise BadRequest("no docker host matches")
    return list(dict.fromkeys(chosen))


def pull_spec(body: dict, configured: dict) -> PullSpec:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return PullSpec(image=_image(body), hosts=resolve_hosts(body, configured))


def deploy_spec(body: dict, configured: dict) -> DeploySpec:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    name = body.get("name")
    if not isinstance(name, str) or not _CONTAINER_NAME.match(name):
        raise BadRequest(
            "'name' must be a container name of 2-128 characters: a letter or digit, then "
            "letters, digits, '_', '.', '-'"
        )
    restart = body.get("restart_policy") or "no"
    if not isinstance(restart, str) or not _RESTART.match(restart):
        raise BadRequest("'restart_policy' must be no, always, unless-stopped or on-failure[:N]")
    pull = body.get("pull") or "missing"
    if pull not in PULL_POLICIES:
        raise BadRequest(f"'pull' must be one of {', '.join(PULL_POLICIES)}")
    stop_timeout = body.get("stop_timeout", 10)
    if (
        not isinstance(stop_timeout, int)
        or isinstance(stop_timeout, bool)
        or not 0 <= stop_timeout <= 600
    ):
        raise BadRequest("'stop_timeout' must be 0-600 seconds")
    network = body.get("network_mode")
    if network is not None and not isinstance(network, str):
        raise BadRequest("'network_mode' must be a string (none, host, bridge or a network name)")
    return DeploySpec(
        image=_image(body),
        name=name,
        hosts=resolve_hosts(body, configured),
        command=_command(body),
        env=_env(body.get("env")),
        ports=_ports(body),
        volumes=_volumes(body),
        restart_policy=restart,
        labels=_labels(body.get("labels")),
        network_mode=network or None,
        pull=pull,
        stop_timeout=stop_timeout,
        dry_run=bool(body.get("dry_run")),
    )


def _image(body: dict) -> str:
    image = body.get("image") if isinstance(body, dict) else None
    if not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image):
        raise BadRequest("'image' must be an image reference such as registry:5000/app:1.2")
    return image.strip()


def _command(body: dict) -> list[str] | None:
    command = body.get("command")
    if command is None or command == "" or command == []:
        return None
    if isinstance(command, str):
        import shlex

        try:
            return shlex.split(command)
        except ValueError as exc:
            raise BadRequest(f"'command': {exc}") from None
    if isinstance(command, list) and all(isinstance(a, str) for a in command):
        return command
    raise BadRequest("'command' must be a string or a list of strings")


def _env(raw) -> dict[str, str]:
    if raw is None:
        return {}
    if isinstance(raw, list):
        pairs = {}
        for item in raw:
            if not isinstance(item, str) or "=" not in item:
                raise BadRequest("'env' as a list holds NAME=value strings")
            key, _, value = item.partition("=")
            pairs[key] = value
        raw = pairs
    if not isinstance(raw, dict):
        raise BadRequest("'env' must be an object of NAME: value")
    for key, value in raw.items():
        if not _ENV_NAME.match(key) or not isinstance(value, str | int | float | bool):
            raise BadRequest(
                f"'env': {key[:64]!r} must be a variable name with a string value"
            )  # no value
    if "TRACEPARENT" in raw:
        raise BadRequest("'env': TRACEPARENT is set by tasktree (the deploy's own task)")
    return {k: str(v) for k, v in raw.items()}


def _labels(raw) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str | int | float | bool) for k, v in raw.items()
    ):  # null, a list or an object would be stored as Python's repr of it ("None", "{'a': 1}")
        raise BadRequest("'labels' must be an object of name: value (text or a number)")
    return {k: str(v) for k, v in raw.items()}


def _ports(body: dict) -> list[str]:
    ports = _strings(body, "ports", _PORT, "[ip:][host_port:]port[/tcp|udp]")
    for text in ports:
        m = _PORT.match(text)
        assert m is not None  # _strings checked the form
        numbers = [int(n) for n in (m["host"], m["container"]) if n is not None]
        if not all(1 <= n <= 65535 for n in numbers):
            raise BadRequest(f"'ports': {text!r} has a port outside 1-65535")
    return ports


def _strings(body: dict, key: str, pattern: re.Pattern, shape: str) -> list[str]:
    raw = body.get(key) or []
    if not isinstance(raw, list) or not all(isinstance(s, str) and pattern.match(s) for s in raw):
        raise BadRequest(f"'{key}' must be a list of {shape}")
    return raw


def _volumes(body: dict) -> list[str]:
    raw = body.get("volumes") or []
    ok = isinstance(raw, list) and all(
        isinstance(v, str)
        and 2 <= len(v.split(":")) <= 3
        and v.split(":")[1].startswith("/")
        and (len(v.split(":")) == 2 or v.split(":")[2] in ("ro", "rw", "z", "Z"))
        for v in raw
    )
    if not ok:
        raise BadRequest("'volumes' must be a list of source:/container/path[:ro|rw]")
    return raw
