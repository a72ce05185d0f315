"""`sink_down_job.py N`: N tasks (a few running long enough for snapshots) with no sink to send to.

Prints {"queue", "max_queue", "dropped", "rss_growth_kib"}: the job must finish, its queue bounded.
"""

import json
import resource
import sys
import time

from tasktree.instrumentation import configuration, configure, task

if __name__ == "__main__":
    n = int(sys.argv[1])
    configure(service_name="sink-down")
    processor = configuration._state.processor
    with task("sink-down-root"):
        with task("slow-start"):
            time.sleep(0.5)  # some snapshots and a failed export before the flood
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for i in range(n):
            with task("many", attributes={"i": i, "payload": "x" * 200}):
                pass
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "queue": len(processor._queue),
        "max_queue": processor._max_queue,
        "dropped": processor._dropped_finals,
        "rss_growth_kib": after - before,
    }))  # fmt: skip
