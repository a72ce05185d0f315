"""A job with no tasktree set-up code: run under `opentelemetry-instrument`.

Uses @task, a thread and a spawned process; prints {"trace_id"}.
"""

import json
import multiprocessing
import threading
import time

from opentelemetry import trace

from tasktree.instrumentation import task


@task(name="plain-leaf")
def leaf():
    return 1


@task(name="plain-thread")
def in_a_thread():
    return 2


@task(name="plain-job")
def main():
    with task("plain-slow"):
        time.sleep(0.6)
    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    process = multiprocessing.get_context("spawn").Process(target=leaf)
    process.start()
    process.join()
    return format(trace.get_current_span().get_span_context().trace_id, "032x")


if __name__ == "__main__":
    print(json.dumps({"trace_id": main()}))
