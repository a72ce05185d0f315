"""A task that runs until the process is killed: prints {"trace_id", "span_id", "pid"} first."""

import json
import os
import time

from opentelemetry import trace

from tasktree.instrumentation import configure, task

if __name__ == "__main__":
    configure(service_name="long-job")
    with task("long-root"):
        with task("long"):
            context = trace.get_current_span().get_span_context()
            print(json.dumps({
                "trace_id": format(context.trace_id, "032x"),
                "span_id": format(context.span_id, "016x"),
                "pid": os.getpid(),
            }), flush=True)  # fmt: skip
            time.sleep(120)
