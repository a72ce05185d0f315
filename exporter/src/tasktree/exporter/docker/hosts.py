"""Docker host configuration: a YAML file and/or ``TASKTREE_DOCKER_HOSTS``; one API client per
host.

File (``TASKTREE_DOCKER_HOSTS_FILE``)::

    hosts:
      - name: build-1
        url: unix:///var/run/docker.sock
        labels: {role: build}
      - name: gpu-2
        url: tcp://gpu-2.example:2376          # tcp only with TLS client certificates
        tls: {ca: /etc/tasktree/ca.pem, cert: /etc/tasktree/cert.pem, key: /etc/tasktree/key.pem}
        timeout: 5                             # seconds, overrides TASKTREE_DOCKER_TIMEOUT
      - name: edge
        url: ssh://deploy@edge.example         # uses the ssh binary and its config

Environment (``TASKTREE_DOCKER_HOSTS``): ``name=url`` pairs separated by commas or spaces, or
the same YAML list as in the file (``[{name: a, url: "unix:///..."}]``).  Both sources are
merged; a name given twice is an error.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
import yaml
from docker.transport.unixconn import UnixHTTPAdapter, UnixHTTPConnection, UnixHTTPConnectionPool

from tasktree.exporter.settings import Settings, SettingsError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_MIN_API = "1.24"
_POOL_SIZE = 16  # connections each host's API client keeps open


@dataclass(frozen=True)
class TLSFiles:
    ca: str
    cert: str
    key: str


@dataclass(frozen=True)
class HostConfig:
    """One managed docker engine.  ``timeout`` is None to use ``TASKTREE_DOCKER_TIMEOUT``."""

    name: str
    url: str
    labels: dict[str, str] = field(default_factory=dict)
    tls: TLSFiles | None = None
    timeout: float | None = None

    def public(self) -> dict:
        """What the API shows: the URL without credentials, never key paths' contents."""
        return {
            "name": self.name,
            "url": _strip_userinfo(self.url),
            "labels": dict(self.labels),
            "tls": self.tls is not None,
        }


def load_hosts(settings: Settings) -> list[HostConfig]:
    """All configured hosts, file first, then environment.  ``SettingsError`` names the source."""
    hosts: list[HostConfig] = []
    if settings.docker_hosts_file:
        hosts += _from_file(Path(settings.docker_hosts_file))
    if settings.docker_hosts:
        hosts += _from_env(settings.docker_hosts)
    seen = set()
    for host in hosts:
        if host.name in seen:
            raise SettingsError(f"docker host {host.name!r} is configured twice")
        seen.add(host.name)
    return hosts


def _from_file(path: Path) -> list[HostConfig]:
    source = f"TASKTREE_DOCKER_HOSTS_FILE ({path})"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"{source}: {exc}") from None
    items = data.get("hosts", []) if isinstance(data, dict) else data
    return _from_items(items, source, base=path.parent)


def _from_env(raw: str) -> list[HostConfig]:
    source = "TASKTREE_DOCKER_HOSTS"
    if raw.lstrip().startswith(("[", "{", "-")):
        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise SettingsError(f"{source}: {exc}") from None
        return _from_items(
            data.get("hosts", []) if isinstance(data, dict) else data, source, Path.cwd()
        )
    items = []
    for pair in re.split(r"[\s,]+", raw.strip()):
        name, sep, url = pair.partition("=")
        if not sep:
            raise SettingsError(f"{source}: {pair!r} is not name=url")
        items.append({"name": name, "url": url})
    return _from_items(items, source, Path.cwd())


def _from_items(items, source: str, base: Path) -> list[HostConfig]:
    if not isinstance(items, list):
        raise SettingsError(f"{source}: expected a list of hosts")
    return [_host(item, f"{source} host #{i + 1}", base) for i, item in enumerate(items)]


def _host(item, where: str, base: Path) -> HostConfig:
    if (
        not isinstance(item, dict)
        or not isinstance(item.get("name"), str)
        or not isinstance(item.get("url"), str)
    ):
        raise SettingsError(f"{where}: needs 'name' and 'url'")
    name, url = item["name"], item["url"]
    if not _NAME.match(name):
        raise SettingsError(f"{where}: name {name!r} must be letters, digits, '.', '_' or '-'")
    labels = item.get("labels") or {}
    if not isinstance(labels, dict):
        raise SettingsError(f"{where}: labels must be a mapping")
    tls = _tls(item.get("tls"), where, base)
    _check_url(url, tls, where)
    timeout = item.get("timeout")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise SettingsError(f"{where}: timeout must be a positive number of seconds")
    return HostConfig(
        name,
        url,
        {str(k): str(v) for k, v in labels.items()},
        tls,
        float(timeout) if timeout is not None else None,
    )


def _tls(raw, where: str, base: Path) -> TLSFiles | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not all(
        isinstance(raw.get(k), str) for k in ("ca", "cert", "key")
    ):
        raise SettingsError(f"{where}: tls needs 'ca', 'cert' and 'key' file paths")
    return TLSFiles(*(str((base / raw[k]).expanduser()) for k in ("ca", "cert", "key")))


def _check_url(url: str, tls: TLSFiles | None, where: str) -> None:
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme in ("tcp", "https"):
        if tls is None:
            raise SettingsError(
                f"{where}: {url} is TCP; tasktree reaches docker over TCP only with TLS client "
                "certificates (add tls: {ca, cert, key}) — or use unix:// or ssh://"
            )
    elif scheme == "http":
        raise SettingsError(
            f"{where}: plain http:// to a docker engine is not allowed; use tcp:// with tls"
        )
    elif scheme not in ("unix", "ssh", "npipe"):
        raise SettingsError(
            f"{where}: url must start with unix://, ssh:// or tcp:// (with tls), got {url!r}"
        )


def _strip_userinfo(url: str) -> str:
    return (
        re.sub(r"^(\w+://)[^@/]*@", r"\1", url) if url.startswith(("tcp://", "https://")) else url
    )


def _unix_socket_path(url: str) -> str | None:
    """The socket path of a ``unix://`` host's URL; None for the other schemes."""
    return url.removeprefix("unix://") if url.startswith("unix://") else None


class _UnixConnection(UnixHTTPConnection):
    """docker-py's unix socket connection, closing the socket of a connect that fails.  docker-py
    leaves it to the garbage collector (a ResourceWarning each time a call finds a host gone) and
    offers no hook for the connection it makes, so its adapter, pool and connection are
    subclassed, and the adapter mounted on the client (``requests.Session.mount``)."""

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.unix_socket)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _UnixPool(UnixHTTPConnectionPool):
    def _new_conn(self) -> _UnixConnection:
        return _UnixConnection(self.base_url, self.socket_path, self.timeout)


class _UnixAdapter(UnixHTTPAdapter):
    def get_connection(self, url, proxies=None) -> _UnixPool:
        with self.pools.lock:
            pool = self.pools.get(url)
            if pool is None:
                pool = self.pools[url] = _UnixPool(
                    url, self.socket_path, self.timeout, maxsize=self.max_pool_size
                )
        return pool


class HostUnreachable(ConnectionError):
    """The host's engine cannot be connected to; ``str()`` says why in a few words."""


class HostClients:
    """One ``docker.APIClient`` per host, negotiated on first use and then reused (thread-safe)."""

    def __init__(self, hosts: list[HostConfig], default_timeout: float, action_timeout: float):
        self.hosts = {h.name: h for h in hosts}
        self._default_timeout = default_timeout
        self._action_timeout = action_timeout
        self._clients: dict[tuple[str, str], docker.APIClient] = {}
        self._info: dict[str, dict] = {}
        self._info_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def timeout(self, name: str) -> float:
        host = self.hosts[name]
        return host.timeout if host.timeout is not None else self._default_timeout

    def client(self, name: str, *, action: bool = False) -> docker.APIClient:
        """The host's client (``action=True``: with the long action timeout).  Blocks on the first
        call for one round trip (``/version``) to agree on the API version; raises
        ``HostUnreachable`` or ``docker.errors.DockerException``."""
        self._check_socket(name)
        kind = "action" if action else "list"
        with self._lock:
            client = self._clients.get((name, kind))
        if client is not None:
            return client
        timeout = self._action_timeout if action else self.timeout(name)
        api_version = self._negotiate(name, timeout)
        client = self._make(name, api_version, timeout)
        with self._lock:
            return self._clients.setdefault((name, kind), client)

    def _check_socket(self, name: str) -> None:
        """For a unix socket, connect once and close, on every ``client()`` call: an engine that
        is not there (or no longer) fails here as ``HostUnreachable`` with the reason."""
        path = _unix_socket_path(self.hosts[name].url)
        if path is None:
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(self.timeout(name))
            probe.connect(path)
        except OSError as exc:
            raise HostUnreachable(f"cannot connect: {exc.strerror or exc}") from None
        finally:
            probe.close()

    def version_info(self, name: str) -> dict | None:
        """The last ``/version`` answer of this host (engine version, API version, OS), if any."""
        return self._info.get(name)

    def version_age(self, name: str) -> float:
        """Seconds since the host's version was last asked (infinite: never, or down since)."""
        return time.monotonic() - self._info_at.get(name, float("-inf"))

    def remember_version(self, name: str, info: dict) -> None:
        self._info[name] = info
        self._info_at[name] = time.monotonic()

    def version_is_stale(self, name: str) -> None:
        self._info_at.pop(name, None)

    def _negotiate(self, name: str, timeout: float) -> str:
        """The host's API version, asked once with the timeout of what asks first: an action on
        a slow host (an SSH handshake) waits as long as the action may, not as a listing."""
        with self._lock:
            known = self._info.get(name)
        if known:
            return known["ApiVersion"]
        probe = self._make(name, _MIN_API, timeout)
        try:
            info = probe.version(api_version=False)
        finally:
            probe.close()
        self.remember_version(name, info)
        return info["ApiVersion"]

    def _make(self, name: str, api_version: str, timeout: float) -> docker.APIClient:
        host = self.hosts[name]
        tls = None
        if host.tls is not None:
            tls = docker.tls.TLSConfig(
                client_cert=(host.tls.cert, host.tls.key), ca_cert=host.tls.ca, verify=True
            )
        url = host.url  # docker-py turns tcp:// into https:// when tls is given
        client = docker.APIClient(
            base_url=url,
            version=api_version,
            timeout=timeout,
            tls=tls,
            use_ssh_client=url.startswith("ssh://"),
            max_pool_size=_POOL_SIZE,
        )
        path = _unix_socket_path(url)
        if path is not None:  # the same adapter, its failed connects closed
            adapter = _UnixAdapter(f"http+unix://{path}", timeout, max_pool_size=_POOL_SIZE)
            client.mount("http+docker://", adapter)
        return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
