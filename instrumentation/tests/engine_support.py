"""Helpers for the engine blocks of the propagation matrix (Celery, Dask, Ray, RQ): real workers
started and stopped by PID, and the tree read back from a real ``tasktree serve``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from propagation_matrix import Node, records_from_api

ENGINE_SCRIPTS = Path(__file__).parent / "scripts" / "engines"


def scripts_on_path() -> str:
    """``PYTHONPATH`` for a worker or job importing the engine scripts: them first, then the
    tests' own ``PYTHONPATH`` (the code under test, when it is not the installed one)."""
    return os.pathsep.join(filter(None, [str(ENGINE_SCRIPTS), os.environ.get("PYTHONPATH")]))


def wait_for_task(server, trace_id, span_id, predicate, timeout=30.0):
    """Polls the task through the API until ``predicate(task)``; returns it."""
    deadline = time.monotonic() + timeout
    path = f"/api/runs/{trace_id}/tasks/{span_id}"
    task = None
    while time.monotonic() < deadline:
        try:
            task = server.get(path)
        except AssertionError:  # 404 until its first record is folded
            task = None
        if task is not None and predicate(task):
            return task
        time.sleep(0.1)
    raise AssertionError(f"{path} never satisfied the condition; last: {task}")


def start_worker(command: list[str], env: dict[str, str], log: Path, cwd: Path | None = None):
    """Starts an engine worker in its own process group, output to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def stop_worker(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM to the worker's process group (its pool children too), SIGKILL if it lingers."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)
        except ProcessLookupError:
            pass


def start_job(script: Path, mode: str, env: dict[str, str]) -> subprocess.Popen:
    """Starts ``script mode`` in its own process group (the engine's workers it starts too)."""
    return subprocess.Popen(
        [sys.executable, str(script), mode], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def finish_job(process: subprocess.Popen, timeout: float = 180) -> tuple[dict, str]:
    """Waits for the job; returns its JSON line and its stderr (workers' logs included)."""
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        kill_group(process)
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1]), err


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL to what is left of the job's process group (its workers too)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(30)


def runs_of(server, trace_ids) -> dict[str, list[Node]]:
    """Every task of each run, read through the API."""
    return {trace_id: records_from_api(server, trace_id) for trace_id in set(trace_ids)}


def shape(nodes: list[Node]) -> Counter:
    """The tree as a multiset of (task name, parent name, status): what a person sees, ids aside;
    a parent never recorded shows as ``<orphan>``."""
    by_id = {node.span_id: node for node in nodes}
    return Counter(
        (
            node.name,
            None
            if node.parent is None
            else (by_id[node.parent].name if node.parent in by_id else "<orphan>"),
            node.status,
        )
        for node in nodes
    )


def open_tree_in_browser(server, trace_id: str, engine: str) -> list[str]:
    """Opens the run page in Chromium, expands every node, saves the page as
    ``test-artifacts/engine-<engine>.png`` (the README's picture of that engine's tree) and
    returns the task names shown, in page order."""
    from playwright.sync_api import sync_playwright

    from exporter.tests.ui.browser import ARTIFACTS, CHROMIUM_ARGS, ensure_chromium

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=ensure_chromium(), args=CHROMIUM_ARGS)
        try:
            page = chromium.new_page(viewport={"width": 1200, "height": 900})
            page.goto(f"{server.web}/runs/{trace_id}")
            page.wait_for_selector("[role=treeitem]")
            _expand_every_node(page)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"engine-{engine}.png"), full_page=True)
            return page.locator("[role=treeitem] > .row .name").all_text_contents()
        finally:
            chromium.close()


def _expand_every_node(page, rounds: int = 100) -> None:
    """Opens closed nodes one by one until none is left (children load lazily)."""
    for _ in range(rounds):
        closed = page.locator("[role=treeitem][aria-expanded=false]")
        if closed.count() == 0:
            return
        item = closed.first.element_handle()
        item.query_selector(":scope > .row").click()
        page.wait_for_function(
            "item => item.getAttribute('aria-expanded') === 'true'"
            " && item.querySelector(':scope > .children [role=treeitem]')",
            arg=item,
        )
    raise AssertionError(f"nodes still closed after opening {rounds}")
