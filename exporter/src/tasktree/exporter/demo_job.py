"""The demo's sample job: a nightly ETL of about 2,600 tasks, instrumented with ``@task``.

It fans out the way real batch jobs do: a thread pool, a process pool, plain threads and a child
program, with failing subtasks (caught, so they show in the rollups of a task that ends ok) and a
long task that heartbeats while it runs.  Sent to tasktree with OTLP from the ``OTEL_*`` variables.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

from tasktree.instrumentation import configure, set_progress, task

SOURCES, FILES = 10, 50
PARTITIONS, CHUNKS = 10, 100
TABLES, BATCHES = 10, 100


@task(name="extract-file")
def extract_file(source: int, n: int) -> int:
    return source * n


@task(name="extract-source")
def extract_source(source: int) -> int:
    return sum(extract_file(source, n) for n in range(FILES))


@task(name="transform-chunk")
def transform_chunk(partition: int, chunk: int, bad: bool) -> None:
    if bad:
        raise ValueError(f"partition {partition}, chunk {chunk}: malformed record at line 17")


@task(name="transform-partition")
def transform_partition(partition: int) -> int:
    rng = random.Random(partition)
    failed = 0
    for chunk in range(CHUNKS):
        try:
            transform_chunk(partition, chunk, bad=rng.random() < 0.004)
        except ValueError:
            failed += 1  # quarantined; the partition carries on
        set_progress(chunk + 1, CHUNKS)
    return failed


@task(name="load-batch")
def load_batch(table: int, batch: int) -> None:
    pass


@task(name="load-table")
def load_table(table: int) -> None:
    for batch in range(BATCHES):
        load_batch(table, batch)


@task(name="wait-for-warehouse", attributes={"warehouse": "analytics"})
def wait_for_warehouse(seconds: float) -> None:
    time.sleep(seconds)  # long enough to show as running, with heartbeats


@task(name="nightly-etl", attributes={"schedule": "daily 02:00"})
def nightly_etl() -> None:
    with task("extract"), ThreadPoolExecutor(4) as threads:
        list(threads.map(extract_source, range(SOURCES)))
    with task("transform"), ProcessPoolExecutor(2) as processes:
        list(processes.map(transform_partition, range(PARTITIONS)))
    with task("load"):
        workers = [threading.Thread(target=load_table, args=(t,)) for t in range(TABLES)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    wait_for_warehouse(3.0)
    with task("report"):
        subprocess.run([sys.executable, "-c", _REPORT], check=True)


_REPORT = """
from tasktree.instrumentation import configure, task
configure(service_name="demo-report")
with task("render-report", attributes={"format": "html"}):
    pass
"""


def main() -> None:
    configure(service_name="demo-etl")
    nightly_etl()


if __name__ == "__main__":
    main()
