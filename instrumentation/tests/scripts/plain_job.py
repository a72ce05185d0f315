"""A job with no tasktree set-up code: run under `opentelemetry-instrument`.

Uses @task and a spawned process; prints {"trace_id"}.
"""

import json
import multiprocessing
import time

from opentelemetry import trace

from tasktree.instrumentation import task


@task(name="plain-leaf")
def leaf():
    return 1


@task(name="plain-job")
def main():
    with task("plain-slow"):
        time.sleep(0.6)
    process = multiprocessing.get_context("spawn").Process(target=leaf)
    process.start()
    process.join()
    return format(trace.get_current_span().get_span_context().trace_id, "032x")


if __name__ == "__main__":
    print(json.dumps({"trace_id": main()}))
