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
