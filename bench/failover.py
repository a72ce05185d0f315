"""PostgreSQL failover (issue 17): how long ingest is down, and what a synchronous standby costs.

    .venv/bin/python bench/failover.py [--repeat 3] [--requests 200]

On two PostgreSQL clusters made here (a primary and a streaming standby, Debian's binaries, fsync
on, as tests/e2e/replication_support.py makes them), with a real ``tasktree serve`` given both in
one multi-host URL:

1. **Ingest rate**, acknowledged spans per second (requests of 512 spans from 4 clients, each
   answered 200 once committed), with the standby synchronous, asynchronous, and with no standby
   at all, in rounds on the same servers; the ratio of each to "no standby" is the figure to
   read (the machine is shared: seconds move, ratios less).
2. **Failover time**: a client sends a small request every 0.1 s (not waiting for Retry-After);
   the primary is SIGKILLed (every process of it) and the standby promoted at once, as a
   failover manager that has decided would; printed are the seconds from the primary's death to
   the first 200 after the promotion, and from the promotion to it.  Reference in the same run:
   how long ``pg_ctl promote`` itself took.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "e2e")]

from ingest import encode, flat_run  # noqa: E402  (bench/ingest.py: the script's folder)
from replication_support import Replication  # noqa: E402
from scratch import start_server  # noqa: E402

CLIENTS = 4


def _post(port: int, body: bytes, timeout: float = 30) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        conn.close()


def ingest_rate(port: int, requests: int) -> float:
    """Acknowledged spans per second: ``requests`` requests of 512 spans from ``CLIENTS``."""
    bodies = encode(flat_run(requests * 512))
    queue, lock = list(bodies), threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if not queue:
                    return
                body = queue.pop()
            while _post(port, body, timeout=120) != 200:
                time.sleep(0.1)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(bodies) * 512 / (time.perf_counter() - started)


def rates(repeat: int, requests: int) -> None:
    pair = Replication(synchronous=True, fsync=True)
    proc, urls = start_server(pair.multi_host_url())
    port = int(urls["otlp_http"].rsplit(":", 1)[1].split("/")[0])
    found: dict[str, list[float]] = {"synchronous": [], "asynchronous": [], "no standby": []}
    try:
        for _ in range(repeat):
            pair.primary.set_synchronous(True)
            found["synchronous"].append(ingest_rate(port, requests))
            pair.primary.set_synchronous(False)
            found["asynchronous"].append(ingest_rate(port, requests))
            pair.standby.stop()
            found["no standby"].append(ingest_rate(port, requests))
            pair.standby.start()
    finally:
        proc.terminate()
        proc.wait(30)
        pair.close()
    none = statistics.median(found["no standby"])
    print(f"ingest, acknowledged spans/s (median of {repeat}; {requests} requests of 512):")
    for name, values in found.items():
        median = statistics.median(values)
        print(f"  {name:13s} {median:9,.0f}/s  ratio to no standby {median / none:.2f}  "
              f"(runs: {', '.join(f'{v:,.0f}' for v in values)})")


def failover_once() -> tuple[float, float, float]:
    """(death → first 200, promotion → first 200, pg_ctl promote's own time), in seconds."""
    pair = Replication(synchronous=True, fsync=True)
    proc, urls = start_server(pair.multi_host_url(target_session_attrs="read-write"))
    port = int(urls["otlp_http"].rsplit(":", 1)[1].split("/")[0])
    body = encode(flat_run(1))[0]
    try:
        while _post(port, body) != 200:
            time.sleep(0.1)
        died = time.perf_counter()
        pair.primary.kill()
        pair.standby.promote()
        promoted = time.perf_counter()
        while _post(port, body) != 200:
            time.sleep(0.1)
        first = time.perf_counter()
    finally:
        proc.terminate()
        proc.wait(30)
        pair.close()
    return first - died, first - promoted, promoted - died


def failovers(repeat: int) -> None:
    found = [failover_once() for _ in range(repeat)]
    print(f"failover (synchronous standby promoted at once; median of {repeat}):")
    for i, name in enumerate(("primary death → first 200", "promotion → first 200",
                              "pg_ctl promote itself")):
        values = [f[i] for f in found]
        print(f"  {name:27s} {statistics.median(values):6.2f} s  "
              f"(runs: {', '.join(f'{v:.2f}' for v in values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200, help="512-span requests per rate")
    args = parser.parse_args()
    rates(args.repeat, args.requests)
    failovers(args.repeat)


if __name__ == "__main__":
    main()
