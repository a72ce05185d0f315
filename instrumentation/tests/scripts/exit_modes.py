"""`exit_modes.py MODE`: leaves a task in one of the ways a job can end; everything must be flushed.

normal: returns; sys-exit: sys.exit(3) inside the task; exception: an unhandled exception;
daemon-thread: exits while a daemon thread's task is still running.
"""

import sys
import threading
import time

from tasktree.instrumentation import configure, task

if __name__ == "__main__":
    mode = sys.argv[1]
    configure(service_name="exit-modes")
    with task(f"exit-{mode}"):
        with task("done-before"):
            pass
        if mode == "sys-exit":
            sys.exit(3)
        if mode == "exception":
            raise RuntimeError("unhandled")
        if mode == "daemon-thread":
            started = threading.Event()

            def forever():
                with task("daemon-task"):
                    started.set()
                    time.sleep(120)

            threading.Thread(target=forever, daemon=True).start()
            started.wait()
