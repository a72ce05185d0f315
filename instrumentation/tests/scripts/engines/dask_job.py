"""A Dask job with nothing but ``@task``, ``configure()`` and Dask's own API, on a real
``LocalCluster`` of two worker processes of one thread each.

    dask_job.py tree   the tree of submit, map, delayed, bag, a task submitting more and a task
                       retried once
    dask_job.py long   one long task (its ids and worker pid written to $DASK_LONG_MARKER), rerun
                       quickly when its worker is killed
    dask_job.py bad    tasks submitted with no current task and with a malformed carrier
    dask_job.py queued more tasks than the workers' threads: the scheduler queues most of them
    dask_job.py actor  an actor created under one task and called under another

With $DASK_SCHEDULER_FILE, the job uses that scheduler (workers started by hand) instead; with
DASK_PROCESSES=0, a LocalCluster of threads.

Prints one JSON line: the ids the test reads the tree back with.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask
import dask.bag
from dask.distributed import Client, LocalCluster, get_client, rejoin, secede
from opentelemetry import trace

from tasktree.instrumentation import configure, in_context, task


def ids() -> dict[str, str]:
    span = trace.get_current_span().get_span_context()
    return {"trace_id": f"{span.trace_id:032x}", "span_id": f"{span.span_id:016x}"}


@task(name="inner")
def inner(i):
    return i


@task(name="submitted")
def submitted(i):
    return i


def plain_threads(n):
    """A Dask task that is no ``@task``: the tasks of the threads it starts are under its
    submitter, as one it called would be."""
    with ThreadPoolExecutor(2) as pool:
        return sum(pool.map(inner, range(n)))


async def coroutine_task():
    """Run on the worker's event loop, where the running task is not known: a run of its own
    (never under a task that started the worker, its TRACEPARENT)."""
    return run_of_its_own()


@task(name="mapped")
def mapped(i):
    return inner(i)


@task(name="delayed-leaf")
def delayed_leaf(i):
    return i


@task(name="delayed-total")
def delayed_total(values):
    return sum(values)


@task(name="bag-item")
def bag_item(i):
    return i * 2


@task(name="nested")
def nested(i):
    return i


@task(name="spawner")
def spawner(n):
    client = get_client()
    futures = client.map(nested, range(n))
    secede()  # the nested tasks need this worker's thread
    total = sum(client.gather(futures))
    rejoin()
    return total


@task(name="plain-nested")
def plain_nested(i):
    return i


def plain_spawner(n):
    """A Dask task that is no @task: what it submits runs under its own submitter."""
    client = get_client()
    futures = client.map(plain_nested, range(n))
    secede()
    total = sum(client.gather(futures))
    rejoin()
    return total


@task(name="flaky")
def flaky(marker):
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise RuntimeError("the first attempt fails")
    return "second attempt"


@task(name="long")
def long_task(seconds):
    marker = Path(os.environ["DASK_LONG_MARKER"])
    if marker.exists():
        return "rerun"  # the first attempt's worker was killed: finish at once
    marker.write_text(json.dumps({**ids(), "pid": os.getpid()}))
    time.sleep(seconds)
    return "first"


@task(name="queued")
def queued(i):
    time.sleep(0.2)  # long enough for the scheduler to queue the tasks submitted after
    return i


class Tally:
    """A Dask actor: created by a task like any other, its methods called by an RPC of their own."""

    @task(name="actor-init")
    def __init__(self):
        self.total = 0

    @task(name="actor-add")
    def add(self, i):
        self.total += i
        return ids()

    def call(self, function, *args):
        """Runs ``function(self, *args)``: given as ``in_context(...)``, under its caller."""
        return function(self, *args)


def run_of_its_own():
    @task(name="own-run")
    def own_run():
        span = trace.get_current_span()
        parent = span.parent.span_id if span.parent else None
        return {**ids(), "parent": parent}

    return own_run()


@contextlib.contextmanager
def dask_client() -> Iterator[Client]:
    """A client of the scheduler in $DASK_SCHEDULER_FILE (workers started by hand), else of a
    LocalCluster of two worker processes."""
    scheduler_file = os.environ.get("DASK_SCHEDULER_FILE")
    if scheduler_file:
        with Client(scheduler_file=scheduler_file) as client:
            yield client
        return
    processes = os.environ.get("DASK_PROCESSES", "1") == "1"
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=processes, dashboard_address=None
        ) as local,
        Client(local) as client,
    ):
        yield client


@task(name="dask-tree")
def tree() -> dict:
    # A LocalCluster is started inside a task: its workers must not take it as every task's
    # parent.
    with dask_client() as client:
        with task("submit-phase"):
            assert client.submit(submitted, 1).result() == 1
        with task("map-phase"):
            assert client.gather(client.map(mapped, range(3))) == [0, 1, 2]
        with task("delayed-phase"):
            leaves = [dask.delayed(delayed_leaf)(i) for i in range(3)]
            assert dask.delayed(delayed_total)(leaves).compute() == 3
        with task("bag-phase"):
            bag = dask.bag.from_sequence(range(4), npartitions=2).map(bag_item)
            assert bag.compute() == [0, 2, 4, 6]
        with task("spawn-phase"):
            assert client.submit(spawner, 2).result() == 1
            assert client.submit(plain_spawner, 2).result() == 1
        with task("thread-phase"):
            assert client.submit(plain_threads, 2).result() == 1
        with task("retry-phase"), tempfile.TemporaryDirectory() as scratch:
            marker = str(Path(scratch) / "flaky")
            assert client.submit(flaky, marker, retries=1).result() == "second attempt"
        return {**ids(), "coroutine": client.submit(coroutine_task, pure=False).result()}


@task(name="dask-long")
def long_job() -> dict:
    with dask_client() as client:
        with task("long-phase"):
            result = client.submit(long_task, 60).result()
        return {**ids(), "result": result}


@task(name="dask-queued")
def queued_job() -> dict:
    with dask_client() as client, task("queue-phase"):
        assert client.gather(client.map(queued, range(8))) == list(range(8))
        return ids()


@task(name="dask-actor")
def actor_job() -> dict:
    with dask_client() as client:
        with task("create-phase"):
            tally = client.submit(Tally, actor=True).result()
        with task("call-phase"):
            direct = tally.add(1).result()  # not under this task: the call carries no parent
            bound = tally.call(in_context(Tally.add), 2).result()
        return {**ids(), "direct": direct, "bound": bound}


def bad_input() -> dict:
    with dask_client() as client:
        no_carrier = client.submit(run_of_its_own, pure=False).result()
        with dask.annotate(tasktree={"traceparent": "00-not-a-trace-id-01"}):
            malformed = client.submit(run_of_its_own, pure=False).result()
        with dask.annotate(tasktree="not a carrier"):
            not_a_dict = client.submit(run_of_its_own, pure=False).result()
    return {"no_carrier": no_carrier, "malformed": malformed, "not_a_dict": not_a_dict}


if __name__ == "__main__":
    configure(service_name="dask-job")
    modes = {
        "tree": tree,
        "long": long_job,
        "bad": bad_input,
        "queued": queued_job,
        "actor": actor_job,
    }
    print(json.dumps(modes[sys.argv[1]]()), flush=True)
