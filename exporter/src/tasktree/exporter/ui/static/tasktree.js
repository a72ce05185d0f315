// tasktree: what every page shares.  No framework, no build step.
//
// Safety rule of every script here: data from spans is only ever put in the page with
// textContent or attribute setters (TT.el), never as HTML, so a span named
// "<img src=x onerror=...>" shows those characters and runs nothing.
"use strict";

const TT = (() => {
  // -- DOM -------------------------------------------------------------------------------------

  /** el("span", {class: "x", "data-id": id}, "text", child) -> a new element; strings become text. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === "") continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  // -- formatting (as ui/format.py) -----------------------------------------------------------

  function sig3(x) { return Number(x.toPrecision(3)).toString(); }

  /** Seconds as "12.3 ms", "1m 05s"; null -> "" (still running). */
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 1e-3) return `${Math.round(seconds * 1e6)} µs`;
    if (seconds < 1) return `${sig3(seconds * 1e3)} ms`;
    if (seconds < 60) return `${sig3(seconds)} s`;
    let minutes = Math.floor(seconds / 60);
    const secs = Math.floor(seconds) % 60;
    if (minutes < 60) return `${minutes}m ${String(secs).padStart(2, "0")}s`;
    const hours = Math.floor(minutes / 60);
    minutes %= 60;
    if (hours < 48) return `${hours}h ${String(minutes).padStart(2, "0")}m`;
    return `${Math.floor(hours / 24)}d ${String(hours % 24).padStart(2, "0")}h`;
  }

  /** A short age: "4s", "3m 10s". */
  function age(ms) { return duration(Math.max(0, Math.round(ms / 1000))) || "0 s"; }

  const ROLLUP = ["ok", "error", "running", "stalled"];
  const number = new Intl.NumberFormat("en-US");

  const LISTED = new Set(["error", "running", "stalled"]);  // tree.status.FLAGGED

  /** A page listing a run's tasks in one status: the whole run, or the subtree of ``spanId``. */
  function listUrl(traceId, spanId) {
    return (name) => `/runs/${traceId}/tasks?${spanId ? `node=${spanId}&` : ""}status=${name}`;
  }

  /** The rollup element: "3,998 ok · 2 error · 1 running" (zero counts left out).  With
   *  ``link`` (``listUrl``), the error, running and stalled counts link to those tasks. */
  function rollup(counts, link) {
    const out = el("span", {class: "rollup"});
    for (const name of ROLLUP) {
      if (!counts || !counts[name]) continue;
      if (out.childNodes.length) out.append(" · ");
      const text = `${number.format(counts[name])} ${name}`;
      out.append(link && LISTED.has(name) ? el("a", {class: `r-${name}`, href: link(name)}, text)
        : el("span", {class: `r-${name}`}, text));
    }
    return out;
  }

  function status(name) { return el("span", {class: `status s-${name}`}, name); }

  /** Milliseconds since the epoch from the API's RFC 3339 (nanoseconds cut to milliseconds). */
  function parseTime(iso) {
    if (!iso) return null;
    return Date.parse(iso.replace(/(\.\d{3})\d+/, "$1"));
  }

  function pad(n, width = 2) { return String(n).padStart(width, "0"); }

  /** "2026-11-26 18:33:26.123" in the browser's zone. */
  function localText(ms) {
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function utcTitle(iso) { return `${iso.replace("T", " ").replace(/Z$/, "")} UTC`; }

  /** A <time> showing local time, UTC on hover; "" for no time. */
  function time(iso) {
    if (!iso) return "";
    const ms = parseTime(iso);
    return el("time", {datetime: iso, title: utcTitle(iso), "data-local": "1"}, localText(ms));
  }

  /** "Asia/Kolkata (UTC+05:30)": the zone every time on the page is shown in. */
  function zoneName() {
    const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
    const minutes = -new Date().getTimezoneOffset();
    const sign = minutes < 0 ? "-" : "+";
    const offset = `UTC${sign}${pad(Math.floor(Math.abs(minutes) / 60))}:${pad(Math.abs(minutes) % 60)}`;
    return `${zone} (${offset})`;
  }

  function showZone() {
    const node = document.getElementById("time-zone");
    if (!node) return;
    node.textContent = `times in ${zoneName()}`;
    node.title = "hover over a time for UTC";
    node.hidden = false;
  }

  /** Turn server-rendered <time datetime> (UTC text) into local text with UTC on hover. */
  function localizeTimes(root) {
    for (const node of (root || document).querySelectorAll("time[datetime]:not([data-local])")) {
      const ms = parseTime(node.getAttribute("datetime"));
      if (Number.isNaN(ms) || ms === null) continue;
      node.title = utcTitle(node.getAttribute("datetime"));
      node.textContent = localText(ms);
      node.dataset.local = "1";
    }
  }

  // -- ids copy with a click ----------------------------------------------------------------------

  function copyable(value, label) {
    return el("code", {class: "id copy", "data-copy": value, title: "click to copy", tabindex: "0",
                       role: "button"}, label || value);
  }

  async function copy(target) {
    const text = target.dataset.copy;
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {  // no clipboard API (plain http on another host): select for Ctrl+C
      const range = document.createRange();
      range.selectNodeContents(target);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
    }
    target.classList.add("copied");
    setTimeout(() => target.classList.remove("copied"), 900);
  }

  function onCopyEvent(event) {
    const target = event.target.closest && event.target.closest(".copy");
    if (!target) return;
    if (event.type === "keydown" && event.key !== "Enter" && event.key !== " ") return;
    event.preventDefault();
    event.stopPropagation();
    copy(target);
  }

  // -- the JSON API and live updates ----------------------------------------------------------------

  /** GET a JSON API route; rejects with the API's error message on a non-2xx answer. */
  async function api(path) {
    const response = await fetch(path, {headers: {Accept: "application/json"}, credentials: "same-origin"});
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const message = body && body.error ? body.error.message : response.statusText;
      throw Object.assign(new Error(message), {status: response.status});
    }
    return body;
  }

  /**
   * A refresher: run(work) at most once at a time; calls while it runs make one more run after,
   * so the page always ends up showing an answer read after the latest change, and answers never
   * arrive out of order (which could show an older status after a newer one).
   */
  function serial(work) {
    let running = false, again = false;
    async function trigger() {
      if (running) { again = true; return; }
      running = true;
      try {
        do { again = false; await work(); } while (again);
      } catch (error) {
        console.warn("tasktree: refresh failed", error);
      } finally {
        running = false;
      }
    }
    return trigger;
  }

  function setLiveState(text, cls) {
    const badge = document.getElementById("live-state");
    if (!badge) return;
    badge.hidden = false;
    badge.textContent = text;
    badge.className = `live-state ${cls}`;
  }

  /**
   * Follow a live stream: onChange() after each "changed" event and after every reconnection
   * (events may have been missed).  When the stream is refused (too many open, no auth), poll
   * every 10 s and try the stream again after 30 s.
   *
   * A hidden page (a background tab) holds no stream: over HTTP/1.1 the browser allows 6
   * connections to a host, and six tabs each holding one would leave none for a seventh tab or
   * for the open tabs' own requests.  Shown again, the page reconnects and re-reads once.
   */
  function live(url, onChange) {
    let source = null, opened = false, pollTimer = null, retryTimer = null;
    function connect() {
      if (source || document.hidden) return;
      const stream = source = new EventSource(url);
      stream.addEventListener("open", () => {
        setLiveState("live", "on");
        if (opened) onChange();
        opened = true;
        stopPolling();
      });
      stream.addEventListener("changed", () => onChange());
      stream.addEventListener("error", () => {
        if (stream.readyState === EventSource.CLOSED) {
          setLiveState("polling", "off");
          source = null;
          if (!pollTimer) pollTimer = setInterval(onChange, 10000);
          retryTimer = setTimeout(() => { retryTimer = null; connect(); }, 30000);
        } else {
          setLiveState("reconnecting", "off");
        }
      });
    }
    function stopPolling() {
      if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
      if (retryTimer) { clearTimeout(retryTimer); retryTimer = null; }
    }
    function disconnect() {
      if (source) { source.close(); source = null; }
      stopPolling();
      opened = true;  // what changed meanwhile is read when the stream opens again
    }
    document.addEventListener("visibilitychange", () => (document.hidden ? disconnect() : connect()));
    window.addEventListener("pagehide", disconnect);
    window.addEventListener("pageshow", (event) => event.persisted && connect());  // back/forward cache
    connect();
  }

  function init() {
    localizeTimes(document);
    showZone();
    document.addEventListener("click", onCopyEvent, true);
    document.addEventListener("keydown", onCopyEvent, true);
    document.addEventListener("keydown", (event) => {  // "/" jumps to the search box
      const box = document.getElementById("search-box");
      if (event.key === "/" && box && !/INPUT|TEXTAREA|SELECT/.test(document.activeElement.tagName)) {
        event.preventDefault();
        box.focus();
      }
    });
  }

  document.addEventListener("DOMContentLoaded", init);

  return {el, duration, age, rollup, listUrl, number: (n) => number.format(n), status, time, parseTime, localText, localizeTimes, copyable,
          api, serial, live};
})();
