"""Pages that keep following a live job in a real browser: the runs list and the run's tree keep
what the user is doing (focus, selection, keys) and show what arrives; lists of failures say why.
"""

from __future__ import annotations

import os
import time

import pytest

from .support import send_spans, span
from .test_browser import expect, ids, item

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
