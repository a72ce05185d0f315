"""Ray through a real ``tasktree serve``: a job of ``@task`` + ``configure()`` + Ray's own API gives
exactly the tree of the calls (remote functions, nested remote calls, actors); a task running in a
Ray worker shows running and heartbeats, and SIGKILL of that worker leaves it stalled (the retry
Ray makes is a new task beside it, attempt 2); tasks submitted with no current task or a
malformed carrier are runs of their own.

One Ray (``ray start --head --block``, two CPUs) serves the whole module, started and stopped by
its process group; it is started without the jobs' ``OTEL_*``/``TASKTREE_*`` variables, so the
workers export to the jobs' sink only because the integration passes them on.  Each job connects
to it with ``ray.init()`` (``RAY_ADDRESS``) and runs in its own process group, killed at the end.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from engine_support import (
    ENGINE_SCRIPTS,
    finish_job,
    kill_group,
    open_tree_in_browser,
    shape,
    start_job,
    stop_worker,
    wait_for_task,
)
from propagation_matrix import records_from_api

from conftest import child_environment

pytest.importorskip("ray")

pytestmark = pytest.mark.slow

JOB = ENGINE_SCRIPTS / "ray_job.py"
RAY = Path(sys.executable).parent / "ray"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class RayCluster:
    address: str
    temp_dir: Path

    def worker_errors(self, job_id: str) -> str:
        """What the job's workers wrote to stderr so far (Ray forwards it to the job only
        eventually)."""
        logs = sorted((self.temp_dir / "session_latest" / "logs").glob(f"worker-*-{job_id}-*.err"))
        return "".join(log.read_text(errors="replace") for log in logs)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local Ray head (2 CPUs) for the module."""
    temp_dir = tmp_path_factory.mktemp("ray")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TASKTREE_", "RAY_"))}
    env["RAY_AUTH_MODE"] = "disabled"  # else `ray start` requires a token the jobs do not have
    log = temp_dir / "ray-start.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(RAY), "start", "--head", "--block", "--num-cpus", "2", "--port", str(port),
             "--node-ip-address", "127.0.0.1", "--include-dashboard", "false",
             "--disable-usage-stats", "--temp-dir", str(temp_dir)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        _wait_until_up(address, process, log)
        yield RayCluster(address, temp_dir)
    finally:
        stop_worker(process, timeout=30)
        kill_group(process)


def _wait_until_up(address: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited:\n{log.read_text()}")
        if "Ray runtime started" in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"ray start did not come up:\n{log.read_text()}")








def job_env(server, ray_cluster: RayCluster, **extra: str) -> dict[str, str]:
    return child_environment(
        server.otlp_http, RAY_ADDRESS=ray_cluster.address, RAY_AUTH_MODE="disabled", **extra
    )


def test_every_task_runs_under_the_task_current_where_it_was_submitted(
    tasktree_server, ray_cluster
):
    started = time.monotonic()
    out, _ = finish_job(start_job(JOB, "tree", job_env(tasktree_server, ray_cluster)))
    print(f"tree job on the module's Ray: {time.monotonic() - started:.1f}s")
    tasktree_server.wait_folded()
    nodes = records_from_api(tasktree_server, out["trace_id"])
    got = shape(nodes)
    expected = Counter(
        {
            ("ray-job", None, "ok"): 1,
            ("fan-out", "ray-job", "ok"): 1,
            ("leaf", "fan-out", "ok"): 3,
            ("nested-outer", "ray-job", "ok"): 1,
            ("nested-middle", "nested-outer", "ok"): 1,
            ("leaf", "nested-middle", "ok"): 1,
            ("helper", "ray-job", "ok"): 1,  # from a remote function that is no task itself
            ("generated", "ray-job", "ok"): 1,
            ("generated-0", "generated", "ok"): 1,
            ("generated-1", "generated", "ok"): 1,
            ("task-over-remote", "ray-job", "ok"): 1,
            ("helper", "task-over-remote", "ok"): 1,
            ("counter-init", "ray-job", "ok"): 1,
            ("counter-add", "ray-job", "ok"): 2,
            ("counter-spawn", "ray-job", "ok"): 1,
            ("counter-pair", "ray-job", "ok"): 1,  # @ray.method(num_returns=2) over @task
            ("leaf", "counter-spawn", "ok"): 1,
            ("async-add", "ray-job", "ok"): 1,
            ("last-words", "ray-job", "ok"): 1,  # its worker killed as soon as it returned
        }
    )
    assert got == expected, f"missing {expected - got}, unexpected {got - expected}"
    run = tasktree_server.get(f"/api/runs/{out['trace_id']}")
    assert run["counts"]["running"] == run["counts"]["stalled"] == 0
    shown = open_tree_in_browser(tasktree_server, out["trace_id"], "ray")
    assert Counter(shown) == Counter(node.name for node in nodes)  # the page shows the whole tree


def test_a_task_in_a_ray_worker_shows_running_then_stalled_when_the_worker_is_killed(
    start_tasktree, private_db, ray_cluster, tmp_path
):
    # Its own database: no server with another stall window folds these tasks.
    server = start_tasktree(extra_args=("--stall-after", "1.5"), database=private_db)
    marker, release = tmp_path / "long.json", tmp_path / "release"
    env = job_env(
        server, ray_cluster, RAY_LONG_MARKER=str(marker), RAY_LONG_RELEASE=str(release),
        TASKTREE_SNAPSHOT_DELAY="0.5", TASKTREE_HEARTBEAT_INTERVAL="0.5",
    )  # fmt: skip
    job = start_job(JOB, "long", env)
    try:
        first, shown_after, beat, stalled, stalled_after, retry = _kill_the_worker_mid_task(
            server, marker, job
        )
    except AssertionError as failure:
        kill_group(job)
        raise AssertionError(f"{failure}\njob's output:\n{job.stderr.read()[-5000:]}") from None
    release.touch()
    out, _ = finish_job(job)
    print(
        f"running shown {shown_after:.2f}s after the task started; heartbeat "
        f"{beat['last_heartbeat']}; stalled {stalled_after:.2f}s after SIGKILL of its worker"
    )
    assert out["trace_id"] == first["trace_id"] == retry["trace_id"]
    server.wait_folded()
    nodes = records_from_api(server, out["trace_id"])
    assert shape(nodes) == Counter(
        {
            ("ray-long-job", None, "ok"): 1,
            ("long", "ray-long-job", "stalled"): 1,
            ("long", "ray-long-job", "ok"): 1,
        }
    )
    attempts = {
        span_id: server.get(f"/api/runs/{out['trace_id']}/tasks/{span_id}")["attributes"].get(
            "tasktree.attempt"
        )
        for span_id in (first["span_id"], retry["span_id"])
    }
    assert attempts == {first["span_id"]: 1, retry["span_id"]: 2}
    assert stalled["status"] == "stalled"


def _kill_the_worker_mid_task(server, marker: Path, job: subprocess.Popen):
    first = _wait_for_marker(marker, job)
    written = time.monotonic()
    running = wait_for_task(
        server, first["trace_id"], first["span_id"], lambda t: t["status"] == "running"
    )
    shown_after = time.monotonic() - written
    beat = wait_for_task(
        server, first["trace_id"], first["span_id"],
        lambda t: t["last_heartbeat"] not in (None, running["last_heartbeat"]),
    )  # fmt: skip
    os.kill(first["pid"], signal.SIGKILL)
    killed = time.monotonic()
    stalled = wait_for_task(
        server, first["trace_id"], first["span_id"], lambda t: t["status"] == "stalled"
    )
    stalled_after = time.monotonic() - killed
    retry = _wait_for_marker(marker, job, other_than=first["span_id"])
    wait_for_task(server, retry["trace_id"], retry["span_id"], lambda t: t["status"] == "running")
    return first, shown_after, beat, stalled, stalled_after, retry


def _wait_for_marker(marker: Path, job: subprocess.Popen, other_than: str | None = None) -> dict:
    """The ids and pid the long task wrote (those of a new attempt when ``other_than``)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if job.poll() is not None:
            raise AssertionError(f"the job ended early:\n{job.stderr.read()}")
        try:
            found = json.loads(marker.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            found = None
        if found and found["span_id"] != other_than:
            return found
        time.sleep(0.1)
    raise AssertionError("the long task never wrote its marker")


def test_tasks_with_no_context_or_a_malformed_one_are_runs_of_their_own(
    tasktree_server, ray_cluster
):
    out, _ = finish_job(start_job(JOB, "bad", job_env(tasktree_server, ray_cluster)))
    tasktree_server.wait_folded()
    for case in ("no_context", "malformed"):
        ids = out[case]
        nodes = records_from_api(tasktree_server, ids["trace_id"])
        assert shape(nodes) == Counter({("orphan", None, "ok"): 1}), case
    assert out["no_context"]["trace_id"] != out["malformed"]["trace_id"]
    expected = ("work submitted without a task context", "a malformed traceparent")
    deadline = time.monotonic() + 20
    while not all(text in ray_cluster.worker_errors(out["job_id"]) for text in expected):
        assert time.monotonic() < deadline, f"not logged: {expected}"
        time.sleep(0.2)


# -- the wrapper alone (no Ray started) ------------------------------------------------------------


def test_the_wrapper_keeps_the_kind_of_function_and_passes_direct_calls_through():
    from tasktree.instrumentation.integrations import ray as integration

    def plain(a, *, b=1, **rest):
        return a + b

    async def coroutine(a):
        return a

    def generator(n):
        yield from range(n)

    wrapped = {f.__name__: integration._carrying(f) for f in (plain, coroutine, generator)}
    assert inspect.iscoroutinefunction(wrapped["coroutine"])
    assert inspect.isgeneratorfunction(wrapped["generator"])
    assert not hasattr(wrapped["plain"], "__wrapped__")  # Ray unwraps actor methods
    assert list(inspect.signature(wrapped["plain"]).parameters) == [
        "a", "b", integration.CARRIER, "rest"
    ]  # fmt: skip
    assert wrapped["plain"](1, b=2) == 3  # a direct Python call: no carrier, nothing done
    assert list(wrapped["generator"](2)) == [0, 1]
    assert integration._carrying(wrapped["plain"]) is wrapped["plain"]


def test_ray_method_options_over_task_reach_ray_as_under_it():
    """Ray reads an actor method's ``@ray.method`` options from the function under every
    ``__wrapped__``; over ``@task`` they are set on its wrapper: the integration hands them down
    before Ray first sends the class (no Ray started: the class is only prepared)."""
    import ray

    from tasktree.instrumentation import task
    from tasktree.instrumentation.integrations import ray as integration

    @ray.remote(concurrency_groups={"io": 2})
    class Options:
        @ray.method(num_returns=2, max_task_retries=3, concurrency_group="io")
        @task
        def over(self, a):
            return a, a

        @task
        @ray.method(num_returns=2)
        def under(self):
            return 1, 2

        @task
        def stream(self, n):
            yield from range(n)

    meta = Options.__ray_metadata__
    assert meta.method_meta.num_returns["over"] is None  # what Ray read at @ray.remote
    integration._prepare_actor_class(meta)
    method_meta = meta.method_meta
    assert method_meta.num_returns == {**method_meta.num_returns, "over": 2, "under": 2}
    assert method_meta.max_task_retries["over"] == 3
    assert method_meta.concurrency_group_for_methods["over"] == "io"
    assert method_meta.method_is_generator["stream"]  # read again: still seen under @task
    assert integration.CARRIER in [p.name for p in method_meta.signatures["over"]]
    assert list(inspect.signature(Options.__ray_metadata__.modified_class.over).parameters) == [
        "self", "a", integration.CARRIER
    ]  # fmt: skip


@pytest.mark.parametrize("carrier", [{}, {"traceparent": "00-bad"}, "not a dict", 42])
def test_a_call_with_a_bad_carrier_runs_normally_as_a_run_of_its_own(carrier):
    from opentelemetry import trace

    from tasktree.instrumentation.integrations import ray as integration

    seen = integration._carrying(lambda: trace.get_current_span().get_span_context())(
        _tasktree_carrier=carrier
    )
    assert not seen.is_valid
