"""`sink_killed_job.py OTLP_HTTP STEPS ITEMS`: a job set up by ``configure()``; its sink is killed.

The root runs for several seconds (running snapshots and heartbeats go out all along), with STEPS
steps of ITEMS items each.  At the end it flushes until the sink has everything (or 60 s pass) and
prints {"trace_id", "flushed", "dropped_finals", "dropped_snapshots"}.
"""

import json
import sys
import time

from opentelemetry import trace

from tasktree.instrumentation import configuration, configure, flush, task


@task
def item(step: int, i: int) -> None:
    pass


@task
def step(n: int, items: int) -> None:
    for i in range(items):
        item(n, i)


if __name__ == "__main__":
    endpoint, steps, items = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    configure(service_name="sigkill-configured-job", endpoint=endpoint, handle_sigterm=False)
    processor = configuration._state.processor
    with task("nightly"):
        trace_id = format(trace.get_current_span().get_span_context().trace_id, "032x")
        for n in range(steps):
            step(n, items)
            time.sleep(0.1)
    deadline = time.monotonic() + 60
    while not (flushed := flush(5_000)) and time.monotonic() < deadline:
        time.sleep(0.5)  # flush() answers False at once while the sink is known down
    print(json.dumps({"trace_id": trace_id, "flushed": flushed,
                      "dropped_finals": processor._dropped_finals,
                      "dropped_snapshots": processor._dropped_snapshots}), flush=True)
