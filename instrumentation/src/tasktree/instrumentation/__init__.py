"""tasktree for Python batch jobs: one ``@task`` decorator, live running tasks with heartbeats,
and the right parent across threads, pools, processes, subprocesses and asyncio.

    from tasktree.instrumentation import configure, task, set_progress

    @task
    def load(path): ...

    if __name__ == "__main__":
        configure()            # OTLP to http://127.0.0.1:4318 unless OTEL_* says otherwise
        with task("nightly"):
            load("data.csv")

Settings: the standard ``OTEL_*`` variables, then ``TASKTREE_*`` (``environment_variables``).
"""

from tasktree.instrumentation.configuration import configure, flush
from tasktree.instrumentation.decorator import set_attributes, set_progress, task
from tasktree.instrumentation.heartbeat import LiveSpanProcessor
from tasktree.instrumentation.propagation import child_env, in_context

__all__ = [
    "LiveSpanProcessor",
    "child_env",
    "configure",
    "flush",
    "in_context",
    "set_attributes",
    "set_progress",
    "task",
]
