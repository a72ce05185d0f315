// The runs list: time-range inputs in the browser's zone (the search page's filters too), and
// live refresh of the rows shown.
"use strict";

(() => {
  /** datetime-local inputs show local time; the form sends UTC (RFC 3339) in hidden fields,
   * converted as the form is sent: a time typed before this script ran counts too. */
  function wireTimeRange(form) {
    const pairs = [...form.querySelectorAll("input[data-utc-for]")].map((input) => [
      input, form.querySelector(`input[type=hidden][name="${input.dataset.utcFor}"]`)]);
    for (const [input, hidden] of pairs) {
      const ms = hidden.value ? parseValue(hidden.value) : NaN;
      if (!input.value && !Number.isNaN(ms)) {
        input.value = TT.localText(ms).replace(" ", "T").slice(0, 19);
      }
    }
    form.addEventListener("submit", () => {
      for (const [input, hidden] of pairs) {
        hidden.value = input.value ? new Date(input.value).toISOString() : "";
      }
    });
  }

  /** Milliseconds from what "from"/"to" may hold: RFC 3339 or Unix seconds. */
  function parseValue(value) {
    return /^-?\d+(\.\d+)?$/.test(value) ? Number(value) * 1000 : TT.parseTime(value);
  }

  function runRow(run) {
    const {el} = TT;
    return el("tr", {class: "run", "data-trace-id": run.trace_id},
      el("td", {}, TT.status(run.status)),
      el("td", {class: "job", title: run.job}, run.job || ""),
      el("td", {class: "name", title: run.name}, el("a", {href: `/runs/${run.trace_id}`}, run.name || "(no root yet)")),
      el("td", {}, TT.copyable(run.trace_id, `${run.trace_id.slice(0, 12)}…`)),
      el("td", {}, TT.time(run.start)),
      el("td", {class: "num"}, TT.duration(run.duration)),
      el("td", {class: "num"}, TT.number(run.task_count)),
      el("td", {}, TT.rollup(run.counts, TT.listUrl(run.trace_id))));
  }

  async function refresh(table) {
    const body = await TT.api(`/api/runs?${table.dataset.api}`);
    patchRows(document.getElementById("runs-body"), body.runs.map(runRow));
    document.getElementById("runs-empty").hidden = body.runs.length > 0;
    const firstSteps = document.getElementById("first-steps");
    if (firstSteps && body.runs.length > 0) firstSteps.hidden = true;
    followCursor(body.next_cursor);
  }

  /** What a row shows: its cells' text and links.  A row drawn by the server and the same run
   *  drawn here (runRow) look the same. */
  function looks(tr) {
    return [...tr.cells].map((td) => [td.textContent.replace(/\s+/g, " ").trim(),
      ...[...td.querySelectorAll("[href]")].map((a) => a.getAttribute("href"))].join(" ")).join("\t");
  }

  /**
   * Put ``rows`` (new rows, in order) in ``tbody``, leaving alone each shown row that looks the
   * same and stands where it did: the live stream says "changed" whenever any run anywhere
   * changes, and a rebuilt list lost the reader's focus and text selection every second.
   */
  function patchRows(tbody, rows) {
    const focus = focusedSpot(tbody);
    const listed = new Set(rows.map((row) => row.dataset.traceId));
    const shown = new Map();
    for (const tr of [...tbody.rows]) {  // gone first: rows left behind would count as moved
      if (listed.has(tr.dataset.traceId)) shown.set(tr.dataset.traceId, tr); else tr.remove();
    }
    let previous = null;
    for (const row of rows) {
      const old = shown.get(row.dataset.traceId);
      let tr = row;
      if (old && looks(old) === looks(row)) tr = old;
      else if (old) old.replaceWith(row);  // redrawn where it stood
      const wanted = previous ? previous.nextElementSibling : tbody.firstElementChild;
      if (wanted !== tr) tbody.insertBefore(tr, wanted);
      previous = tr;
    }
    refocus(tbody, focus);
  }

  /** Where the focus is in the list: the run's trace id and which of its row's controls. */
  function focusedSpot(tbody) {
    const active = document.activeElement, tr = active && active.closest && active.closest("tr.run");
    if (!tr || !tbody.contains(tr)) return null;
    return {active, traceId: tr.dataset.traceId, at: controls(tr).indexOf(active)};
  }

  function controls(tr) { return [...tr.querySelectorAll("a[href], [tabindex]")]; }

  /** The focused run's row was redrawn or moved: focus the same control of its row again. */
  function refocus(tbody, focus) {
    if (!focus || document.activeElement === focus.active) return;
    const tr = [...tbody.rows].find((row) => row.dataset.traceId === focus.traceId);
    const target = tr && (controls(tr)[focus.at] || tr.querySelector("a[href]"));
    if (target) target.focus();
  }

  /** "older runs →" goes on from the rows shown now: the cursor of the page as loaded would skip
   *  the runs that new ones pushed off this page, and a page that was full only later had none. */
  function followCursor(cursor) {
    const link = document.getElementById("next-page");
    link.hidden = !cursor;
    if (!cursor) return;
    const url = new URL(link.dataset.base, location.href);
    url.searchParams.set("cursor", cursor);
    link.href = url.pathname + url.search;
  }

  document.addEventListener("DOMContentLoaded", () => {
    const table = document.getElementById("runs");
    for (const form of document.querySelectorAll("form.filters")) wireTimeRange(form);
    if (table) TT.live("/api/live/runs", TT.serial(() => refresh(table)));
  });
})();
