"""Listing many slow docker hosts costs about one host's latency, cold and cached (issue 6).

One real ``dockerd`` (design.md §6 flags) holds a few containers; N slow proxies in front of it
each hold every answer back DELAY seconds, so they are N hosts that each answer DELAY late.  The
same run measures one such host alone, then N of them, through ``DockerService.snapshot()``:

* cold:    a fresh service (first contact: API version negotiation, then the listing calls)
* refresh: ``refresh=True`` on a warm service (the listing calls only, no cache)
* cached:  within the TTL

and prints each figure (median of REPEAT) and its ratio to the single host's.  Needs root and
Debian's docker.io and busybox-static.  Run by hand:

    .venv/bin/python bench/docker.py [--hosts 20] [--delay 0.2] [--repeat 5]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

# This file is named docker.py: its folder must not shadow the docker package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent / "exporter" / "tests" / "integration"))

import docker_lab as lab  # noqa: E402

from tasktree.exporter.docker import DockerService  # noqa: E402
from tasktree.exporter.settings import Settings  # noqa: E402


def measure(urls: list[str], repeat: int) -> dict[str, float]:
    hosts = " ".join(f"h{i:02d}={url}" for i, url in enumerate(urls))
    settings = Settings.from_env({}, docker_hosts=hosts, docker_timeout=5.0, docker_cache_ttl=60.0)
    figures: dict[str, list[float]] = {"cold": [], "refresh": [], "cached": []}
    for _ in range(repeat):
        service = DockerService(settings, None)
        try:
            for kind, refresh in (("cold", False), ("refresh", True), ("cached", False)):
                started = time.perf_counter()
                snapshot = service.snapshot(refresh=refresh)
                figures[kind].append(time.perf_counter() - started)
                down = [h["name"] for h in snapshot if not h["up"]]
                assert not down, f"hosts down during the bench: {down}"
        finally:
            service.close()
    return {kind: statistics.median(values) for kind, values in figures.items()}


class ProxyProcess:
    """``count`` slow proxies in front of ``upstream``, in a child process (stopped by PID)."""

    def __init__(self, upstream: Path, delay: float, count: int):
        self._stop = multiprocessing.Event()
        ready = multiprocessing.Queue()
        self.process = multiprocessing.Process(
            target=_serve_proxies, args=(str(upstream), delay, count, ready, self._stop)
        )
        self.process.start()
        self.urls = ready.get(timeout=30)

    def close(self) -> None:
        self._stop.set()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()


def _serve_proxies(upstream: str, delay: float, count: int, ready, stop) -> None:
    proxies = [lab.SlowProxy(upstream, delay) for _ in range(count)]
    ready.put([p.url for p in proxies])
    stop.wait()
    for proxy in proxies:
        proxy.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--containers", type=int, default=5)
    args = parser.parse_args()
    if lab.missing_tools():
        sys.exit(
            f"missing {', '.join(lab.missing_tools())}: apt-get install {' '.join(lab.PACKAGES)}"
        )

    engine = lab.Dockerd("bench")
    proxies = None
    try:
        with engine.client() as client:
            client.import_image(
                src=io.BytesIO(lab.busybox_tar()), repository="bench/busybox", tag="1"
            )
            for i in range(args.containers):
                client.create_container("bench/busybox:1", command=["true"], name=f"bench-{i}")
        # The proxies run in another process, as remote hosts would: not on this one's GIL.
        proxies = ProxyProcess(engine.socket, args.delay, args.hosts)
        one = measure(proxies.urls[:1], args.repeat)
        many = measure(proxies.urls, args.repeat)
    finally:
        if proxies:
            proxies.close()
        engine.stop()

    print(
        f"each host answers {args.delay * 1000:.0f} ms late; {args.containers} containers per "
        f"host; median of {args.repeat}"
    )
    print(f"{'':10} {'1 host':>10} {f'{args.hosts} hosts':>10} {'ratio':>7}")
    for kind in ("cold", "refresh", "cached"):
        ratio = many[kind] / one[kind] if one[kind] > 0 else float("nan")
        print(f"{kind:10} {one[kind] * 1000:8.2f}ms {many[kind] * 1000:8.2f}ms {ratio:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
