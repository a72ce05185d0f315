"""Pages that keep following a live job in a real browser: the runs list and the run's tree keep
what the user is doing (focus, selection, keys) and show what arrives; lists of failures say why.
"""

from __future__ import annotations

import os
import time

import pytest

from .support import expect, ids, item, screenshot, send_spans, span

pytestmark = pytest.mark.slow
HOLD_CHILDREN = """{
    const fetchNow = window.fetch;
    let open;
    window.childrenHeld = new Promise((resolve) => { open = resolve; });
    window.releaseChildren = () => open();
    window.fetch = (url, ...rest) => /[/]children/.test(String(url))
        ? window.childrenHeld.then(() => fetchNow(url, ...rest)) : fetchNow(url, ...rest);
}"""
"""A server slow to answer: the tree's children requests wait until ``releaseChildren()``."""


def test_arrow_right_pressed_again_while_children_load_keeps_the_focus(
        tasktree_server, browser_context, page_errors):
    trace, now = os.urandom(16).hex(), time.time_ns()
    root, mid = ids(2)
    leaves = ids(3)
    send_spans(tasktree_server.otlp_http, [
        span(trace, root, name="nightly", start=now, end=now + 10**9),
        span(trace, mid, root, name="mid", start=now + 1, end=now + 10**8),
        *(span(trace, s, mid, name=f"leaf-{n}", start=now + 2 + n, end=now + 10 + n)
          for n, s in enumerate(leaves))])
    tasktree_server.wait_folded()
    page = browser_context.new_page()
    page.add_init_script(HOLD_CHILDREN)
    page.goto(f"{tasktree_server.web}/runs/{trace}")
    check = expect()
    check(item(page, mid)).to_have_attribute("aria-expanded", "false")
    item(page, mid).focus()
    page.keyboard.press("ArrowRight")  # open: its children are on their way
    check(item(page, mid)).to_have_attribute("aria-expanded", "true")
    page.keyboard.press("ArrowRight")  # a user going on to the first child before they came
    check(item(page, mid)).to_be_focused()
    page.evaluate("window.releaseChildren()")
    check(item(page, mid).locator("[role=treeitem][data-span-id]")).to_have_count(3)
    check(item(page, mid)).to_be_focused()
    page.keyboard.press("ArrowRight")
    check(item(page, leaves[0])).to_be_focused()
    page.keyboard.press("ArrowDown")
    check(item(page, leaves[1])).to_be_focused()
    assert page_errors == []


WATCH_ROWS = """() => {
    window.touched = new Set();  // trace ids of the rows the page redrew, moved or took away
    const body = document.getElementById('runs-body');
    new MutationObserver((records) => {
        for (const record of records) {
            for (const node of record.removedNodes) {
                if (node.dataset) window.touched.add(node.dataset.traceId);
            }
            const target = record.target.closest ? record.target : record.target.parentElement;
            const row = target.closest('tr.run');
            if (row) window.touched.add(row.dataset.traceId);
        }
    }).observe(body, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def test_live_runs_list_keeps_the_focus_and_the_selection_of_rows_that_did_not_change(
        tasktree_server, browser_context, page_errors):
    job, now = f"ui-keep-{os.urandom(4).hex()}", time.time_ns()
    traces, roots = [os.urandom(16).hex() for _ in range(3)], ids(3)
    busy, focused, selected = traces

    def root(n: int, **kwargs) -> dict:
        return span(traces[n], roots[n], name=f"run-{n}", start=now - n * 10**9,
                    end=now - n * 10**9 + 10**6, **kwargs)

    send_spans(tasktree_server.otlp_http, [root(0, running=True), root(1), root(2)], job=job)
    tasktree_server.wait_folded()
    page = browser_context.new_page()
    page.goto(f"{tasktree_server.web}/?job={job}")
    check = expect()
    check(page.locator("#live-state")).to_have_text("live")
    row = {trace: page.locator(f'tr.run[data-trace-id="{trace}"]') for trace in traces}
    page.evaluate(WATCH_ROWS)
    row[focused].locator(".name a").focus()
    row[selected].locator("td.job").evaluate("(td) => getSelection().selectAllChildren(td)")
    # Another job's run, then one run of this list ends: the list is read again each time.
    send_spans(tasktree_server.otlp_http, [span(os.urandom(16).hex(), ids(1)[0], name="other")],
               job=f"{job}-other")
    send_spans(tasktree_server.otlp_http, [root(0)], job=job)
    check(row[busy].locator(".status")).to_have_text("ok")
    check(row[focused].locator(".name a")).to_be_focused()
    assert page.evaluate("getSelection().toString()") == job
    assert page.evaluate("[...window.touched]") == [busy], "only the run that changed is redrawn"
    # The focused run itself changes (a second task): its row is redrawn, its link keeps the focus.
    row[busy].locator(".name a").focus()
    send_spans(tasktree_server.otlp_http, [span(traces[0], ids(1)[0], roots[0], name="step",
                                                start=now + 1, end=now + 2)], job=job)
    check(row[busy].locator("td.num").last).to_have_text("2")
    check(row[busy].locator(".name a")).to_be_focused()
    assert page_errors == []


def test_a_node_read_to_its_end_shows_new_children_and_a_settled_one_is_not_read_again(
        tasktree_server, browser_context, page_errors):
    trace, now = os.urandom(16).hex(), time.time_ns()
    root, group, other = ids(3)
    kids = ids(180)

    def kid(n: int) -> dict:
        return span(trace, kids[n], group, name=f"item-{n:03d}", start=now + 10 + n,
                    end=now + 20 + n)

    send_spans(tasktree_server.otlp_http, [
        span(trace, root, name="busy", start=now, end=now + 10**6, running=True),
        span(trace, group, root, name="group", start=now + 1, end=now + 10**6),
        span(trace, other, root, name="other", start=now + 2, end=now + 10**6, running=True),
        *(kid(n) for n in range(150))])
    tasktree_server.wait_folded()
    page = browser_context.new_page()
    page.goto(f"{tasktree_server.web}/runs/{trace}")
    check = expect()
    check(page.locator("#live-state")).to_have_text("live")
    item(page, group).locator(":scope > .row").click()
    more = item(page, group).locator(":scope > .children > .more")
    check(more).to_have_text("load more (100 of 150 shown)")
    more.click()
    check(more).to_be_hidden()
    # The user has reached the end: children that come later show by themselves, in order.
    send_spans(tasktree_server.otlp_http, [kid(n) for n in range(150, 180)])
    names = item(page, group).locator(":scope > .children > [role=treeitem] > .row .name")
    check(names).to_have_count(180)
    assert names.all_text_contents() == [f"item-{n:03d}" for n in range(180)]
    check(more).to_be_hidden()
    # Elsewhere in the run a task ends, then gets a child: the group, ended and unchanged, is
    # not read again (its 180 children were, at every change of the run).
    read = []
    page.on("request", lambda request: f"/tasks/{group}/children" in request.url
            and read.append(request.url))
    send_spans(tasktree_server.otlp_http, [
        span(trace, other, root, name="other", start=now + 2, end=now + 10**6)])
    check(item(page, other).locator(":scope > .row .st")).to_have_text("ok")
    send_spans(tasktree_server.otlp_http, [span(trace, ids(1)[0], other, name="late",
                                                start=now + 3, end=now + 4)])
    check(item(page, other).locator(":scope > .row .kids")).to_have_text("1 child")
    assert read == []
    check(names).to_have_count(180)
    assert page_errors == []


def test_lists_of_failures_and_the_tree_say_why_each_task_failed(
        tasktree_server, browser_context, page_errors):
    trace, now = os.urandom(16).hex(), time.time_ns()
    root, fine, failed = ids(3)
    word = f"why{os.urandom(3).hex()}"
    why = f'OSError: disk full <img src=x onerror="alert(1)"> on /var ({word}) ' + "row 17, " * 30
    short = why[:200] + "…"
    send_spans(tasktree_server.otlp_http, [
        span(trace, root, name="nightly", start=now, end=now + 10**9),
        span(trace, fine, root, name="extract", start=now + 1, end=now + 2),
        span(trace, failed, root, name="load", start=now + 3, end=now + 4, error=why)])
    tasktree_server.wait_folded()
    page = browser_context.new_page()
    check = expect()
    page.goto(f"{tasktree_server.web}/runs/{trace}/tasks?status=error")
    check(page.locator("#listed-tasks tr.task td.why")).to_have_text([short])
    screenshot(page, "failed-tasks.png")
    page.goto(f"{tasktree_server.web}/search?q={word}")
    check(page.locator("#search-tasks tr.task td.why")).to_have_text([short])
    page.goto(f"{tasktree_server.web}/runs/{trace}")
    check(item(page, failed).locator(":scope > .row .why")).to_have_text(short)
    check(item(page, fine).locator(":scope > .row .why")).to_have_count(0)
    screenshot(page, "failed-in-tree.png")
    page.locator("#first-failure").click()
    check(item(page, failed).locator(":scope > .row .why")).to_have_text(short)
    item(page, failed).locator(":scope > .row .name").click()
    check(page.locator(".task-head .message")).to_have_text(why.strip())
    assert page.locator("img[src=x]").count() == 0
    assert page_errors == []


def test_a_task_named_only_blanks_has_a_link_one_can_click(
        tasktree_server, browser_context, page_errors):
    """A name of spaces drew a link with nothing to click in the tree: its id stands in."""
    trace, now = os.urandom(16).hex(), time.time_ns()
    root, blank = ids(2)
    send_spans(tasktree_server.otlp_http, [
        span(trace, root, name="nightly", start=now, end=now + 10**9),
        span(trace, blank, root, name="   ", start=now + 1, end=now + 2)])
    tasktree_server.wait_folded()
    page = browser_context.new_page()
    page.goto(f"{tasktree_server.web}/runs/{trace}")
    check = expect()
    check(item(page, root).locator(":scope > .row .kids")).to_have_text("1 child")
    check(item(page, blank).locator(":scope > .row .name")).to_have_text(blank)
    item(page, blank).locator(":scope > .row .name").click()
    check(page).to_have_url(f"{tasktree_server.web}/runs/{trace}/tasks/{blank}")
    assert page_errors == []
