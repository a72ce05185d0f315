"""SIGTERM landing while the main thread is inside a lock that recording the tasks still running
reads under, as a thread is for a moment around every task.  argv[1] names the lock: "processor"
(the LiveSpanProcessor's, held by on_start and on_end) or "attributes" (a task's attribute
mapping's, held while one is set).  Prints {"signalled_at": time.time()} first."""

import json
import os
import signal
import sys
import time

from opentelemetry import trace

from tasktree.instrumentation import configuration, configure, set_attributes, task

if __name__ == "__main__":
    configure(service_name="sigterm-inside-lock")
    with task("root"):
        with task("inner"):
            set_attributes(rows=3)
            if sys.argv[1] == "processor":
                lock = configuration._state.processor._lock
            else:
                lock = trace.get_current_span()._attributes._lock
            print(json.dumps({"signalled_at": time.time()}), flush=True)
            with lock:  # as a hook, or setting an attribute, holds it
                os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, on this thread
                time.sleep(0.01)
            time.sleep(30)
