"""The carrier every engine integration writes at submission (``integrations/_context.py``)."""

from __future__ import annotations

import pytest
from opentelemetry import propagate

from tasktree.instrumentation import task
from tasktree.instrumentation.integrations import _context
from tasktree.instrumentation.testing import TaskRecorder


@pytest.fixture
def recorder():
    with TaskRecorder() as recorder:
        yield recorder


def _span_id_in(carrier: dict[str, str]) -> int:
    return int(carrier[_context.TRACEPARENT].split("-")[2], 16)


def test_the_carrier_follows_the_current_task_and_is_a_new_dict_every_time(recorder):
    assert _context.carrier() == {}
    with task("outer") as outer:
        spoiled = _context.carrier()
        spoiled[_context.TRACEPARENT] = "spoiled by the caller"
        assert _span_id_in(_context.carrier()) == outer.get_span_context().span_id
        with task("inner") as inner:
            assert _span_id_in(_context.carrier()) == inner.get_span_context().span_id
        assert _span_id_in(_context.carrier()) == outer.get_span_context().span_id
    assert _context.carrier() == {}


def test_submitting_in_a_loop_under_one_task_builds_the_carrier_once(recorder, monkeypatch):
    injected = []
    inject = propagate.inject
    monkeypatch.setattr(
        propagate, "inject", lambda *args, **kwargs: injected.append(1) or inject(*args, **kwargs)
    )
    with task("submitter"):
        carriers = [_context.carrier() for _ in range(100)]
    assert len(injected) == 1
    assert all(carrier == carriers[0] for carrier in carriers) and carriers[0]


# -- work started where engine work runs, with no task of this process current ------------------

import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

from opentelemetry import context, trace  # noqa: E402
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags  # noqa: E402

_running = threading.local()  # .parent: the submitter of the "engine work" this thread runs


def _fake_engine_parent():
    return getattr(_running, "parent", None)


@pytest.fixture
def engine_work(recorder):
    """Runs a function as an engine would run a task that is no ``@task``: its submitter known
    to this thread (an ambient-parent provider), nothing current."""
    _context.register_ambient_parent(_fake_engine_parent)

    def run(submitter: trace.Span, fn):
        _running.parent = trace.set_span_in_context(submitter, context.Context())
        try:
            return fn()
        finally:
            _running.parent = None

    yield run
    _context._providers.remove(_fake_engine_parent)


@task
def leaf(n):
    return n


class _Worker(threading.Thread):
    def run(self):  # a subclass overriding run(): the threading instrumentor's hook is skipped
        leaf(3)


def _fan_out_to_threads():
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(leaf, range(2)))
    worker = _Worker()
    worker.start()
    worker.join()
    timer = threading.Timer(0, leaf, args=(4,))
    timer.start()
    timer.join()
    nested = threading.Thread(target=lambda: threading.Thread(target=leaf, args=(5,)).start())
    nested.start()
    nested.join()


def _wait_for(recorder, count):
    for _ in range(200):
        if len(recorder.names()) >= count:
            return
        threading.Event().wait(0.01)


def test_threads_started_by_engine_work_that_is_no_task_put_their_tasks_under_its_submitter(
    engine_work, recorder
):
    with task("main") as main:
        pass
    engine_work(main, _fan_out_to_threads)
    _wait_for(recorder, 6)
    assert sorted(recorder.children_of("main")) == ["leaf"] * 5
    leaves = [s for s in recorder.spans if s.name == "leaf"]
    assert {s.context.trace_id for s in leaves} == {main.get_span_context().trace_id}


def test_a_child_program_and_a_pool_call_of_engine_work_carry_its_submitter(engine_work):
    with task("main") as main:
        pass
    code = "import os; print(os.environ.get('TRACEPARENT', ''))"
    printed = engine_work(
        main, lambda: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    ).stdout.strip()
    assert printed.split("-")[2] == format(main.get_span_context().span_id, "016x")
    carried = engine_work(main, _context.carrier)
    assert _span_id_in(carried) == main.get_span_context().span_id


def _as_process_parent(trace_id: int, span_id: int) -> context.Context:
    span = NonRecordingSpan(SpanContext(trace_id, span_id, True, TraceFlags(1)))
    return trace.set_span_in_context(span, context.Context())


def test_a_traceparent_the_process_started_with_yields_to_the_engine_works_submitter(
    engine_work, recorder
):
    # A worker started from a task (subprocess, tasktree-run, CI) has TRACEPARENT current for
    # its whole life: the work it runs belongs to other runs.
    inherited = _as_process_parent(0xABC, 0xDEF)
    _context.set_process_parent(inherited)
    token = context.attach(inherited)
    try:
        with task("main") as main:
            pass
        engine_work(main, lambda: (leaf(1), _fan_out_to_threads()))
        _wait_for(recorder, 7)
        assert sorted(recorder.children_of("main")) == ["leaf"] * 6
        leaf(9)  # outside engine work: under the inherited parent, as before
        [outside] = [s for s in recorder.spans if s.name == "leaf" and s.parent.span_id == 0xDEF]
        assert outside.context.trace_id == 0xABC
    finally:
        context.detach(token)
        _context.set_process_parent(None)


def test_a_pool_thread_started_by_engine_work_keeps_no_submitter_for_later_work(
    engine_work, recorder
):
    # A long-lived pool whose thread the first engine task started: what is handed to it later,
    # with no task and no engine work current, is a run of its own.
    pool = ThreadPoolExecutor(1)
    with task("main") as main:
        pass
    engine_work(main, lambda: pool.submit(leaf, 1).result())
    pool.submit(leaf, 2).result()
    pool.shutdown()
    leaves = sorted((s for s in recorder.spans if s.name == "leaf"), key=lambda s: s.start_time)
    assert leaves[0].parent.span_id == main.get_span_context().span_id
    assert leaves[1].parent is None  # a run of its own


def test_a_pool_item_submitted_with_no_parent_ignores_engine_state_left_in_its_worker(
    engine_work, recorder
):
    # A pool process forked inside an engine task holds that task's engine state (Celery's task
    # stack, Dask's thread state) for its life; here the first item leaves it in the pool's thread.
    from multiprocessing.pool import ThreadPool

    with task("main") as main:
        pass
    main_context = trace.set_span_in_context(main, context.Context())
    with ThreadPool(1) as pool:
        pool.apply(_set_engine_state, (main_context,))  # stale state in the pool's one thread
        pool.apply(leaf, (1,))  # submitted with no task and no engine work current
    [later] = [s for s in recorder.spans if s.name == "leaf"]
    assert later.parent is None  # a run of its own, not under main


def _set_engine_state(parent):
    _running.parent = parent
