"""A Ray job with nothing but ``@task``, ``configure()`` and Ray's own API, on the Ray at
``RAY_ADDRESS`` (else a local Ray of two CPUs).

    ray_job.py tree   remote functions, nested remote calls, a plain remote function calling a
                      task, a remote generator, @task over @ray.remote, sync and async actors
                      (@ray.method(num_returns=2) over @task too),
                      and a task whose worker is killed as soon as its result is back
    ray_job.py long   one long remote task (its ids and worker pid written to $RAY_LONG_MARKER),
                      retried by Ray when its worker dies; it ends once $RAY_LONG_RELEASE exists
    ray_job.py bad    tasks submitted with no current task and with a malformed carrier

Prints one JSON line: the ids the test reads the tree back with.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import ray
from opentelemetry import trace

from tasktree.instrumentation import configure, task


def ids() -> dict[str, str]:
    span = trace.get_current_span().get_span_context()
    return {"trace_id": f"{span.trace_id:032x}", "span_id": f"{span.span_id:016x}"}


@ray.remote
@task(name="leaf")
def leaf(i):
    return i


@ray.remote
@task(name="fan-out")
def fan_out(n):
    return sum(ray.get([leaf.remote(i) for i in range(n)]))


@ray.remote
@task(name="nested-outer")
def nested_outer():
    return ray.get(nested_middle.remote())


@ray.remote
@task(name="nested-middle")
def nested_middle():
    return ray.get(leaf.options(name="from-middle").remote(7))


@task(name="helper")
def helper():
    return ids()


@ray.remote
def plain_remote():
    """Not a task itself: the task it calls goes under the submitter."""
    return helper()


@ray.remote
def generated(n):
    """A remote generator (@task over a generator function is no generator function to Ray, which
    refuses it: the tasks are blocks inside)."""
    with task("generated"):
        for i in range(n):
            with task(f"generated-{i}"):
                yield i


@ray.remote
class Counter:
    @task(name="counter-init")
    def __init__(self):
        self.total = 0

    @task(name="counter-add")
    def add(self, n):
        self.total += n
        return self.total

    @task(name="counter-spawn")
    def spawn(self):
        return ray.get(leaf.remote(self.total))

    @ray.method(num_returns=2)  # over @task: its options reach Ray all the same
    @task(name="counter-pair")
    def pair(self):
        return self.total, -self.total


@ray.remote
class AsyncCounter:
    @task(name="async-add")
    async def add(self, n):
        await asyncio.sleep(0.01)
        return n


@ray.remote
@task(name="last-words")
def last_words():
    return os.getpid()


def task_over_remote():
    """@task over @ray.remote: decorated once configure() has run (as here, in the job)."""

    @task(name="task-over-remote")
    @ray.remote
    def over():
        return helper()

    return over


def tree() -> dict:
    with task("ray-job"):
        result = ids()
        assert ray.get(fan_out.remote(3)) == 3
        assert ray.get(nested_outer.remote()) == 7
        helped = ray.get(plain_remote.remote())
        assert helped["trace_id"] == result["trace_id"]
        assert [ray.get(ref) for ref in generated.remote(2)] == [0, 1]
        ray.get(task_over_remote().remote())
        counter = Counter.remote()
        assert ray.get([counter.add.remote(1), counter.add.remote(2)]) == [1, 3]
        assert ray.get(counter.spawn.remote()) == 3
        first, second = counter.pair.remote()  # two ObjectRefs
        assert ray.get([first, second]) == [3, -3]
        async_counter = AsyncCounter.remote()
        assert ray.get(async_counter.add.remote(5)) == 5
        # As Ray ends the workers of a job that shuts down (no atexit): the record is out already.
        os.kill(ray.get(last_words.remote()), signal.SIGKILL)
    return result


@ray.remote(max_retries=2)
@task(name="long")
def long(marker: str, release: str):
    Path(marker).write_text(json.dumps({**ids(), "pid": os.getpid()}))
    deadline = time.monotonic() + 120
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return "done"


def long_run() -> dict:
    with task("ray-long-job"):
        result = ids()
        ray.get(long.remote(os.environ["RAY_LONG_MARKER"], os.environ["RAY_LONG_RELEASE"]))
    return result


@ray.remote
@task(name="orphan")
def orphan():
    return ids()


def bad() -> dict:
    no_context = ray.get(orphan.remote())
    malformed = ray.get(orphan.remote(_tasktree_carrier={"traceparent": "00-not-a-trace-id"}))
    job_id = ray.get_runtime_context().get_job_id()
    return {"no_context": no_context, "malformed": malformed, "job_id": job_id}


if __name__ == "__main__":
    configure(service_name="ray-job")
    # RAY_ADDRESS set: the test's Ray; else a local one of two CPUs.
    ray.init(
        **({} if os.environ.get("RAY_ADDRESS") else {"num_cpus": 2, "include_dashboard": False})
    )
    try:
        print(json.dumps({"tree": tree, "long": long_run, "bad": bad}[sys.argv[1]]()), flush=True)
    finally:
        ray.shutdown()
