"""Real docker engines, a registry and a slow proxy for tests and ``bench/docker.py`` (design §6).

No pytest here (the fixtures are in ``docker_support.py``), so the bench can import it.

* ``Dockerd``: Debian's ``dockerd`` on a unix socket in its own temporary directory, started with
  exactly the flags of design.md §6 and stopped by PID.
* ``Registry``: Debian's ``docker-registry`` on 127.0.0.1:<free port> (config and storage in a
  temporary directory); dockerd treats loopback registries as insecure, so plain HTTP works.
* ``busybox_tar``: a root filesystem of Debian's static busybox (``/bin/busybox`` plus links), the
  input of ``docker import`` (there is no Docker Hub here).
* ``SlowProxy``: a unix-socket proxy in front of a docker socket that holds every answer back for
  ``delay`` seconds: a slow host, for timeouts and the bench.
* ``BreakingProxy``: one that cuts some answers short and closes the connection: a host that
  drops the connection mid-answer.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import docker

BUSYBOX = "/bin/busybox"  # Debian busybox-static
APPLETS = (
    "sh",
    "sleep",
    "echo",
    "cat",
    "env",
    "printenv",
    "ls",
    "true",
    "false",
    "wc",
    "head",
    "tail",
    "date",
    "hostname",
    "yes",
    "seq",
    "dd",
    "ps",
    "top",
)
PACKAGES = ("docker.io", "docker-registry", "busybox-static")


def missing_tools() -> list[str]:
    """Which of dockerd, docker-registry and a static busybox are not installed."""
    missing = [t for t in ("dockerd", "docker-registry") if shutil.which(t) is None]
    if not _is_static(BUSYBOX):
        missing.append("busybox-static")
    return missing


def _is_static(path: str) -> bool:
    if not os.path.exists(path):
        return False
    done = subprocess.run(["ldd", path], capture_output=True, text=True)
    out = done.stdout + done.stderr
    return "not a dynamic executable" in out or "statically linked" in out


def install_tools() -> None:
    """``apt-get update && apt-get install -y docker.io docker-registry busybox-static`` (root)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", *PACKAGES], check=True, env=env, capture_output=True
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _short_tempdir(prefix: str) -> Path:
    # Unix socket paths are limited to 107 bytes, and containerd nests its sockets under exec-root.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def _stop_pid(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Dockerd:
    """One docker engine on ``unix://<dir>/docker.sock``."""

    def __init__(self, name: str):
        self.name = name
        self.dir = _short_tempdir(f"tt-{name}-")
        self.socket = self.dir / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.log_path = self.dir / "dockerd.log"
        d = self.dir
        argv = [
            "dockerd",
            "--data-root",
            f"{d}/root",
            "--exec-root",
            f"{d}/exec",
            "--pidfile",
            f"{d}/pid",
            "-H",
            f"unix://{d}/docker.sock",
            "--storage-driver",
            "vfs",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--bridge=none",
        ]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.socket.exists():
                try:
                    with self.client() as client:
                        client.ping()
                    return
                except docker.errors.DockerException:
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"dockerd {self.name} did not start:\n{self.log_path.read_text()[-3000:]}"
        )

    def client(self, timeout: float = 60) -> docker.APIClient:
        return docker.APIClient(base_url=self.url, version="auto", timeout=timeout)

    def remove_all_containers(self) -> None:
        with self.client() as client:
            for c in client.containers(all=True):
                client.remove_container(c["Id"], force=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.remove_all_containers()
            except docker.errors.DockerException:
                pass
        _stop_pid(self.proc)
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Registry:
    """Debian's docker-registry (distribution 2.x) on 127.0.0.1:<free port>."""

    def __init__(self):
        self.dir = _short_tempdir("tt-registry-")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        config = self.dir / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {self.dir}/data\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.address}\n"
        )
        self._log = open(self.dir / "registry.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("docker-registry did not start")

    def stop(self) -> None:
        _stop_pid(self.proc)
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def busybox_tar() -> bytes:
    """A root filesystem with /bin/busybox (static) and links for the common applets, as a tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for folder in ("bin", "tmp", "etc"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    return buf.getvalue()


def publish_busybox(engine: Dockerd, registry: Registry, tags=("1", "2")) -> str:
    """``docker import`` the busybox tar on ``engine``, push it as ``<registry>/busybox:<tag>`` for
    each tag, then remove it from ``engine`` again (so a test's pull really pulls).  Returns the
    repository."""
    repo = f"{registry.address}/tasktree-test/busybox"
    with engine.client() as client:
        for tag in tags:
            # A different ENV per tag: different image ids, so "redeploy a new tag" is visible.
            client.import_image(
                src=io.BytesIO(busybox_tar()),
                repository=repo,
                tag=tag,
                changes=['CMD ["/bin/sh"]', f"ENV PATH=/bin TASKTREE_TEST_TAG={tag}"],
            )
            for event in client.push(repo, tag=tag, stream=True, decode=True):
                if "error" in event:
                    raise RuntimeError(f"push {repo}:{tag}: {event['error']}")
            client.remove_image(f"{repo}:{tag}", force=True)
    return repo


class SlowProxy:
    """Unix socket → unix socket proxy that holds each answer back ``delay`` seconds.

    The delay applies once per request: after the client has sent bytes, the first bytes coming
    back wait ``delay`` seconds; the rest of that answer (a stream included) flows at once.
    Stop with ``close()``.
    """

    def __init__(self, upstream: str | Path, delay: float, path: Path | None = None):
        self.upstream = str(upstream)
        self.delay = delay
        self.dir = None
        if path is None:
            self.dir = _short_tempdir("tt-slow-")
            path = self.dir / "docker.sock"
        self.path = Path(path)
        self.url = f"unix://{self.path}"
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.path))
        self._server.listen(128)
        self._closed = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="slow-proxy", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.upstream)
            except OSError:
                client.close()
                upstream.close()
                continue
            with self._lock:
                if self._closed.is_set():  # close() ran since accept(): it cannot see these
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            pending = threading.Event()
            threading.Thread(
                target=self._pipe, args=(client, upstream, pending, False), daemon=True
            ).start()
            threading.Thread(
                target=self._pipe, args=(upstream, client, pending, True), daemon=True
            ).start()

    def _pipe(
        self, src: socket.socket, dst: socket.socket, pending: threading.Event, answers: bool
    ) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data or not self._relay(data, dst, pending, answers):
                    break
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _relay(
        self, data: bytes, dst: socket.socket, pending: threading.Event, answers: bool
    ) -> bool:
        """Pass ``data`` (of a request, or of an answer) on to ``dst``; False: close instead."""
        if answers and pending.is_set():
            pending.clear()
            if self._closed.wait(self.delay):
                return False
        elif not answers:
            pending.set()
        dst.sendall(data)
        return True

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        with self._lock:
            for s in self._conns:
                s.close()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            self.path.unlink(missing_ok=True)


class BreakingProxy(SlowProxy):
    """A proxy (no delay) that passes the headers and the first ``keep`` bytes of the answer to
    each request whose request line holds ``path``, then closes the connection."""

    def __init__(self, upstream: str | Path, path: str, keep: int = 1):
        self.path_part = path.encode()
        self.keep = keep
        self._cutting: dict[threading.Event, bool] = {}  # per connection: cut this answer
        super().__init__(upstream, delay=0)

    def _relay(
        self, data: bytes, dst: socket.socket, pending: threading.Event, answers: bool
    ) -> bool:
        if not answers:  # a request: one at a time on a connection
            self._cutting[pending] = self.path_part in data.split(b"\r\n", 1)[0]
        elif self._cutting.get(pending) and (end := data.find(b"\r\n\r\n")) >= 0:
            dst.sendall(data[: end + 4 + self.keep])
            return False
        dst.sendall(data)
        return True
