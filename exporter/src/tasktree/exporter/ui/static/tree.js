// The run page: a lazy task tree (WAI-ARIA tree view) over the JSON API.
//
// The page embeds the run, its top-level tasks and the first page of children of the node shown
// open (#tree-data, the API's own shapes).  Expanding a node fetches its children a page at a
// time ("load more"); only what is expanded is ever in the DOM, so a node with 100,000 children
// costs one page.  On each live "changed" event the page re-reads what it shows and may have
// changed (the run, the top-level tasks, the loaded children of expanded nodes: readShown) and
// patches the rows in place.
"use strict";

(() => {
  const {el} = TT;
  const HEARTBEAT_FETCHES = 50;  // running rows whose heartbeat is looked up per refresh
  const HEARTBEAT_EVERY_MS = 5000;

  const data = JSON.parse(document.getElementById("tree-data").textContent);
  const trace = data.trace_id;
  const pageSize = data.page_size;
  // span id -> state {node, item, row, group, more, expanded, kids, cursor, marks, readAs, level}
  const nodes = new Map();
  const FIRST_PAGE = {at: 0, cursor: null};  // a mark (readShown): the list's start
  // The run's top-level tasks, paged like children (``GET /api/runs/{trace}``'s roots).
  const top = {kids: [], group: null, more: null, level: 0, expanded: true, cursor: null,
               marks: [FIRST_PAGE]};
  let tree;
  let chain = Promise.resolve();

  /** Run ``work`` after every earlier one: a live refresh never interleaves with "load more". */
  function exclusive(work) {
    const next = chain.then(work, work);
    chain = next.catch(() => {});
    return next;
  }

  // -- one row --------------------------------------------------------------------------------

  function createItem(node, parent) {
    const level = parent.level + 1;
    const item = el("div", {role: "treeitem", class: "node", "aria-level": level, tabindex: "-1",
                            "data-span-id": node.span_id});
    const row = el("div", {class: "row"});
    item.append(row);
    const state = {node: null, item, row, group: null, more: null, expanded: false, kids: [],
                   cursor: null, marks: [FIRST_PAGE], readAs: null, level, parent, heartbeat: null,
                   bar: el("span", {class: "bar"})};
    nodes.set(node.span_id, state);
    updateItem(state, node);
    return state;
  }

  /** Redraw a row from ``node`` (same shape as the API's node); keeps expansion and focus. */
  function updateItem(state, node) {
    state.node = node;
    const {item, row} = state;
    item.className = `node s-${node.status}`;
    if (node.child_count > 0) item.setAttribute("aria-expanded", String(state.expanded));
    else item.removeAttribute("aria-expanded");
    // A blank name ("   ") would leave a link with nothing to click: the id stands in.
    const name = node.missing ? `missing parent ${node.span_id}` : (node.name?.trim() ? node.name : node.span_id);
    const link = el("a", {class: "name", href: `/runs/${trace}/tasks/${node.span_id}`, tabindex: "-1"}, name);
    const kids = node.child_count ? `${TT.number(node.child_count)} ${node.child_count === 1 ? "child" : "children"}` : "";
    // Why it failed, beside the name (the API's short form; the task's page has it whole).
    const why = node.status_message ? el("span", {class: "why", title: node.status_message},
      node.status_message) : "";
    row.replaceChildren(
      el("span", {class: "twisty", "aria-hidden": "true"}, node.child_count ? "▸" : ""),
      el("span", {class: "dot", "aria-hidden": "true"}),
      el("span", {class: "label"}, link, why),
      el("span", {class: "meta"},
        refusedMark(node.refused_parent),
        el("span", {class: "st"}, TT.status(node.status)),
        el("span", {class: "dur"}, node.duration !== null ? TT.duration(node.duration) : ""),
        node.start ? TT.time(node.start) : el("time"),
        el("span", {class: "hb"}),
        el("span", {class: "kids muted"}, kids),
        TT.rollup(node.counts, TT.listUrl(trace, node.span_id))),
      el("span", {class: "wf", "aria-hidden": "true"}, state.bar));
    drawHeartbeat(state);
  }

  /** A task shown at the top although it declared a parent (tree.fold's refused links). */
  function refusedMark(refused) {
    if (!refused) return "";
    const why = refused.reason === "cycle" ? "its declared parents loop"
      : "it would pass the server's depth limit (TASKTREE_MAX_DEPTH)";
    return el("span", {class: "refused", title: `declared parent ${refused.span_id}: ${why}`},
      `⚠ parent ${refused.span_id} refused (${refused.reason})`);
  }

  function drawHeartbeat(state) {
    const slot = state.row.querySelector(".hb");
    const {node} = state;
    if (node.status !== "running" && node.status !== "stalled") { slot.textContent = ""; return; }
    const beat = TT.parseTime(node.last_heartbeat || state.heartbeat);
    if (!beat) { slot.textContent = ""; return; }
    slot.textContent = `${node.status === "stalled" ? "no heartbeat for" : "heartbeat"} ${TT.age(Date.now() - beat)}${node.status === "stalled" ? "" : " ago"}`;
  }

  // -- children: expand, load more, reconcile --------------------------------------------------

  function ensureGroup(state) {
    if (state.group) return;
    state.group = el("div", {role: "group", class: "children"});
    // Hidden until a page says there is more: an empty visible one would take the focus of →
    // pressed while the first page loads, and lose it to <body> when hidden.
    state.more = el("div", {role: "treeitem", class: "more", tabindex: "-1", "aria-level": state.level + 1,
                            hidden: true}, "");
    state.more.addEventListener("click", () => loadMore(state));
    state.group.append(state.more);
    state.item.append(state.group);
  }

  /** Put ``list`` (API nodes in display order) under ``parent``, reusing rows by span id;
   *  ``marks``: where its pages start (readShown). */
  function reconcile(parent, list, cursor, marks = [FIRST_PAGE]) {
    ensureGroupFor(parent);
    const keep = new Set(list.map((node) => node.span_id));
    for (const id of parent.kids) {
      if (!keep.has(id)) dropSubtree(id);
    }
    let previous = null;
    parent.kids = list.map((node) => {
      const state = rowUnder(parent, node);
      if (JSON.stringify(state.node) !== JSON.stringify(node)) updateItem(state, node);
      const wanted = previous ? previous.item.nextSibling : parent.group.firstChild;
      if (wanted !== state.item) parent.group.insertBefore(state.item, wanted);
      previous = state;
      return node.span_id;
    });
    parent.cursor = cursor;
    parent.marks = marks;
    parent.readAs = parent.node ? JSON.stringify(parent.node) : null;
    drawMore(parent);
    drawWaterfall(parent);
  }

  /** Add the page read with ``from`` (a cursor) under ``parent`` (rows already shown are left
   *  alone: then the pages no longer start where the marks say, and the next read is whole). */
  function append(parent, list, cursor, from) {
    const known = new Set(parent.kids);
    const rows = document.createDocumentFragment();
    parent.marks.push({at: parent.kids.length, cursor: from});
    for (const node of list) {
      if (known.has(node.span_id)) { parent.marks = [FIRST_PAGE]; continue; }
      const state = rowUnder(parent, node);
      rows.append(state.item);
      parent.kids.push(node.span_id);
    }
    parent.group.insertBefore(rows, parent.more);
    parent.cursor = cursor;
    drawMore(parent);
    drawWaterfall(parent);
  }

  /** The row of ``node`` under ``parent``: reused, or new when absent or shown elsewhere (a
   *  subtree that moved from a missing parent's placeholder to the parent that arrived). */
  function rowUnder(parent, node) {
    const state = nodes.get(node.span_id);
    if (state && state.parent === parent) return state;
    if (state) {
      state.parent.kids = state.parent.kids.filter((id) => id !== node.span_id);
      state.parent.marks = [FIRST_PAGE];  // its list shrank: read it whole next time
      dropSubtree(node.span_id);
    }
    return createItem(node, parent);
  }

  function ensureGroupFor(parent) {
    if (parent === top) return;  // the tree itself (start)
    ensureGroup(parent);
  }

  function dropSubtree(id) {
    const state = nodes.get(id);
    if (!state) return;
    for (const kid of state.kids) dropSubtree(kid);
    state.item.remove();
    nodes.delete(id);
  }

  function drawMore(parent) {
    if (!parent.more) return;  // the top of a subtree page: one task
    const shown = parent.kids.length.toLocaleString("en-US");
    // A run counts its real top-level tasks, not the missing parents' placeholders.
    const of = parent === top ? "" : ` of ${parent.node.child_count.toLocaleString("en-US")}`;
    parent.more.hidden = !parent.cursor;
    parent.more.textContent = parent.cursor ? `load more (${shown}${of} shown)` : "";
  }

  /** A page of ``state``'s children, or of the run's top-level tasks (``top``). */
  async function fetchChildren(state, cursor, limit) {
    const query = `limit=${limit}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
    if (state === top) {
      const run = await TT.api(`/api/runs/${trace}?${query}`);
      return {children: run.roots, next_cursor: run.roots_next_cursor, run};
    }
    return TT.api(`/api/runs/${trace}/tasks/${state.node.span_id}/children?${query}`);
  }

  function expand(state) { return exclusive(() => expandNow(state)); }

  async function expandNow(state) {
    if (!state.node.child_count || state.expanded) return;
    state.expanded = true;
    state.item.setAttribute("aria-expanded", "true");
    ensureGroup(state);
    state.group.hidden = false;
    if (!state.kids.length) {
      const page = data.open[state.node.span_id] || await fetchChildren(state, null, pageSize);
      delete data.open[state.node.span_id];
      reconcile(state, page.children, page.next_cursor);
    } else {  // shown before, not refreshed while closed
      const {list, cursor, marks} = await readShown(state, true);
      reconcile(state, list, cursor, marks);
    }
    fetchHeartbeats();
  }

  function collapse(state) {
    if (!state.expanded) return;
    state.expanded = false;
    state.item.setAttribute("aria-expanded", "false");
    if (state.group) state.group.hidden = true;
  }

  function loadMore(state) { return exclusive(() => loadMoreNow(state)); }

  async function loadMoreNow(state) {
    if (!state.cursor || state.loading) return;
    state.loading = true;
    state.more.textContent = "loading…";
    try {
      const page = await fetchChildren(state, state.cursor, pageSize);
      append(state, page.children, page.next_cursor, state.cursor);
      fetchHeartbeats();
    } finally {
      state.loading = false;
      drawMore(state);
    }
  }

  // -- the waterfall: each expanded node's children against the node's own time span ----------

  function endOf(node, now) {
    if (node.duration !== null && node.start) return TT.parseTime(node.start) + node.duration * 1000;
    return now;
  }

  function drawWaterfall(parent) {
    const now = Date.now();
    const kids = parent.kids.map((id) => nodes.get(id));
    let from, to;
    if (parent === top) {
      from = TT.parseTime(data.run.start);
      to = data.run.end ? TT.parseTime(data.run.end) : now;
    } else {
      from = TT.parseTime(parent.node.start);
      to = endOf(parent.node, now);
    }
    for (const kid of kids) {  // children may outlive or predate their parent (clock skew, missing)
      if (!kid.node.start) continue;
      const start = TT.parseTime(kid.node.start);
      if (from === null || start < from) from = start;
      to = Math.max(to, endOf(kid.node, now));
    }
    const span = Math.max(1, to - from);
    for (const kid of kids) {
      const bar = kid.bar;
      if (!kid.node.start || from === null) { bar.hidden = true; continue; }
      const start = TT.parseTime(kid.node.start);
      bar.hidden = false;
      bar.style.left = `${(100 * (start - from)) / span}%`;
      bar.style.width = `max(2px, ${(100 * (endOf(kid.node, now) - start)) / span}%)`;
    }
  }

  // -- live refresh: re-read everything shown --------------------------------------------------

  async function readTop() {
    if (data.focus) {
      const [run, task] = await Promise.all([TT.api(`/api/runs/${trace}?limit=1`),
                                             TT.api(`/api/runs/${trace}/tasks/${data.focus}`)]);
      return {run, list: [task], cursor: null};
    }
    return readShown(top, false);
  }

  /**
   * ``state``'s children (or the top-level tasks) as shown, read again.  Once the user has
   * reached the last one, the read goes on to the end (one page more at most), so that new ones
   * show by themselves.  There it starts at the page of the first child that may still change,
   * keeping the settled ones before it: a busy run's refresh reads the last page or two of each
   * open node, not every page shown.  ``full``: from the first page.
   */
  async function readShown(state, full) {
    const atEnd = !state.cursor, shown = state.kids.length;
    const wanted = atEnd ? shown + pageSize : Math.max(shown, pageSize);
    const from = full || !atEnd ? FIRST_PAGE : markBefore(state, firstUnsettled(state));
    const marks = state.marks.filter((mark) => mark.at < from.at);
    let list = state.kids.slice(0, from.at).map((id) => nodes.get(id).node);
    let cursor = from.cursor, run;
    do {
      marks.push({at: list.length, cursor});
      const limit = from.at ? pageSize : Math.min(1000, wanted - list.length);
      const page = await fetchChildren(state, cursor, limit);
      list = list.concat(page.children);
      cursor = page.next_cursor;
      run = run || page.run;
    } while (cursor && list.length < wanted);
    if (from.at && !cursor && missedSome(state, list, run)) return readShown(state, true);
    return {list, cursor, run, marks};
  }

  /** A task whose row changes no more: it ended, and nothing under it is running. */
  function settled(node) {
    return (node.status === "ok" || node.status === "error") && !node.counts.running &&
      !node.counts.stalled;
  }

  function firstUnsettled(state) {
    const at = state.kids.findIndex((id) => !settled(nodes.get(id).node));
    return at < 0 ? state.kids.length : at;
  }

  /** The last page start at or before child ``at``. */
  function markBefore(state, at) {
    return state.marks.filter((mark) => mark.at <= at).pop() || FIRST_PAGE;
  }

  /** Whether a task arrived among the settled ones a read kept (one that started early and was
   *  sent at its end): the node's count then says more than the rows read. */
  function missedSome(state, list, run) {
    if (state === top) return list.filter((node) => !node.missing).length !== run.root_count;
    return list.length !== state.node.child_count;
  }

  /** Nothing under ``state`` to read again: its own row is as it was when its children were read
   *  (a new, changed or moved task below changes its child count or its rollup) and none of them
   *  is running (a heartbeat changes only the child's row). */
  function unchanged(state) {
    return state.readAs === JSON.stringify(state.node) &&
      state.kids.every((id) => settled(nodes.get(id).node));
  }

  async function refresh() {
    const {run, list, cursor, marks} = await readTop();
    data.run = run;
    drawHead(run);
    reconcile(top, list, cursor, marks);
    for (const state of expandedInOrder()) {
      if (!nodes.has(state.node.span_id)) continue;  // dropped by an earlier reconcile
      if (!state.node.child_count) continue;
      if (unchanged(state)) { drawWaterfall(state); continue; }  // a running node's span grows
      const shown = await readShown(state, false);
      reconcile(state, shown.list, shown.cursor, shown.marks);
    }
    await fetchHeartbeats();
  }

  function expandedInOrder() {
    return [...tree.querySelectorAll("[role=treeitem][aria-expanded=true]")]
      .map((item) => nodes.get(item.dataset.spanId)).filter(Boolean);
  }

  function drawHead(run) {
    const head = document.getElementById("run-head");
    const set = (field, ...content) => head.querySelector(`[data-field=${field}]`).replaceChildren(...content);
    set("status", TT.status(run.status));
    set("name", run.name || "(no root yet)");
    set("job", run.job || "");
    set("start", TT.time(run.start));
    set("duration", TT.duration(run.duration));
    set("task_count", TT.number(run.task_count));
    set("counts", TT.rollup(run.counts, TT.listUrl(trace)));
    set("root_note", rootNote(run));
  }

  /** The run page's "root" line: a run whose root has not arrived counts as running. */
  function rootNote(run) {
    if (run.root_count > 1) return `${TT.number(run.root_count)} top-level tasks`;
    if (run.root_count === 1) return "received";
    return document.querySelector("[data-field=root_note]").dataset.noRoot;
  }

  /**
   * Last heartbeats of running rows: the node shape has none, the task detail has.  Each row's
   * is re-read at most every HEARTBEAT_EVERY_MS (heartbeats come seconds apart; refreshes don't).
   */
  async function fetchHeartbeats() {
    const due = Date.now() - HEARTBEAT_EVERY_MS;
    const running = [...nodes.values()]
      .filter((s) => (s.node.status === "running" || s.node.status === "stalled") &&
                     !("last_heartbeat" in s.node) && !(s.heartbeatRead > due))
      .slice(0, HEARTBEAT_FETCHES);
    await Promise.all(running.map(async (state) => {
      state.heartbeatRead = Date.now();
      try {
        const task = await TT.api(`/api/runs/${trace}/tasks/${state.node.span_id}`);
        state.heartbeat = task.last_heartbeat;
        drawHeartbeat(state);
      } catch (_) { /* gone or unreachable: the next refresh tries again */ }
    }));
  }

  // -- keyboard: the WAI-ARIA tree view pattern -------------------------------------------------

  function visibleItems() {
    return [...tree.querySelectorAll("[role=treeitem]")].filter((item) => !item.closest("[hidden]"));
  }

  function focusItem(item) {
    if (!item) return;
    for (const other of tree.querySelectorAll("[role=treeitem][tabindex='0']")) other.tabIndex = -1;
    item.tabIndex = 0;
    item.focus();
  }

  function stateOf(item) { return item && nodes.get(item.dataset.spanId); }

  function parentItem(item) {
    const group = item.parentElement.closest("[role=group]");
    return group ? group.closest("[role=treeitem]") : null;
  }

  function onKey(event) {
    const item = event.target.closest("[role=treeitem]");
    if (!item || event.altKey || event.ctrlKey || event.metaKey) return;
    const items = visibleItems(), at = items.indexOf(item), state = stateOf(item);
    const actions = {
      ArrowDown: () => focusItem(items[at + 1]),
      ArrowUp: () => focusItem(items[at - 1]),
      Home: () => focusItem(items[0]),
      End: () => focusItem(items[items.length - 1]),
      ArrowRight: () => {
        if (!state) return;
        if (state.node.child_count && !state.expanded) expand(state);
        else if (state.expanded) focusItem(state.group.querySelector("[role=treeitem]:not([hidden])"));
      },
      ArrowLeft: () => {
        if (state && state.expanded) collapse(state);
        else focusItem(parentItem(item));
      },
      Enter: () => {
        if (!state) loadMore(stateOf(parentItem(item)) || top);
        else location.href = item.querySelector("a.name").href;
      },
    };
    const action = actions[event.key];
    if (!action) return;
    event.preventDefault();
    action();
  }

  function onClick(event) {
    const item = event.target.closest("[role=treeitem]");
    if (!item || event.target.closest("a, .copy, .more")) return;
    const state = stateOf(item);
    if (!state) return;
    focusItem(item);
    if (state.expanded) collapse(state); else expand(state);
  }

  // -- start -------------------------------------------------------------------------------------

  function tick() {  // heartbeat ages and running bars move with the clock
    for (const state of nodes.values()) {
      if (state.node.status === "running" || state.node.status === "stalled") drawHeartbeat(state);
    }
  }

  async function start() {
    tree = document.getElementById("tree");
    top.group = tree;
    if (!data.focus) {
      top.more = el("div", {role: "treeitem", class: "more", tabindex: "-1", "aria-level": 1}, "");
      top.more.addEventListener("click", () => loadMore(top));
      tree.append(top.more);
    }
    tree.addEventListener("keydown", onKey);
    tree.addEventListener("click", onClick);
    reconcile(top, data.roots, data.roots_next_cursor);
    const first = tree.querySelector("[role=treeitem]");
    if (first) first.tabIndex = 0;
    for (const id of Object.keys(data.open)) {
      const state = nodes.get(id);
      if (state) await expand(state);
    }
    requestAnimationFrame(() => {
      performance.mark("tasktree-tree-ready");
      document.body.dataset.treeReady = "1";
    });
    setInterval(tick, 1000);
    fetchHeartbeats();
    TT.live(`/api/live/runs/${trace}`, TT.serial(() => exclusive(refresh)));
  }

  document.addEventListener("DOMContentLoaded", start);
})();
