"""@task on every kind of callable, as a context manager, and the current-task helpers."""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
import sys
import threading

import pytest
from opentelemetry import trace
from opentelemetry.trace import StatusCode

from tasktree.instrumentation import set_attributes, set_progress, task
from tasktree.instrumentation.testing import TaskRecorder


@pytest.fixture
def recorder():
    with TaskRecorder() as recorder:
        yield recorder


def test_bare_decorator_names_the_task_after_the_function(recorder):
    @task
    def load(x):
        return x * 2

    assert load(21) == 42
    assert load.__name__ == "load"
    span = recorder.get("test_bare_decorator_names_the_task_after_the_function.<locals>.load")
    assert span.status.status_code is StatusCode.UNSET
    assert span.parent is None


def test_name_and_attributes_are_set_and_nested_calls_get_their_caller_as_parent(recorder):
    @task(name="inner", attributes={"kind": "leaf"})
    def inner():
        return "ok"

    @task(name="outer")
    def outer():
        return inner()

    assert outer() == "ok"
    assert recorder.parent_of("inner") == "outer"
    assert recorder.get("inner").attributes["kind"] == "leaf"


def test_recursion_chains_each_call_under_the_previous(recorder):
    @task(name="walk")
    def walk(n):
        set_attributes(depth=n)
        return 0 if n == 0 else 1 + walk(n - 1)

    assert walk(3) == 3
    spans = {s.attributes["depth"]: s for s in recorder.spans}
    assert spans[3].parent is None
    for depth in (0, 1, 2):
        assert spans[depth].parent.span_id == spans[depth + 1].context.span_id


def test_methods_classmethods_and_staticmethods(recorder):
    class Job:
        @task
        def run(self):
            return self.helper() + Job.tool()

        @task
        @classmethod
        def helper(cls):
            return 1

        @task
        @staticmethod
        def tool():
            return 2

    assert Job().run() == 3
    prefix = "test_methods_classmethods_and_staticmethods.<locals>."
    assert sorted(recorder.names()) == [
        prefix + "Job.helper",
        prefix + "Job.run",
        prefix + "Job.tool",
    ]
    assert recorder.parent_of(prefix + "Job.helper") == prefix + "Job.run"
    assert recorder.parent_of(prefix + "Job.tool") == prefix + "Job.run"


def test_exception_is_recorded_with_stack_trace_and_propagates_unchanged(recorder):
    error = ValueError("bad row 7")

    @task(name="parse")
    def parse():
        raise error

    with pytest.raises(ValueError) as caught:
        parse()
    assert caught.value is error
    span = recorder.get("parse")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ValueError: bad row 7"
    (event,) = span.events
    assert event.name == "exception"
    assert "raise error" in event.attributes["exception.stacktrace"]
    assert event.attributes["exception.type"] == "ValueError"


def test_secrets_in_an_exception_s_message_and_stack_trace_are_masked_and_the_rest_kept(recorder):
    @task(name="connect")
    def connect(url="postgresql://etl:hunter2a@db/warehouse", token="hunter2b"):
        raise ConnectionError(
            f"cannot reach {url}: timeout, password='hunter2c' token={token} tried"
        )

    with pytest.raises(ConnectionError):
        connect()
    span = recorder.get("connect")
    shown = "cannot reach postgresql://etl:[redacted]@db/warehouse: timeout"
    assert span.status.description == (
        f"ConnectionError: {shown}, password='[redacted]' token=[redacted] tried"
    )
    (event,) = span.events
    assert event.attributes["exception.message"].startswith(shown)
    assert "raise ConnectionError" in event.attributes["exception.stacktrace"]
    assert "hunter2" not in repr(dict(event.attributes))


def test_an_exception_whose_message_cannot_be_read_still_fails_its_task(recorder):
    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no message here")

    @task(name="fails-badly")
    def fails_badly():
        raise Unprintable()

    with pytest.raises(Unprintable):
        fails_badly()
    span = recorder.get("fails-badly")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description.startswith("Unprintable: (its message could not be read")
    (event,) = span.events
    assert event.attributes["exception.type"] == "Unprintable"
    assert "raise Unprintable()" in event.attributes["exception.stacktrace"]


@pytest.mark.parametrize(
    "code, status", [(0, StatusCode.UNSET), (None, StatusCode.UNSET), (3, StatusCode.ERROR)]
)
def test_system_exit_zero_is_not_an_error(recorder, code, status):
    @task(name="exits")
    def exits():
        sys.exit(code)

    with pytest.raises(SystemExit):
        exits()
    assert recorder.get("exits").status.status_code is status


def test_context_manager_with_name_and_default_name(recorder):
    def step():
        with task() as span:
            span.set_attribute("x", 1)

    with task("block", attributes={"a": "b"}):
        step()
    assert (
        recorder.parent_of("test_context_manager_with_name_and_default_name.<locals>.step")
        == "block"
    )
    assert recorder.get("block").attributes["a"] == "b"


def test_async_with_names_the_block_after_the_calling_coroutine(recorder):
    async def fetch_all():
        async with task() as span:
            span.set_attribute("async", True)

    asyncio.run(fetch_all())
    name = "test_async_with_names_the_block_after_the_calling_coroutine.<locals>.fetch_all"
    assert recorder.get(name).attributes["async"] is True


def test_context_manager_records_the_exception_and_does_not_swallow_it(recorder):
    with pytest.raises(KeyError):
        with task("fails"):
            raise KeyError("k")
    assert recorder.get("fails").status.status_code is StatusCode.ERROR


def test_a_task_ends_even_when_its_exception_s_message_raises_a_base_exception(recorder):
    class Unprintable(Exception):
        def __str__(self):
            raise KeyboardInterrupt  # a BaseException: what _record_failure does not catch

    with pytest.raises(KeyboardInterrupt), task("unprintable"):
        raise Unprintable
    assert recorder.get("unprintable").end_time is not None


def test_one_task_object_entered_from_several_threads_keeps_each_entry_apart(recorder):
    shared = task("shared")
    barrier = threading.Barrier(4)

    def work(i):
        with shared:
            barrier.wait(timeout=10)
            with task(f"leaf-{i}"):
                pass

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shared_ids = {s.context.span_id for s in recorder.spans if s.name == "shared"}
    assert len(shared_ids) == 4
    leaves = [s for s in recorder.spans if s.name.startswith("leaf-")]
    assert {leaf.parent.span_id for leaf in leaves} == shared_ids


def test_one_task_object_entered_from_threads_switching_all_the_time_ends_every_entry(recorder):
    step, errors, leaked = task("step"), [], []

    def work():
        try:
            for _ in range(1500):
                with step as span:
                    assert trace.get_current_span() is span
                if trace.get_current_span().get_span_context().is_valid:
                    leaked.append(trace.get_current_span())
        except BaseException as exc:  # noqa: BLE001 - what reached the job's code
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave inside __enter__ and __exit__
    try:
        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == [] and leaked == []
    assert len([s for s in recorder.spans if s.name == "step"]) == 8 * 1500


def test_async_function_gather_and_task_group(recorder):
    @task(name="fetch")
    async def fetch(i):
        await asyncio.sleep(0)
        with task(f"inside-{i}"):
            pass
        return i

    @task(name="main")
    async def main():
        first = await asyncio.gather(fetch(1), fetch(2))
        async with asyncio.TaskGroup() as group:
            third = group.create_task(fetch(3))
        return [*first, third.result()]

    assert asyncio.run(main()) == [1, 2, 3]
    main_id = recorder.get("main").context.span_id
    fetches = [s for s in recorder.spans if s.name == "fetch"]
    assert len(fetches) == 3 and all(s.parent.span_id == main_id for s in fetches)
    for i in (1, 2, 3):
        assert recorder.parent_of(f"inside-{i}") == "fetch"


def test_cancelled_coroutine_is_an_error(recorder):
    @task(name="slow")
    async def slow():
        await asyncio.sleep(10)

    async def main():
        running = asyncio.create_task(slow())
        await asyncio.sleep(0.01)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    asyncio.run(main())
    assert recorder.get("slow").status.status_code is StatusCode.ERROR


def test_generator_span_covers_its_body_and_tasks_in_the_body_hang_under_it(recorder):
    @task(name="rows")
    def rows(n):
        for i in range(n):
            with task(f"row-{i}"):
                pass
            yield i

    with task("create"):
        produced = rows(3)
    assert recorder.names() == ["create"]  # nothing ran yet: no span
    with task("consume"):
        assert list(produced) == [0, 1, 2]
    assert recorder.parent_of("rows") == "create"  # where it was called
    for i in range(3):
        assert recorder.parent_of(f"row-{i}") == "rows"
    gen = recorder.get("rows")
    assert gen.start_time >= recorder.get("create").end_time


def test_generator_resumed_in_another_thread_keeps_its_task_current(recorder):
    @task(name="stream")
    def stream():
        for i in range(2):
            with task(f"item-{i}"):
                pass
            yield i

    with task("owner"):
        gen = stream()
        assert next(gen) == 0
    result = []
    worker = threading.Thread(target=lambda: result.extend(gen))
    with task("elsewhere"):
        worker.start()
        worker.join()
    assert result == [1]
    assert recorder.parent_of("stream") == "owner"
    assert recorder.parent_of("item-0") == "stream" and recorder.parent_of("item-1") == "stream"


def test_a_with_block_left_on_another_thread_does_not_stay_the_parent_where_it_began(
    recorder, caplog
):
    """A plain generator whose ``with task()`` block is entered here and finished on another
    thread: the block's task must not stay current here (every later task of this thread went
    under it), and nothing is logged as an error."""

    def rows():
        with task("reading"):
            yield 1
            yield 2

    with task("job"):
        gen = rows()
        assert next(gen) == 1
        worker = threading.Thread(target=lambda: list(gen))
        worker.start()
        worker.join()
        with task("after"):
            set_attributes(step="after")
    with task("next-run"):
        pass
    assert recorder.parent_of("reading") == "job"
    assert recorder.parent_of("after") == "job"
    assert recorder.get("after").attributes["step"] == "after"
    assert recorder.get("next-run").parent is None
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_with_block_left_in_another_asyncio_task_does_not_stay_the_parent_where_it_began(
    recorder,
):
    async def main():
        block = task("block")

        async def enter():
            block.__enter__()

        async def leave():
            block.__exit__(None, None, None)

        with task("loop"):
            await enter()  # an asyncio task's context is a copy: the block stays in it alone
            await asyncio.get_running_loop().create_task(leave())
            with task("later"):
                pass

    asyncio.run(main())
    assert recorder.parent_of("block") == "loop" and recorder.parent_of("later") == "loop"


def test_generator_does_not_leak_its_context_to_the_consumer(recorder):
    @task(name="gen")
    def gen():
        yield 1
        yield 2

    with task("consumer"):
        for _ in gen():
            with task("per-item"):
                pass
    items = [s for s in recorder.spans if s.name == "per-item"]
    consumer = recorder.get("consumer").context.span_id
    assert len(items) == 2 and all(s.parent.span_id == consumer for s in items)


def test_generator_send_throw_close_and_return_value(recorder):
    @task(name="acc")
    def acc():
        total = 0
        try:
            while True:
                total += yield total
        except ValueError:
            yield -1
        return total

    g = acc()
    assert next(g) == 0
    assert g.send(5) == 5
    assert g.throw(ValueError("stop")) == -1
    g.close()
    assert recorder.get("acc").status.status_code is StatusCode.UNSET

    @task(name="failing-gen")
    def failing():
        yield 1
        raise RuntimeError("broken")

    with pytest.raises(RuntimeError):
        list(failing())
    assert recorder.get("failing-gen").status.status_code is StatusCode.ERROR

    @task(name="returns")
    def returns():
        yield 1
        return "done"

    def delegate():
        return (yield from returns())

    d = delegate()
    next(d)
    with pytest.raises(StopIteration) as stop:
        next(d)
    assert stop.value.value == "done"


def test_async_generator(recorder):
    @task(name="agen")
    async def agen():
        for i in range(2):
            with task(f"a-{i}"):
                await asyncio.sleep(0)
            yield i

    async def main():
        with task("amain"):
            return [i async for i in agen()]

    assert asyncio.run(main()) == [0, 1]
    assert recorder.parent_of("agen") == "amain"
    assert recorder.parent_of("a-0") == "agen" and recorder.parent_of("a-1") == "agen"


def test_set_progress_and_attributes_on_the_current_task(recorder):
    with task("progress"):
        set_progress(5, 20)
        set_attributes({"rows.read": 5}, batch="b1")
    attributes = recorder.get("progress").attributes
    assert attributes["tasktree.progress"] == 0.25
    assert attributes["tasktree.progress.done"] == 5 and attributes["tasktree.progress.total"] == 20
    assert attributes["rows.read"] == 5 and attributes["batch"] == "b1"
    set_progress(1)  # outside any task: nothing happens, nothing raises


def test_set_progress_takes_numeric_strings_and_decimals_and_never_fails_the_job(recorder, caplog):
    from decimal import Decimal

    with task("numeric"):
        set_progress("5", Decimal("10"))
    attributes = recorder.get("numeric").attributes
    assert attributes["tasktree.progress"] == 0.5 and attributes["tasktree.progress.done"] == 5.0
    with task("not-numbers"):
        set_progress("five", 10)  # logged, ignored: the job goes on
        set_progress(float("nan"), 10)
        set_progress(3, 4)
    assert recorder.get("not-numbers").attributes["tasktree.progress"] == 0.75
    assert "set_progress('five', 10) ignored" in caplog.text


def test_partials_and_callable_objects_are_named_the_same_at_every_run(recorder):
    def load(path):
        return path

    class Loader:
        def __call__(self, path):
            return path

    assert task(functools.partial(load, "a.csv"))() == "a.csv"
    assert task(Loader())("b.csv") == "b.csv"
    names = {span.name for span in recorder.spans}
    assert {f"{load.__qualname__}", Loader.__qualname__} <= names
    assert not any(" at 0x" in name for name in names)


def test_an_async_callable_object_is_a_task_around_its_whole_run(recorder):
    class Fetch:
        async def __call__(self, n):
            with task("inside-fetch"):
                await asyncio.sleep(0.01)
            return n

    assert asyncio.run(task(name="fetch")(Fetch())(3)) == 3
    assert recorder.parent_of("inside-fetch") == "fetch"
    fetch = recorder.get("fetch")
    assert fetch.end_time - fetch.start_time >= 10_000_000  # the await, not creating it


@pytest.mark.parametrize("target, says", [
    (property(lambda self: 1), "cannot wrap a property: put @task under @property"),
    (functools.cached_property(lambda self: 1), "put @task under @cached_property"),
    (type("Job", (), {}), "cannot wrap a class (Job)"),
])  # fmt: skip
def test_task_over_what_is_no_function_says_so_where_it_is_applied(target, says):
    with pytest.raises(TypeError, match=re.escape(says)):
        task(target)


def test_a_task_states_its_function_s_signature_even_to_getfullargspec():
    """``inspect.getfullargspec`` ignores ``__wrapped__``; engines read arguments with it."""

    def plain(a, b=1, *rest, c, **more): ...

    async def coroutine(a, b=1): ...

    def generator(a, b=1):
        yield a

    async def async_generator(a, b=1):
        yield a

    for function in (plain, coroutine, generator, async_generator):
        assert inspect.getfullargspec(task(function)) == inspect.getfullargspec(function)
