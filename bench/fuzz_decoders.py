"""The OTLP decoders fuzzed for minutes (the test suite runs the same properties for seconds).

    .venv/bin/python bench/fuzz_decoders.py [--minutes 10] [--engine atheris|hypothesis]
                                            [--corpus DIR] [--store DATABASE_URL]

Properties (``exporter/tests/otlp_fuzz.py``): a body decodes or raises ``BadRequest`` and nothing
else; it takes less than ``HANG_SECONDS``; its decoding's peak Python memory stays within
``MEMORY_PER_BYTE`` × its size + ``MEMORY_BASE`` (measured on one input in 20 with tracemalloc,
which slows decoding ~10×); every row is storable.  With ``--store``, every 50th batch that has
rows is also landed and folded in that (scratch!) database, to show PostgreSQL takes them.

Engines: ``atheris`` (coverage-guided libFuzzer over the decoders' Python code, seeded with valid
protobuf and JSON requests; the first byte of each input picks the decoder) when it is
installed, else ``hypothesis`` (the structured strategies of the tests, many examples, new seeds
until time is up).  A failing input is written to ``--corpus``/crash-* (atheris: libFuzzer's own
crash-* file) and the run stops with its traceback.  Not collected by pytest.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "exporter"))

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from tests.otlp_fuzz import (
    check_decoding,
    dump,
    json_values,
    mutated,
    near_otlp_json,
    requests,
    same_rows,
    to_json,
)

FORMATS = ("protobuf", "json")


class Stats:
    def __init__(self, store: str | None):
        self.inputs = self.refused = self.rows = self.rejected = self.stored = 0
        self.started = time.monotonic()
        self.store = store
        if store:
            from tasktree.exporter.store.migrate import migrate

            migrate(store)

    def check(self, body: bytes, fmt: str) -> None:
        self.inputs += 1
        batch = check_decoding(body, fmt, measure_memory=self.inputs % 20 == 0)
        if batch is None:
            self.refused += 1
            return
        self.rows += len(batch.spans)
        self.rejected += batch.rejected
        if self.store and batch.spans and self.inputs % 50 == 0:
            land_and_fold(self.store, batch.spans)
            self.stored += len(batch.spans)

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        return (f"{elapsed:7.0f} s  {self.inputs:,} inputs ({self.inputs / elapsed:,.0f}/s): "
                f"{self.refused:,} refused as bad requests, {self.rows:,} rows, "
                f"{self.rejected:,} spans rejected alone, {self.stored:,} rows stored")


def land_and_fold(url: str, rows) -> None:
    import psycopg

    from tasktree.exporter.store.fold import fold_batch
    from tasktree.exporter.store.landing import ResourceIds, land

    with psycopg.connect(url, autocommit=True) as conn:
        land(conn, rows, ResourceIds(), time.time_ns())
        while fold_batch(conn, limit=10_000, stall_after_s=3600).records:
            pass


# ---------------------------------------------------------------------------------------------
# atheris


def run_atheris(args, stats: Stats) -> None:
    import atheris

    atheris.instrument_all()  # the decoders are imported already (through tests.otlp_fuzz)

    corpus = Path(args.corpus or tempfile.mkdtemp(prefix="tasktree-fuzz-"))
    corpus.mkdir(parents=True, exist_ok=True)
    seed_corpus(corpus)
    last = [time.monotonic()]

    def one_input(data: bytes) -> None:
        if not data:
            return
        stats.check(data[1:], FORMATS[data[0] % 2])
        if time.monotonic() - last[0] > 30:
            last[0] = time.monotonic()
            print(stats.line(), flush=True)

    argv = [sys.argv[0], str(corpus), f"-max_total_time={int(args.minutes * 60)}",
            "-timeout=30", "-rss_limit_mb=4096", "-max_len=65536", f"-artifact_prefix={corpus}/"]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


def seed_corpus(corpus: Path) -> None:
    """Valid requests in both encodings (first byte: 0 protobuf, 1 JSON) for libFuzzer to mutate."""
    found = []

    @settings(max_examples=200, database=None, suppress_health_check=list(HealthCheck))
    @given(request=requests(), data=hs.data())
    def collect(request, data):
        found.append(b"\x00" + request.SerializeToString())
        found.append(b"\x01" + dump(to_json(request, data.draw)))

    collect()
    for i, body in enumerate(found):
        (corpus / f"seed-{i:04d}").write_bytes(body)


# ---------------------------------------------------------------------------------------------
# hypothesis


def run_hypothesis(args, stats: Stats) -> None:
    deadline = time.monotonic() + args.minutes * 60
    # No example database and no derandomising: every call starts from a fresh random seed.
    every = settings(max_examples=500, deadline=None, database=None,
                     suppress_health_check=list(HealthCheck))

    @every
    @given(request=requests(), data=hs.data())
    def structured(request, data):
        body = request.SerializeToString()
        from_protobuf = check_decoding(body, "protobuf", measure_memory=False)
        stats.check(body, "protobuf")
        json_body = dump(to_json(request, data.draw))
        stats.check(json_body, "json")
        same_rows(from_protobuf, check_decoding(json_body, "json", measure_memory=False))
        stats.check(data.draw(mutated(body)), "protobuf")
        stats.check(data.draw(mutated(json_body)), "json")

    @every
    @given(document=near_otlp_json() | json_values)
    def documents(document):
        stats.check(dump(document), "json")

    @every
    @given(body=hs.binary(max_size=2000))
    def noise(body):
        stats.check(body, "protobuf")
        stats.check(body, "json")

    while time.monotonic() < deadline:
        for test in (structured, documents, noise):
            test()
        print(stats.line(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--engine", choices=("atheris", "hypothesis"), default=None)
    parser.add_argument("--corpus", default=None, help="directory for the corpus and crashes")
    parser.add_argument("--store", default=os.environ.get("TASKTREE_FUZZ_STORE"),
                        help="a scratch database URL to land and fold a sample of the rows in")
    args = parser.parse_args()
    engine = args.engine
    if engine is None:
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            engine = "hypothesis"
    stats = Stats(args.store)
    print(f"fuzzing the OTLP decoders with {engine} for {args.minutes:g} min", flush=True)
    try:
        (run_atheris if engine == "atheris" else run_hypothesis)(args, stats)
    finally:
        print(stats.line(), flush=True)


if __name__ == "__main__":
    main()
