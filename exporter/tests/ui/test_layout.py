"""What the pages show on a phone, a small laptop and a wide screen, with very long names, and
for a stalled task (a real browser against a real ``tasktree serve``, as test_browser.py)."""

from __future__ import annotations

import os
import re
import time

import pytest

from .browser import ARTIFACTS
from .support import send_spans, span

pytestmark = pytest.mark.slow
SECOND_NS = 10**9
PHONE = {"width": 390, "height": 844}
LAPTOP = {"width": 1024, "height": 768}


def expect():
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))


def row(page, span_id: str):
    return page.locator(f'[role=treeitem][data-span-id="{span_id}"] > .row')


def stalled_run(server) -> tuple[str, str, str]:
    """A run whose root has one finished child and one stalled child (its process died ten
    minutes ago): (trace, root, stalled child)."""
    trace, now = os.urandom(16).hex(), time.time_ns()
    root, done, doomed = (os.urandom(8).hex() for _ in range(3))
    start = now - 700 * SECOND_NS
    send_spans(server.otlp_http, [
        span(trace, root, name="nightly", start=start, end=now),
        span(trace, done, root, name="extract", start=start + 1, end=start + 5 * SECOND_NS),
        span(trace, doomed, root, name="doomed", start=start + 2, running=True,
             end=start + 100 * SECOND_NS),  # its last heartbeat
    ], job="layout-tests")
    server.wait_folded()
    return trace, root, doomed


def no_sideways_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= innerWidth")


def inside(inner: dict, outer: dict) -> bool:
    return (inner["x"] >= outer["x"] and inner["y"] >= outer["y"]
            and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + 0.5
            and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + 0.5)


def test_on_a_phone_the_tree_shows_every_column_and_the_counts_can_be_tapped(
        tasktree_server, browser_context, page_errors):
    trace, root, doomed = stalled_run(tasktree_server)
    page = browser_context.new_page()
    page.set_viewport_size(PHONE)
    page.goto(f"{tasktree_server.web}/runs/{trace}")
    check = expect()
    doomed_row = row(page, doomed)
    check(doomed_row.locator(".hb")).to_contain_text("no heartbeat for")
    screenshot(page, "layout_phone_run.png")
    assert no_sideways_scroll(page), "the page is wider than the phone"
    header = page.locator("header.top").bounding_box()
    for part in ("#search-box", "header .search button", "#live-state"):
        check(page.locator(part)).to_be_visible()
        assert inside(page.locator(part).bounding_box(), header), f"{part} outside the dark bar"
    for part in (".st", ".dur", "time", ".kids", ".rollup", ".wf"):
        check(row(page, root).locator(part)).to_be_in_viewport()
    for part in (".hb", "time", ".rollup"):
        check(doomed_row.locator(part)).to_be_in_viewport()
    row(page, root).get_by_role("link", name="1 stalled").click()
    check(page).to_have_url(f"{tasktree_server.web}/runs/{trace}/tasks?node={root}&status=stalled")
    check(page.locator("main")).to_contain_text("doomed")
    # Its page: the attributes' values get the room, not their names.
    page.get_by_role("link", name="doomed").click()
    state = page.locator("table.kv tr", has_text="tasktree.state")
    assert state.locator("td").bounding_box()["width"] > state.locator("th").bounding_box()["width"]
    assert no_sideways_scroll(page)
    assert page_errors == []


def test_on_a_phone_the_runs_list_fits_with_its_counts(tasktree_server, browser_context,
                                                       page_errors):
    trace, _, _ = stalled_run(tasktree_server)
    page = browser_context.new_page()
    page.set_viewport_size(PHONE)
    page.goto(f"{tasktree_server.web}/?job=layout-tests")
    run = page.locator(f'tr.run[data-trace-id="{trace}"]')
    check = expect()
    check(run.get_by_role("link", name="nightly")).to_be_in_viewport()
    check(run.get_by_role("link", name="1 stalled")).to_be_in_viewport()
    screenshot(page, "layout_phone_runs.png")
    assert no_sideways_scroll(page), "the runs list is wider than the phone"
    assert page_errors == []


def test_on_a_small_laptop_the_waterfall_and_the_heartbeat_are_whole(tasktree_server,
                                                                     browser_context, page_errors):
    trace, root, doomed = stalled_run(tasktree_server)
    page = browser_context.new_page()
    page.set_viewport_size(LAPTOP)
    page.goto(f"{tasktree_server.web}/runs/{trace}")
    check = expect()
    beat = row(page, doomed).locator(".hb")
    check(beat).to_contain_text("no heartbeat for")
    screenshot(page, "layout_laptop_run.png")
    assert no_sideways_scroll(page)
    whole = "e => e.scrollWidth <= e.clientWidth && e.scrollHeight <= e.clientHeight"
    assert beat.evaluate(whole), "the heartbeat's text is cut"
    assert row(page, root).locator(".wf").bounding_box()["width"] >= 100
    check(row(page, root).locator(".rollup")).to_be_in_viewport()
    assert page_errors == []


def test_on_a_wide_screen_each_row_is_one_line(tasktree_server, browser_context, page_errors):
    trace, root, doomed = stalled_run(tasktree_server)
    page = browser_context.new_page()  # 1400 px wide (browser.py)
    page.goto(f"{tasktree_server.web}/runs/{trace}")
    check = expect()
    check(row(page, doomed).locator(".hb")).to_contain_text("no heartbeat for")
    for span_id in (root, doomed):
        name = row(page, span_id).locator(".name").bounding_box()
        for part in (".st", ".rollup", ".wf"):
            box = row(page, span_id).locator(part).bounding_box()
            assert box["x"] > name["x"] + name["width"], (part, "right of the name")
            assert abs(box["y"] + box["height"] / 2 - (name["y"] + name["height"] / 2)) < 8, \
                (part, "on the name's line")
    assert page_errors == []


def test_one_very_long_job_or_run_name_is_cut_in_the_runs_list_not_stretching_it(
        tasktree_server, browser_context, page_errors):
    now, long_job, long_name = time.time_ns(), "J" * 300, "Long run name " + "word " * 2000 + "end"
    short, long = os.urandom(16).hex(), os.urandom(16).hex()
    send_spans(tasktree_server.otlp_http, [span(short, os.urandom(8).hex(), name="short run name",
                                                start=now - SECOND_NS, end=now)])
    send_spans(tasktree_server.otlp_http, [span(long, os.urandom(8).hex(), name=long_name,
                                                start=now, end=now + SECOND_NS)], job=long_job)
    tasktree_server.wait_folded()
    page = browser_context.new_page()
    page.goto(f"{tasktree_server.web}/")
    check = expect()
    long_row = page.locator(f'tr.run[data-trace-id="{long}"]')
    short_row = page.locator(f'tr.run[data-trace-id="{short}"]')
    check(long_row).to_be_visible()
    screenshot(page, "layout_long_names.png")
    assert no_sideways_scroll(page), "the runs list is wider than the window"
    line = short_row.bounding_box()["height"]
    assert line < 40, "a short name's row is one line"
    assert long_row.bounding_box()["height"] <= line + 1, "the long names are cut to one line"
    # Each whole on hover (compared here, not in Playwright's message: 10,000 characters).
    assert long_row.locator("td.name").get_attribute("title") == long_name
    assert long_row.locator("td.job").get_attribute("title") == long_job
    assert page_errors == []


def test_a_task_page_cuts_a_very_long_name_and_message_and_shows_them_on_demand(
        tasktree_server, browser_context, page_errors):
    trace, task, now = os.urandom(16).hex(), os.urandom(8).hex(), time.time_ns()
    name, message = "N" * 10_000, "disk full " * 350
    send_spans(tasktree_server.otlp_http, [span(trace, task, name=name, start=now - SECOND_NS,
                                                end=now, error=message)])
    tasktree_server.wait_folded()
    page = browser_context.new_page()
    page.goto(f"{tasktree_server.web}/runs/{trace}/tasks/{task}")
    check = expect()
    screenshot(page, "layout_task_long_top.png")
    for fact in ("task id", "run id", "start", "duration"):
        check(page.locator("dl.facts dt", has_text=fact).first).to_be_in_viewport()
    check(page.get_by_text(task, exact=True).first).to_be_in_viewport()
    title = page.locator("h1")
    assert title.bounding_box()["height"] < 150
    page.get_by_role("button", name="show all (10,000 characters)").click()
    assert title.bounding_box()["height"] > 900, "the whole name shows"
    check(page.get_by_role("button", name="show less")).to_be_visible()
    page.get_by_role("button", name="show all (3,500 characters)").click()
    check(page.locator("#task-message")).to_have_text(message.strip())
    assert page_errors == []


def test_a_stalled_task_page_shows_how_long_it_ran_and_says_it_stalled(
        tasktree_server, browser_context, page_errors):
    trace, _, doomed = stalled_run(tasktree_server)
    page = browser_context.new_page()
    page.goto(f"{tasktree_server.web}/runs/{trace}/tasks/{doomed}")
    check = expect()
    duration = page.locator("[data-field=duration]")
    check(duration).to_have_text(re.compile(r"^ran at least 1m 40s; no heartbeat for 10m \d\ds$"))
    check(page.locator("#stalled-note")).to_be_visible()
    check(page.locator("#stalled-note")).to_contain_text("tasktree.state is what it last reported")
    screenshot(page, "layout_task_stalled.png")
    assert page_errors == []
