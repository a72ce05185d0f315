"""The web UI in a real browser (Debian's Chromium through Playwright) against a real
``tasktree serve``: the tree, load more, keys, task detail, search, time range, live updates
and inert XSS payloads.  Few tests, each walking a whole story, to keep the browser time short.
"""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from .support import expect, ids, item, screenshot, send_spans, span

pytestmark = pytest.mark.slow
HOUR_NS = 3600 * 10**9
ZONE = ZoneInfo("Asia/Kolkata")  # the browser context's zone (browser.py)
XSS_NAME = '<img src=x onerror="alert(1)">'
XSS_SCRIPT = "<script>alert(2)</script>"
INJECTED = 'img[src=x], main script:not([type="application/json"])'
"""What a payload would have added to the page had it been parsed as HTML."""
STACK = 'Traceback (most recent call last):\n  File "load.py", line 9\nOSError: disk full'
RECORD_HEAD_STATUSES = """() => {
    window.notReloaded = true;
    window.seen = [];
    const head = document.getElementById('run-head');
    const watch = () => window.seen.push(head.querySelector('[data-field=status]').textContent);
    const all = {subtree: true, childList: true, characterData: true};
    new MutationObserver(watch).observe(head, all);
}"""


def local_input_value(ns: int) -> str:
    """The value a datetime-local input holds for this instant in ZONE: HTML's normalized form,
    which leaves zero seconds out ("…T02:29", not "…T02:29:00")."""
    local = datetime.fromtimestamp(ns // 10**9, ZONE)
    return local.strftime("%Y-%m-%dT%H:%M:%S").removesuffix(":00")


def exception_event(at: int, kind: str, stack: str) -> dict:
    return {"name": "exception", "timeUnixNano": str(at), "attributes": [
        {"key": "exception.type", "value": {"stringValue": kind}},
        {"key": "exception.stacktrace", "value": {"stringValue": stack}}]}


def row_status(page, span_id: str):
    return item(page, span_id).locator(":scope > .row .st .status")


def test_tree_expands_loads_more_answers_keys_and_opens_a_task(tasktree_server, browser_context,
                                                                page_errors):
    trace, now = os.urandom(16).hex(), time.time_ns()
    root, a, b, c, ghost, orphan = ids(6)
    many = ids(250)
    spans = [span(trace, root, name="nightly", start=now, end=now + 10**9),
             span(trace, a, root, name="extract", start=now + 1, end=now + 10**8),
             span(trace, b, root, name="transform", start=now + 2, end=now + 5 * 10**8),
             span(trace, c, root, name="load", start=now + 3, end=now + 6 * 10**8,
                  error="disk full", attributes={"table": "orders"},
                  events=[exception_event(now + 5, "OSError", STACK)]),
             span(trace, orphan, ghost, name="orphan", start=now + 4, end=now + 5)]
    spans += [span(trace, s, b, name=f"chunk-{n:03d}", start=now + 10 + n, end=now + 10**6 + n)
              for n, s in enumerate(many)]
    send_spans(tasktree_server.otlp_http, spans)
    tasktree_server.wait_folded()

    page = browser_context.new_page()
    page.goto(f"{tasktree_server.web}/runs/{trace}")
    check = expect()
    # Opens at the root (shown open) and the missing parent's placeholder.
    check(item(page, root).locator(":scope > .row .rollup")).to_have_text("252 ok · 1 error")
    check(item(page, ghost).locator(":scope > .row .name")).to_have_text(f"missing parent {ghost}")
    check(item(page, c)).to_have_class("node s-error")
    # Expanding loads children a page at a time.
    item(page, b).locator(":scope > .row").click()
    more = item(page, b).locator(":scope > .children > .more")
    check(more).to_have_text("load more (100 of 250 shown)")
    more.click()
    check(more).to_have_text("load more (200 of 250 shown)")
    more.focus()
    page.keyboard.press("Enter")
    check(more).to_be_hidden()
    rows = item(page, b).locator(":scope > .children > [role=treeitem] > .row .name")
    names = rows.all_text_contents()
    assert names == [f"chunk-{n:03d}" for n in range(250)], "children in start order, none twice"
    # Keys: down, left (close), right (open), down into the children, Enter opens the task page.
    item(page, root).focus()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    check(item(page, b)).to_be_focused()
    page.keyboard.press("ArrowLeft")
    check(item(page, b)).to_have_attribute("aria-expanded", "false")
    page.keyboard.press("ArrowDown")
    check(item(page, c)).to_be_focused()
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowRight")
    check(item(page, b)).to_have_attribute("aria-expanded", "true")
    page.keyboard.press("ArrowRight")
    check(item(page, many[0])).to_be_focused()
    page.keyboard.press("ArrowLeft")
    check(item(page, b)).to_be_focused()
    screenshot(page, "run-page.png")
    item(page, c).focus()
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/runs/{trace}/tasks/{c}")
    check(page.locator(".task-head .message")).to_have_text("disk full")
    # The failure (type, message, stack trace) comes first, above the attribute tables.
    check(page.locator("#failure .message")).to_have_text("OSError")  # (the event has no message)
    check(page.locator("#failure pre.stack")).to_contain_text('File "load.py", line 9')
    check(page.locator("table.kv").first).to_contain_text("orders")
    failure_top = page.locator("#failure").bounding_box()["y"]
    assert failure_top < page.locator("table.kv").first.bounding_box()["y"]
    # Times are in the browser's zone, with UTC on hover.
    started, start_ns = page.locator("dl.facts time").first, now + 3  # task c's start
    local = datetime.fromtimestamp(start_ns // 10**9, ZONE).strftime("%Y-%m-%d %H:%M:%S")
    check(started).to_contain_text(local)
    utc = datetime.fromtimestamp(start_ns // 10**9, UTC)
    check(started).to_have_attribute("title", f"{utc:%Y-%m-%d %H:%M:%S}.{start_ns % 10**9:09d} UTC")
    # The zone is named once, in the header (ICU may call Kolkata by its old name).
    zone = re.compile(r"times in Asia/(Kolkata|Calcutta) \(UTC\+05:30\)")
    check(page.locator("#time-zone")).to_have_text(zone)
    assert page_errors == []


def test_runs_list_filters_by_time_range_and_search_finds_ids_and_words(
        tasktree_server, browser_context, page_errors):
    job, now = f"ui-{os.urandom(4).hex()}", time.time_ns()
    old_trace, new_trace = os.urandom(16).hex(), os.urandom(16).hex()
    old_root, new_root, leaf = ids(3)
    word = f"needle{os.urandom(3).hex()}"
    send_spans(tasktree_server.otlp_http, [
        span(old_trace, old_root, name="old-run", start=now - 72 * HOUR_NS, end=now - 71 * HOUR_NS),
        span(new_trace, new_root, name="new-run", start=now - HOUR_NS, end=now),
        span(new_trace, leaf, new_root, name="step", start=now - HOUR_NS + 1, end=now - 1,
             attributes={"note": f"found the {word} here"}),
    ], job=job)
    tasktree_server.wait_folded()
    page = browser_context.new_page()
    check = expect()
    page.goto(f"{tasktree_server.web}/?job={job}")
    check(page.locator("tr.run")).to_have_count(2)
    screenshot(page, "runs-list.png")
    since = local_input_value(now - 24 * HOUR_NS)
    page.fill("#f-from", since)
    page.click("#f-apply")
    check(page.locator("tr.run")).to_have_count(1)
    check(page.locator("tr.run .name")).to_have_text("new-run")
    check(page.locator("#f-from")).to_have_value(since)  # kept, in local time
    page.fill("#f-from", "")
    page.fill("#f-to", since)
    page.click("#f-apply")
    check(page.locator("tr.run .name")).to_have_text("old-run")
    # The search box: a whole run id opens the run, a task id prefix lists it, words find it.
    for query, expected_url in ((new_trace, f"**/runs/{new_trace}"),
                                (leaf, f"**/runs/{new_trace}/tasks/{leaf}")):
        page.fill("#search-box", query)
        page.press("#search-box", "Enter")
        page.wait_for_url(expected_url)
    page.fill("#search-box", leaf[:9])
    page.press("#search-box", "Enter")
    check(page.locator("#search-tasks tr.task .name")).to_have_text(["step"])
    page.fill("#search-box", word)
    page.press("#search-box", "Enter")
    check(page.locator("#search-tasks tr.task .name")).to_have_text(["step"])
    page.locator("#search-tasks tr.task .name a").click()
    page.wait_for_url(f"**/runs/{new_trace}/tasks/{leaf}")
    assert page_errors == []


def test_older_runs_link_follows_the_live_refreshed_list(tasktree_server, browser_context,
                                                          page_errors):
    job, now = f"ui-older-{os.urandom(4).hex()}", time.time_ns()
    traces = [os.urandom(16).hex() for _ in range(60)]

    def runs(first: int, last: int) -> list[dict]:
        return [span(traces[n], ids(1)[0], name=f"run-{n:02d}", start=now + n * 10**9,
                     end=now + n * 10**9 + 1) for n in range(first, last)]

    send_spans(tasktree_server.otlp_http, runs(0, 50), job=job)
    tasktree_server.wait_folded()
    page = browser_context.new_page()
    check = expect()
    page.goto(f"{tasktree_server.web}/?job={job}")
    check(page.locator("#live-state")).to_have_text("live")
    check(page.locator("#next-page")).to_be_hidden()  # all 50 fit on the page
    send_spans(tasktree_server.otlp_http, runs(50, 55), job=job)
    check(page.locator("tr.run .name").first).to_have_text("run-54", timeout=5000)
    check(page.locator("tr.run .name").last).to_have_text("run-05")
    page.click("#next-page")  # shown by the refresh, and going on from run-05
    check(page.locator("tr.run .name")).to_have_text([f"run-{n:02d}" for n in range(4, -1, -1)])
    # A link there from the start: after five more runs it goes on from run-10, not from run-05.
    page.goto(f"{tasktree_server.web}/?job={job}")
    check(page.locator("#live-state")).to_have_text("live")
    send_spans(tasktree_server.otlp_http, runs(55, 60), job=job)
    check(page.locator("tr.run .name").last).to_have_text("run-10", timeout=5000)
    page.click("#next-page")
    check(page.locator("tr.run .name")).to_have_count(10)
    check(page.locator("tr.run .name").first).to_have_text("run-09")
    assert page_errors == []


def test_running_task_turns_ok_live_without_reload_or_flicker(tasktree_server, browser_context,
                                                               page_errors):
    trace, now = os.urandom(16).hex(), time.time_ns()
    root, child, late_parent, orphan = ids(4)
    job = f"ui-live-{os.urandom(4).hex()}"
    send_spans(tasktree_server.otlp_http, [
        span(trace, root, name="live-job", start=now, end=now + 10**6, running=True),
        span(trace, child, root, name="first-step", start=now + 1, end=now + 10**5),
        span(trace, orphan, late_parent, name="orphan", start=now + 3, end=now + 4)], job=job)
    tasktree_server.wait_folded()
    runs = browser_context.new_page()
    runs.goto(f"{tasktree_server.web}/?job={job}")
    page = browser_context.new_page()
    page.goto(f"{tasktree_server.web}/runs/{trace}")
    check = expect()
    check(row_status(page, root)).to_have_text("running")
    check(row_status(page, late_parent)).to_have_text("missing")
    check(item(page, root).locator(":scope > .row .hb")).to_contain_text("heartbeat")
    check(page.locator("#live-state")).to_have_text("live")
    check(runs.locator("#live-state")).to_have_text("live")
    page.evaluate(RECORD_HEAD_STATUSES)
    send_spans(tasktree_server.otlp_http, [
        span(trace, root, name="live-job", start=now, end=now + 2 * 10**9),
        # a running snapshot arriving after the final record: must change nothing
        span(trace, child, root, name="first-step", start=now + 1, end=now + 10**5, running=True),
        span(trace, late_parent, root, name="late-parent", start=now + 2, end=now + 5),
    ], job=job)
    check(row_status(page, root)).to_have_text("ok", timeout=5000)
    check(page.locator("#run-head [data-field=status]")).to_have_text("ok")
    check(item(page, root).locator(":scope > .row .dur")).to_have_text("2 s")
    check(runs.locator("tr.run .status")).to_have_text("ok", timeout=5000)
    check(row_status(page, child)).to_have_text("ok")  # the late snapshot changed nothing
    # The missing parent arrived: its placeholder is gone and it shows under the root instead.
    check(page.locator(f'#tree > [data-span-id="{late_parent}"]')).to_have_count(0)
    check(item(page, root).locator(f'[data-span-id="{late_parent}"] > .row .name')).to_have_text(
        "late-parent")
    assert page.evaluate("window.notReloaded") is True
    seen = page.evaluate("window.seen")
    assert "ok" in seen and "running" not in seen[seen.index("ok"):], seen
    assert page_errors == []


SET_HIDDEN = """(hidden) => {
    const state = hidden ? "hidden" : "visible";
    for (const [name, value] of [["hidden", hidden], ["visibilityState", state]]) {
        Object.defineProperty(document, name, {value, configurable: true});
    }
    document.dispatchEvent(new Event("visibilitychange"));
}"""
"""Make the page report itself hidden (a background tab) or shown, as a browser does: headless
Chromium keeps every page visible, and no DevTools call changes that."""


def test_background_tabs_free_their_connections_and_catch_up_when_shown_again(
        tasktree_server, browser_context, page_errors):
    job = f"ui-tabs-{os.urandom(4).hex()}"
    send_spans(tasktree_server.otlp_http, [span(os.urandom(16).hex(), ids(1)[0], name="first")],
               job=job)
    tasktree_server.wait_folded()
    check = expect()
    tabs = []
    for _ in range(6):  # as many as the browser's connections to one host (HTTP/1.1)
        tab = browser_context.new_page()
        tab.goto(f"{tasktree_server.web}/?job={job}")
        check(tab.locator("#live-state")).to_have_text("live")
        tabs.append(tab)
    for tab in tabs:
        tab.evaluate(SET_HIDDEN, True)
    seventh = browser_context.new_page()
    # With the six streams held, no connection would be left for this page: it would never load.
    seventh.goto(f"{tasktree_server.web}/?job={job}", timeout=5000)
    check(seventh.locator("#live-state")).to_have_text("live")
    send_spans(tasktree_server.otlp_http, [span(os.urandom(16).hex(), ids(1)[0], name="second")],
               job=job)
    check(seventh.locator("tr.run .name")).to_have_text(["second", "first"], timeout=5000)
    tasktree_server.wait_folded()
    time.sleep(0.5)
    assert tabs[0].locator("tr.run").count() == 1  # hidden: not following
    tabs[0].evaluate(SET_HIDDEN, False)
    check(tabs[0].locator("tr.run .name")).to_have_text(["second", "first"], timeout=5000)
    check(tabs[0].locator("#live-state")).to_have_text("live")
    assert page_errors == []


MIRRORED = """(selector) => [...document.querySelectorAll(selector)].filter((node) => {
    // The letters of the node, in text order, must stand left to right on the (single) line.
    const range = document.createRange(), lefts = [];
    const walker = document.createTreeWalker(node, NodeFilter.SHOW_TEXT);
    for (let text = walker.nextNode(); text; text = walker.nextNode()) {
        for (let i = 0; i < text.length; i++) {
            if (!/[a-z]/i.test(text.data[i])) continue;
            range.setStart(text, i);
            range.setEnd(text, i + 1);
            lefts.push(range.getBoundingClientRect().left);
        }
    }
    return lefts.some((left, i) => i > 0 && left <= lefts[i - 1]);
}).map((node) => node.textContent)"""
"""The text of the nodes matching a selector that do not read left to right."""
RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: what follows it, to the end of its paragraph, is mirrored


def test_a_right_to_left_override_in_a_name_leaves_the_text_after_it_in_order(
        tasktree_server, browser_context, page_errors):
    trace, now = os.urandom(16).hex(), time.time_ns()
    top, middle, leaf = ids(3)
    send_spans(tasktree_server.otlp_http, [
        span(trace, top, name=f"top{RLO}", start=now, end=now + 10),
        span(trace, middle, top, name="payments-approved", start=now + 1, end=now + 9,
             events=[exception_event(now + 2, f"OSError{RLO}", STACK)]),
        span(trace, leaf, middle, name="leaf", start=now + 2, end=now + 8)])
    tasktree_server.wait_folded()
    page = browser_context.new_page()
    page.goto(f"{tasktree_server.web}/runs/{trace}/tasks/{leaf}")
    expect()(page.locator("nav.crumbs a")).to_have_count(3)
    assert page.evaluate(MIRRORED, "nav.crumbs") == []
    page.goto(f"{tasktree_server.web}/runs/{trace}?node={leaf}")
    expect()(page.locator("nav.crumbs a")).to_have_count(3)
    assert page.evaluate(MIRRORED, "nav.crumbs") == []
    page.goto(f"{tasktree_server.web}/runs/{trace}/tasks/{middle}")
    assert page.evaluate(MIRRORED, ".events p.message") == []  # "OSError‮: disk full"
    assert page_errors == []


def test_xss_payloads_in_span_fields_stay_inert_text(tasktree_server, browser_context, page_errors):
    trace, now = os.urandom(16).hex(), time.time_ns()
    root, child = ids(2)
    job = f"ui-xss-{os.urandom(4).hex()}"
    send_spans(tasktree_server.otlp_http, [
        span(trace, root, name=XSS_NAME, start=now, end=now + 10**6, error=XSS_SCRIPT,
             attributes={XSS_SCRIPT: XSS_NAME}),
        span(trace, child, root, name=XSS_SCRIPT, start=now + 1, end=now + 2,
             events=[{"name": XSS_NAME, "timeUnixNano": str(now + 1), "attributes": []}]),
    ], job=job)
    tasktree_server.wait_folded()
    page = browser_context.new_page()
    check = expect()
    for url, shows in ((f"/?job={job}", XSS_NAME), (f"/runs/{trace}", XSS_SCRIPT),
                       (f"/runs/{trace}/tasks/{root}", XSS_SCRIPT),
                       ("/search?q=%22alert%22", XSS_NAME)):
        page.goto(tasktree_server.web + url)
        check(page.get_by_text(shows, exact=True).first).to_be_visible()
        page.wait_for_timeout(300)  # an onerror would have fired by now
        assert page.locator(INJECTED).count() == 0, url
    # Rows drawn by the scripts (a live refresh of the runs list) stay text too.
    page.goto(f"{tasktree_server.web}/?job={job}")
    check(page.locator("#live-state")).to_have_text("live")
    send_spans(tasktree_server.otlp_http, [span(trace, child, root, name=XSS_SCRIPT, start=now + 1,
                                                end=now + 3)], job=job)
    check(page.locator("tr.run .name")).to_have_text(XSS_NAME)
    page.wait_for_timeout(300)
    assert page.locator("img[src=x]").count() == 0
    assert page_errors == [], "no dialog, no script error"


def test_a_running_task_page_ticks_its_elapsed_time_and_shows_its_progress_bar(
        tasktree_server, browser_context, page_errors):
    trace, now = os.urandom(16).hex(), time.time_ns()
    (task,) = ids(1)
    progress = {"tasktree.progress": 0.4, "tasktree.progress.done": 4,
                "tasktree.progress.total": 10}
    send_spans(tasktree_server.otlp_http, [
        span(trace, task, name="crunch", start=now - 90 * 10**9, end=now, running=True,
             attributes=progress)])
    tasktree_server.wait_folded()
    page = browser_context.new_page()
    page.goto(f"{tasktree_server.web}/runs/{trace}/tasks/{task}")
    check = expect()
    check(page.locator("[data-field=progress] progress")).to_have_attribute("value", "0.4")
    check(page.locator("[data-field=progress]")).to_have_text("40 % (4 of 10)")
    elapsed = page.locator("[data-field=duration]")
    check(elapsed).to_have_text(re.compile(r"^1m 3\d+s so far$"))  # started 90 s ago
    first = elapsed.text_content()
    check(elapsed).not_to_have_text(first, timeout=5000)  # it ticks
    # A later heartbeat with more done: the page's script redraws the bar, no reload.
    later = {**progress, "tasktree.progress": 0.7, "tasktree.progress.done": 7}
    send_spans(tasktree_server.otlp_http, [
        span(trace, task, name="crunch", start=now - 90 * 10**9, end=time.time_ns(),
             running=True, attributes=later)])
    check(page.locator("[data-field=progress]")).to_have_text("70 % (7 of 10)", timeout=15000)
    assert page_errors == []


def test_every_one_of_5000_top_level_tasks_is_reached_by_scrolling_and_load_more(
        tasktree_server, browser_context, page_errors):
    trace, now = os.urandom(16).hex(), time.time_ns()
    tops = ids(5000)
    for at in range(0, len(tops), 1000):  # a run whose tasks all declare no parent
        send_spans(tasktree_server.otlp_http, [
            span(trace, s, name=f"top-{n:04d}", start=now + n, end=now + n + 10**6)
            for n, s in enumerate(tops[at:at + 1000], start=at)])
    tasktree_server.wait_folded()
    page = browser_context.new_page()
    page.goto(f"{tasktree_server.web}/runs/{trace}")
    check = expect()
    rows = page.locator("#tree > [role=treeitem].node")
    check(rows).to_have_count(100)
    more = page.locator("#tree > .more")
    for shown in range(200, 5001, 100):
        more.scroll_into_view_if_needed()
        more.click()
        check(rows).to_have_count(shown)
    check(more).to_be_hidden()
    rows.last.scroll_into_view_if_needed()
    names = page.locator("#tree > [role=treeitem] > .row .name").all_text_contents()
    assert names == [f"top-{n:04d}" for n in range(5000)], "in start order, none twice"
    assert page_errors == []


def test_a_nodes_error_count_leads_to_its_failed_tasks_and_the_run_page_steps_through_failures(
        tasktree_server, browser_context, page_errors):
    trace, now = os.urandom(16).hex(), time.time_ns()
    root, mid, other = ids(3)
    failed, fine, elsewhere = ids(5), ids(3), ids(2)
    # Children first, as many SDKs send them: their parents' placeholders, then the parents
    # arrive and the subtrees move under them (the paths of the failures move with them).
    send_spans(tasktree_server.otlp_http, [
        *(span(trace, s, mid, name=f"fail-{n}", start=now + 10 + n, end=now + 20 + n,
               error=f"boom {n}") for n, s in enumerate(failed)),
        *(span(trace, s, mid, name=f"fine-{n}", start=now + 30 + n, end=now + 40 + n)
          for n, s in enumerate(fine)),
        *(span(trace, s, other, name=f"elsewhere-{n}", start=now + 50 + n, end=now + 60 + n,
               error="far") for n, s in enumerate(elsewhere))])
    tasktree_server.wait_folded()
    send_spans(tasktree_server.otlp_http, [
        span(trace, root, name="nightly", start=now, end=now + 10**9),
        span(trace, mid, root, name="mid", start=now + 1, end=now + 10**8),
        span(trace, other, root, name="other", start=now + 2, end=now + 10**8)])
    tasktree_server.wait_folded()
    page = browser_context.new_page()
    page.goto(f"{tasktree_server.web}/runs/{trace}")
    check = expect()
    count = item(page, mid).locator(":scope > .row .rollup a.r-error")
    check(count).to_have_text("5 error")
    count.click()
    page.wait_for_url(f"**/runs/{trace}/tasks?node={mid}&status=error")
    check(page.locator("#list-head")).to_contain_text("5 error tasks in the subtree of mid")
    names = page.locator("#listed-tasks tr.task .name")
    check(names).to_have_text([f"fail-{n}" for n in reversed(range(5))])  # newest first
    names.first.locator("a").click()
    page.wait_for_url(f"**/runs/{trace}/tasks/{failed[4]}")
    # The root's count: the failures of both subtrees that moved under it when their parents came.
    page.goto(f"{tasktree_server.web}/runs/{trace}")
    item(page, root).locator(":scope > .row .rollup a.r-error").click()
    check(names).to_have_count(7)
    # The run page steps through the run's failures, oldest first, each shown in its place.
    page.goto(f"{tasktree_server.web}/runs/{trace}")
    check(page.locator("#run-head [data-field=counts] a.r-error")).to_have_text("7 error")
    page.locator("#first-failure").click()
    for n, expected in enumerate([*failed, *elsewhere]):
        page.wait_for_url(re.compile(rf".*/runs/{trace}\?node={expected}&failure=.*"))
        check(item(page, expected)).to_have_class("node s-error")
        if n < 6:
            page.locator("#next-failure").click()
    check(page.locator("#failure-nav")).to_contain_text("the last failure")
    assert page_errors == []


def test_search_page_filters_by_status_job_and_time_and_keeps_them_in_the_url(
        tasktree_server, browser_context, page_errors):
    trace, now, job = os.urandom(16).hex(), time.time_ns(), f"ui-search-{os.urandom(4).hex()}"
    word = f"haystack{os.urandom(3).hex()}"
    root, old_fail, new_fail, fine = ids(4)
    send_spans(tasktree_server.otlp_http, [
        span(trace, root, name=f"{word} root", start=now - 72 * HOUR_NS, end=now),
        span(trace, old_fail, root, name=f"{word} old", start=now - 48 * HOUR_NS,
             end=now - 47 * HOUR_NS, error="old"),
        span(trace, new_fail, root, name=f"{word} new", start=now - HOUR_NS, end=now - 1,
             error="new"),
        span(trace, fine, root, name=f"{word} fine", start=now - HOUR_NS, end=now - 1)], job=job)
    tasktree_server.wait_folded()
    page = browser_context.new_page()
    check = expect()
    page.goto(f"{tasktree_server.web}/search?q={word}")
    names = page.locator("#search-tasks tr.task .name")
    check(names).to_have_count(4)
    page.select_option("#f-status", "error")
    page.fill("#f-job", job)
    page.click("#f-apply")
    check(names).to_have_text([f"{word} new", f"{word} old"])
    page.wait_for_load_state()  # the rows show before the page's script has run
    # On a whole minute, so that the form shows it without seconds (the runs page's test takes
    # whatever second it is).
    minute_ns = 60 * 10**9
    since = local_input_value((now - 24 * HOUR_NS) // minute_ns * minute_ns)
    assert since.count(":") == 1
    page.fill("#f-from", since)
    page.click("#f-apply")
    check(names).to_have_text([f"{word} new"])
    assert f"q={word}" in page.url and "status=error" in page.url and f"job={job}" in page.url
    page.reload()  # kept in the URL: the same list and the same form
    check(names).to_have_text([f"{word} new"])
    check(page.locator("#f-from")).to_have_value(since)
    check(page.locator("#f-status")).to_have_value("error")
    # A time put in with no change event (typed before the script ran, or filled in by the
    # browser) counts too: the times are converted as the form is sent.
    earlier = local_input_value(now - 60 * HOUR_NS)
    page.locator("#f-from").evaluate("(input, value) => { input.value = value; }", earlier)
    page.click("#f-apply")
    check(names).to_have_text([f"{word} new", f"{word} old"])
    assert page_errors == []
