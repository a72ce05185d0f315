"""`configured_in_child.py METHOD`: the parent never sets tasktree up; the target of a
multiprocessing child started with METHOD (fork, forkserver, spawn) calls configure() and runs two
tasks, then returns (a fork child then leaves through os._exit).  Prints {"exitcode"}.
"""

import json
import multiprocessing
import sys

from tasktree.instrumentation import configure, task


def target():
    configure(service_name="configured-in-child")
    with task("child-outer"):
        with task("child-inner"):
            pass


if __name__ == "__main__":
    process = multiprocessing.get_context(sys.argv[1]).Process(target=target)
    process.start()
    process.join(60)
    print(json.dumps({"exitcode": process.exitcode}))
