// The task page: live status, end, duration, heartbeat and rollup while the task runs.
"use strict";

(() => {
  function set(head, field, ...content) {
    const slot = head.querySelector(`[data-field=${field}]`);
    if (slot) slot.replaceChildren(...content);
  }

  function draw(head, task) {
    set(head, "status", TT.status(task.status));
    const message = head.querySelector("[data-field=status_message]");
    message.textContent = task.status_message || "";
    message.hidden = !task.status_message;
    head.querySelector("[data-field=stalled_note]").hidden = task.status !== "stalled";
    set(head, "end", TT.time(task.end));
    set(head, "duration", TT.duration(task.duration));
    const beat = head.querySelector("[data-field=last_heartbeat]");
    beat.dataset.heartbeat = task.last_heartbeat || "";
    set(head, "counts", TT.rollup(task.counts, TT.listUrl(task.trace_id, task.span_id)));
    drawProgress(head, task.attributes || {});
    drawHeartbeatAge(head, task.status);
    for (const box of head.querySelectorAll(".fold")) fitFold(box);
  }

  /** A cut box (a long name or message) gets a "show all" button while it hides some text. */
  function fitFold(box) {
    let button = box.nextElementSibling;
    if (!button || !button.classList.contains("show-all")) {
      button = TT.el("button", {type: "button", class: "show-all"});
      button.addEventListener("click", () => {
        box.classList.toggle("open");
        fitFold(box);
      });
      box.after(button);
    }
    const open = box.classList.contains("open");
    const text = (box.querySelector(".name") || box).textContent;
    button.textContent = open ? "show less" : `show all (${TT.number(text.length)} characters)`;
    button.hidden = box.hidden || (!open && box.scrollHeight <= box.clientHeight + 1);
  }

  function drawProgress(head, attributes) {
    // The attributes set_progress() writes: their names are on the page (views.PROGRESS_KEYS).
    const keys = head.querySelector('[data-field="progress"]').dataset;
    const ratio = attributes[keys.ratioKey];
    if (typeof ratio !== "number") return;  // never reported: the page's "not reported" stays
    const bar = TT.el("progress", {max: "1", value: String(ratio)});
    const total = attributes[keys.totalKey], done = attributes[keys.doneKey];
    const of = typeof total === "number" ? ` (${done} of ${total})` : "";
    set(head, "progress", bar, ` ${Math.round(ratio * 100)} %${of}`);
  }

  /** While the task runs, its duration is the time since it started, ticking.  A stalled
   *  task's process may be dead: it ran at least until its last heartbeat, and nothing ticks. */
  function drawElapsed(head, status) {
    const slot = head.querySelector("[data-field=duration]");
    const start = TT.parseTime(slot.dataset.start);
    if (!(status === "running" || status === "stalled") || !start) return;
    const beat = TT.parseTime(head.querySelector("[data-field=last_heartbeat]").dataset.heartbeat);
    if (status === "running" || !beat) {
      slot.replaceChildren(`${TT.duration((Date.now() - start) / 1000)} so far`);
      return;
    }
    const ran = TT.duration(Math.max(0, beat - start) / 1000) || "0 s";
    slot.replaceChildren(`ran at least ${ran}; no heartbeat for ${TT.age(Date.now() - beat)}`);
  }

  function drawHeartbeatAge(head, status) {
    const beat = head.querySelector("[data-field=last_heartbeat]");
    const iso = beat.dataset.heartbeat;
    if (!iso) { beat.replaceChildren(); return; }
    const live = status === "running" || status === "stalled";
    const ago = live ? ` (${TT.age(Date.now() - TT.parseTime(iso))} ago)` : "";
    beat.replaceChildren(TT.time(iso), ago);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const head = document.getElementById("task-head");
    if (!head) return;
    const {traceId, spanId} = head.dataset;
    let status = head.querySelector("[data-field=status] .status").textContent;
    drawHeartbeatAge(head, status);
    drawElapsed(head, status);
    for (const box of head.querySelectorAll(".fold")) fitFold(box);
    setInterval(() => { drawHeartbeatAge(head, status); drawElapsed(head, status); }, 1000);
    TT.live(`/api/live/runs/${traceId}`, TT.serial(async () => {
      const task = await TT.api(`/api/runs/${traceId}/tasks/${spanId}`);
      status = task.status;
      draw(head, task);
    }));
  });
})();
