"""The ``TASKTREE_*`` environment variables read by tasktree-instrumentation.

Every setting is resolved argument → environment variable → default.  In a job a malformed value
logs a warning naming the variable and the default is used: instrumentation never stops a job.

The standard OpenTelemetry variables are honoured first and are not repeated here:
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_EXPORTER``,
``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` / ``PROTOCOL`` / ``HEADERS`` / ``TIMEOUT`` /
``COMPRESSION``, ``OTEL_BSP_MAX_QUEUE_SIZE``, ``OTEL_BSP_SCHEDULE_DELAY``,
``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``, ``OTEL_PROPAGATORS``, ``OTEL_TRACES_SAMPLER`` and
``OTEL_SDK_DISABLED``.  A process started by another one finds its parent task in ``TRACEPARENT``
(and ``TRACESTATE``, ``BAGGAGE``), the OpenTelemetry environment carrier.
"""

TASKTREE_HEARTBEAT_INTERVAL = "TASKTREE_HEARTBEAT_INTERVAL"
"""
.. envvar:: TASKTREE_HEARTBEAT_INTERVAL

Seconds between two running snapshots (heartbeats) of a task that is still running.
Default: ``10``.  The sink marks a task ``stalled`` when its last heartbeat is older than its
``--stall-after`` (30 s, three default intervals): keep this at most a third of it, or running
tasks show ``stalled`` between their heartbeats.
"""

TASKTREE_SNAPSHOT_DELAY = "TASKTREE_SNAPSHOT_DELAY"
"""
.. envvar:: TASKTREE_SNAPSHOT_DELAY

Seconds a task must have been running before its first running snapshot is sent.  Default: ``1``,
so a task shows as running within about 1.5 s while short tasks cost no extra record at all.
``0`` snapshots every task as soon as the heartbeat thread sees it.
"""

TASKTREE_FLUSH_TIMEOUT = "TASKTREE_FLUSH_TIMEOUT"
"""
.. envvar:: TASKTREE_FLUSH_TIMEOUT

Longest time, in seconds, a process waits for its records to be sent when it exits, and a worker
process (``multiprocessing``, ``ProcessPoolExecutor``) when one of its tasks ends, before the result
goes back.  Default: ``5``.  While the sink is known to be unreachable a worker process's task
does not wait, and an exiting process waits at most 1 s.
"""

TASKTREE_CAPTURE_ENV = "TASKTREE_CAPTURE_ENV"
"""
.. envvar:: TASKTREE_CAPTURE_ENV

Comma-separated, case-sensitive glob patterns of environment variable names to record on the
resource as ``process.environment_variable.<NAME>``, e.g. ``SLURM_*,BATCH_DATE,PATH``.  Values of
secret-looking names (containing, in any case, TOKEN, SECRET, PASS, PWD, KEY, CREDENTIAL, AUTH,
COOKIE, SESSION, PRIVATE, SIGNATURE, DSN, CERT, HEADERS, WEBHOOK, BEARER or JWT, or the word PAT
or SIG; not ``PWD`` and ``OLDPWD`` themselves) are replaced by ``[redacted]``, and in other values
passwords inside URLs (``scheme://user:password@host``) and secret-looking query parameters
(``?password=``, ``&token=``, ``&sig=``) are masked.  Default: empty (nothing captured).
"""

TASKTREE_REDACT_ENV = "TASKTREE_REDACT_ENV"
"""
.. envvar:: TASKTREE_REDACT_ENV

Comma-separated glob patterns (matched in any case) of further environment variable names whose
captured values are redacted, in addition to the built-in secret words.  Default: empty.
"""

TASKTREE_HANDLE_SIGTERM = "TASKTREE_HANDLE_SIGTERM"
"""
.. envvar:: TASKTREE_HANDLE_SIGTERM

``true`` (default) or ``false``.  When true and SIGTERM still has its default action, a SIGTERM
records the process's running tasks as ``error`` ("terminated by SIGTERM") and flushes everything
recorded (within ``TASKTREE_FLUSH_TIMEOUT``); then the process dies of the signal as it would have
(no exception is raised in the program: its ``finally`` blocks do not run, as without tasktree).
"""
