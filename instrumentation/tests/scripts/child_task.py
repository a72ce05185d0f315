"""A Python child program using tasktree: `child_task.py LABEL [exit code]`.

Runs task LABEL with a nested task LABEL/inner, prints {"traceparent": ...} and exits with the
given code (default 0).  Its parent comes from TRACEPARENT.
"""

import json
import os
import sys

from tasktree.instrumentation import configure, task

if __name__ == "__main__":
    configure()
    label = sys.argv[1]
    code = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    with task(label):
        with task(label + "/inner"):
            print(json.dumps({"traceparent": os.environ.get("TRACEPARENT")}))
            if code:
                print(f"{label} failing with {code}", file=sys.stderr)
    sys.exit(code)
