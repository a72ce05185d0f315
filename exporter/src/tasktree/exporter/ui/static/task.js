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
    set(head, "end", TT.time(task.end));
    set(head, "duration", TT.duration(task.duration));
    const beat = head.querySelector("[data-field=last_heartbeat]");
    beat.dataset.heartbeat = task.last_heartbeat || "";
    set(head, "counts", TT.rollup(task.counts));
    drawHeartbeatAge(head, task.status);
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
    setInterval(() => drawHeartbeatAge(head, status), 1000);
    TT.live(`/api/live/runs/${traceId}`, TT.serial(async () => {
      const task = await TT.api(`/api/runs/${traceId}/tasks/${spanId}`);
      status = task.status;
      draw(head, task);
    }));
  });
})();
