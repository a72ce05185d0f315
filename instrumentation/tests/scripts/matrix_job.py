"""The propagation matrix: one task under each mechanism that starts work somewhere else.

Every leaf task is named after its mechanism and must hang under the task that started it
(see propagation_matrix.EXPECTED).  Prints {"trace_id": ...} at the end.
"""

import asyncio
import json
import multiprocessing
import subprocess
import sys
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

from opentelemetry import trace

from tasktree.instrumentation import configure, task

CHILD = str(Path(__file__).with_name("child_task.py"))
METHODS = ("fork", "spawn", "forkserver")


def leaf(label):
    with task(label):
        return label


class LeafThread(threading.Thread):
    def __init__(self, label):
        super().__init__()
        self.label = label

    def run(self):  # overrides run(): no Thread.run wrapper involved
        leaf(self.label)


def recurse(n):
    with task(f"recurse-{n}"):
        if n > 1:
            recurse(n - 1)


@task(name="generator")
def produce():
    for i in range(2):
        leaf(f"generator-item-{i}")
        yield i


@task(name="failing-leaf")
def fail():
    raise ValueError("expected failure")


@task(name="asyncio-agen")
async def agen():
    leaf("asyncio-agen-item")
    yield 1


async def aleaf(label):
    await asyncio.sleep(0)
    leaf(label)


async def amain():
    await asyncio.create_task(aleaf("asyncio-task"))
    await asyncio.gather(aleaf("asyncio-gather-1"), aleaf("asyncio-gather-2"))
    async with asyncio.TaskGroup() as group:
        group.create_task(aleaf("asyncio-taskgroup"))
    async for _ in agen():
        pass


def processes(method):
    ctx = multiprocessing.get_context(method)
    with task(f"process-{method}"):
        process = ctx.Process(target=leaf, args=(f"process-{method}-leaf",))
        process.start()
        process.join()
    with task(f"pool-{method}"):
        with ctx.Pool(1) as pool:
            pool.map(leaf, [f"pool-{method}-map"])
            pool.apply_async(leaf, (f"pool-{method}-apply",)).get()
            list(pool.imap(leaf, [f"pool-{method}-imap"]))
    with task(f"ppe-{method}"):
        with ProcessPoolExecutor(1, mp_context=ctx) as executor:
            executor.submit(leaf, f"ppe-{method}-submit").result()
            list(executor.map(leaf, [f"ppe-{method}-map"]))


def main():
    configure(service_name="matrix")
    with task("matrix"):
        with task("nested-outer"):
            leaf("nested-inner")
        with task("recursion"):
            recurse(3)
        with task("thread"):
            thread = threading.Thread(target=leaf, args=("thread-leaf",))
            thread.start()
            thread.join()
        with task("thread-subclass"):
            thread = LeafThread("thread-subclass-leaf")
            thread.start()
            thread.join()
        with task("timer"):
            timer = threading.Timer(0, leaf, ("timer-leaf",))
            timer.start()
            timer.join()
        with task("threadpool"):
            with ThreadPoolExecutor(2) as executor:
                executor.submit(leaf, "threadpool-submit").result()
                list(executor.map(leaf, ["threadpool-map"]))
        for method in METHODS:
            processes(method)
        with task("subprocess-run"):
            subprocess.run(
                [sys.executable, CHILD, "subprocess-run-child"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        with task("popen"):
            subprocess.Popen(
                [sys.executable, CHILD, "popen-child"], stdout=subprocess.DEVNULL
            ).wait()
        with task("tasktree-run"):
            runner = [str(Path(sys.executable).with_name("tasktree-run")), "--name", "runner", "--"]
            subprocess.run(
                [*runner, sys.executable, CHILD, "runner-child"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        with task("asyncio"):
            asyncio.run(amain())
        with task("generator-owner"):
            generator = produce()
            next(generator)
        with task("generator-consumer"):
            consumer = threading.Thread(target=lambda: list(generator))
            consumer.start()
            consumer.join()
        with task("failing-parent"):
            try:
                fail()
            except ValueError:
                pass
        trace_id = trace.get_current_span().get_span_context().trace_id
    print(json.dumps({"trace_id": format(trace_id, "032x")}))


if __name__ == "__main__":
    main()
