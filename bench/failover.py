"""PostgreSQL failover (issue 17): how long ingest is down, and what a synchronous standby costs.

    .venv/bin/python bench/failover.py [--rounds 9] [--requests 60] [--repeat 3]

On two PostgreSQL clusters made here (a primary and a streaming standby, Debian's binaries, fsync
on, as tests/e2e/replication_support.py makes them), with a real ``tasktree serve`` given both in
one multi-host URL:

1. **Ingest rate**, acknowledged spans per second (requests of 512 spans from 4 clients, each
   answered 200 once committed), with the standby synchronous, asynchronous, and with no standby
   at all, in rounds on the same servers (the order rotating); the median over rounds of each
   round's ratio to "no standby" is the figure to read (the machine is shared: seconds move,
   ratios within a round less).
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
import subprocess
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


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None:
        proc.terminate()
        proc.wait(30)


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


_SETUPS = ("synchronous", "asynchronous", "no standby")


def _set_up(pair: Replication, setup: str) -> None:
    """Switch the pair to ``setup`` (the standby stopped for "no standby", else streaming)."""
    if setup == "no standby":
        if pair.standby.pid is not None:
            pair.primary.set_synchronous(False)  # else every commit would wait for it
            pair.standby.stop()
        return
    if pair.standby.pid is None:
        pair.standby.start()
    pair.primary.set_synchronous(setup == "synchronous")


def rates(rounds: int, requests: int) -> None:
    """Each round measures the three setups, in an order that rotates from round to round, and
    the ratio of each to "no standby" in that round: the load of a shared machine drifts more
    between rounds than within one."""
    pair = Replication(synchronous=True, fsync=True)
    proc = None
    found: dict[str, list[float]] = {setup: [] for setup in _SETUPS}
    try:
        proc, urls = start_server(pair.multi_host_url())
        port = int(urls["otlp_http"].rsplit(":", 1)[1].split("/")[0])
        for round_number in range(rounds):
            shift = round_number % len(_SETUPS)
            for setup in _SETUPS[shift:] + _SETUPS[:shift]:
                _set_up(pair, setup)
                found[setup].append(ingest_rate(port, requests))
    finally:
        _stop(proc)
        pair.close()
    print(f"ingest, acknowledged spans/s ({rounds} rounds of {requests} requests of 512):")
    for setup, values in found.items():
        ratios = [v / none for v, none in zip(values, found["no standby"], strict=True)]
        print(f"  {setup:13s} median {statistics.median(values):9,.0f}/s  ratio to no standby in"
              f" the same round: median {statistics.median(ratios):.2f}"
              f" (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")


def failover_once() -> tuple[float, float, float]:
    """(death → first 200, promotion → first 200, pg_ctl promote's own time), in seconds."""
    pair = Replication(synchronous=True, fsync=True)
    proc = None
    body = encode(flat_run(1))[0]
    try:
        proc, urls = start_server(pair.multi_host_url(target_session_attrs="read-write"))
        port = int(urls["otlp_http"].rsplit(":", 1)[1].split("/")[0])
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
        _stop(proc)
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
    parser.add_argument("--rounds", type=int, default=9, help="rounds of the three ingest rates")
    parser.add_argument("--requests", type=int, default=60, help="512-span requests per rate")
    parser.add_argument("--repeat", type=int, default=3, help="failovers")
    args = parser.parse_args()
    rates(args.rounds, args.requests)
    failovers(args.repeat)


if __name__ == "__main__":
    main()
