// The Containers page.  Reads /api/docker/... with the session cookie of /login; every action
// sends the session's CSRF token (from <meta name="csrf-token">) in the X-CSRF-Token header.
// Every value from the server is put on the page as text (textContent), never as markup.
"use strict";

const $ = (selector) => document.querySelector(selector);
const csrfToken = (document.querySelector("meta[name=csrf-token]") || {}).content || "";
// "no" for a viewer: the page then has no forms, and the containers no action buttons.
const mayOperate = (document.querySelector("meta[name=may-operate]") || {}).content === "yes";
let lastContainers = [];
let hostNames = [];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;  // CSSOM: allowed by the page's CSP
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child == null ? "" : String(child)));
  }
  return node;
}

// Whether #notice holds the listing's failure: the next listing that works clears that one, never
// what an action said (its result would otherwise vanish with the refresh that follows it).
let noticeIsListing = false;

/** ``content``: text, or a list of text and nodes (names in iso()). */
function notice(content, ofListing = false) {
  $("#notice").replaceChildren(...[].concat(content || []));
  noticeIsListing = ofListing;
}

// Names, hosts, labels and messages come from engines and tokens: one holding a bidi control
// (U+202E reverses what follows) must not reorder the rest of the line it is shown in.
function iso(text) { return el("bdi", {}, text); }

/** "a, b, c" with each value isolated. */
function isoList(values) { return values.flatMap((value, i) => [i ? ", " : "", iso(value)]); }

async function api(method, path, body) {
  const headers = {};
  headers["X-CSRF-Token"] = csrfToken;  // reading logs is an action by GET: it needs it too
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) throw new Error("not signed in (or the sign-in has ended): sign in, top right");
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

// -- hosts and containers ------------------------------------------------------------------------

async function load(refresh) {
  try {
    const data = await (await api("GET", "/api/docker/containers" + (refresh ? "?refresh=1" : ""))).json();
    if (noticeIsListing) notice("");
    renderHosts(data.hosts);
    lastContainers = data.containers;
    renderContainers();
    $("#listed-at").textContent = "listed " + new Date().toLocaleTimeString();
    loadAudit();
  } catch (error) {
    notice("Listing failed: " + error.message, true);
  }
}

function renderHosts(hosts) {
  const body = $("#hosts tbody");
  body.replaceChildren(...hosts.map((h) => el("tr", {},
    el("td", {}, h.name, el("div", { class: "muted" }, h.url)),
    el("td", { class: h.up ? "up" : "down" }, h.up ? "up" : "down"),
    el("td", {}, h.version ? h.version + " (API " + h.api_version + ")" : "—"),
    el("td", {}, h.up ? h.running + " running / " + h.containers : "—"),
    el("td", {}, h.up ? h.images : "—"),
    el("td", {}, h.latency != null ? Math.round(h.latency * 1000) + " ms" : ""),
    el("td", {}, ...isoList(Object.entries(h.labels || {}).map(([k, v]) => k + "=" + v))),
    el("td", { class: h.error ? "error" : "muted" },
      ...(h.error ? [h.error] : h.last_error ? [iso(h.last_error), " (" + h.last_error_at + ")"] : [])))));
  const names = hosts.map((h) => h.name);
  if (names.join() !== hostNames.join()) {
    hostNames = names;
    for (const fieldset of document.querySelectorAll("fieldset.host-choice")) {
      fieldset.replaceChildren(el("legend", {}, "hosts"), ...hosts.map((h) =>
        el("label", {}, el("input", { type: "checkbox", name: "host", value: h.name }), " " + h.name)));
    }
  }
}

function renderContainers() {
  const words = $("#filter").value.trim().toLowerCase();
  const shown = lastContainers.filter((c) => !words ||
    [c.host, c.name, c.image, c.state].join(" ").toLowerCase().includes(words));
  $("#containers tbody").replaceChildren(...shown.map((c) => el("tr", {},
    el("td", {}, c.host),
    el("td", {}, c.name),
    el("td", {}, c.image),
    el("td", { class: "state-" + c.state }, c.state),
    el("td", {}, c.status),
    el("td", {}, c.created),
    el("td", { class: "actions" }, ...(mayOperate ? actionButtons(c) : [])))));
}

function actionButtons(c) {
  return [
    c.state === "running" ? "" : el("button", { type: "button", onclick: () => act(c, "start") }, "start"),
    c.state === "running" ? el("button", { type: "button", onclick: () => act(c, "stop") }, "stop") : "",
    el("button", { type: "button", onclick: () => act(c, "restart") }, "restart"),
    el("button", { type: "button", onclick: () => act(c, "remove") }, "remove"),
    el("button", { type: "button", onclick: () => showLogs(c) }, "logs")];
}

const DESTRUCTIVE = { stop: "Stop", restart: "Restart", remove: "Remove (and force-stop)" };

async function act(container, action) {
  if (DESTRUCTIVE[action] &&
      !confirm(DESTRUCTIVE[action] + " container " + container.name + " on " + container.host + "?")) return;
  const path = "/api/docker/hosts/" + encodeURIComponent(container.host) + "/containers/" +
    encodeURIComponent(container.name) + "/" + action;
  const what = [action + " ", iso(container.name), " on ", iso(container.host)];
  try {
    await api("POST", path, action === "remove" ? { force: true } : {});
    notice([...what, ": done"]);
  } catch (error) {
    notice([...what, " failed: ", error.message]);
  }
  load(true);
}

async function showLogs(container) {
  $("#logs-panel").hidden = false;
  $("#logs-title").replaceChildren(iso(container.name), " on ", iso(container.host), " (last 200 lines)");
  $("#logs").textContent = "loading…";
  try {
    const path = "/api/docker/hosts/" + encodeURIComponent(container.host) + "/containers/" +
      encodeURIComponent(container.id) + "/logs?tail=200&timestamps=1";
    $("#logs").textContent = await (await api("GET", path)).text();
  } catch (error) {
    $("#logs").textContent = "could not read the logs: " + error.message;
  }
}

// -- pull and deploy -----------------------------------------------------------------------------

function chosenHosts(form) {
  return [...form.querySelectorAll("input[name=host]:checked")].map((box) => box.value);
}

function lines(text) { return text.split("\n").map((s) => s.trim()).filter(Boolean); }

function pairs(text) {
  const out = {};
  for (const line of lines(text)) {
    const at = line.indexOf("=");
    if (at > 0) out[line.slice(0, at)] = line.slice(at + 1);
  }
  return out;
}

async function submitPull(event) {
  event.preventDefault();
  const form = event.target;
  const hosts = chosenHosts(form);
  if (!hosts.length) return notice("Choose at least one host.");
  start("POST", "/api/docker/pull", { image: form.image.value.trim(), hosts });
}

async function submitDeploy(event) {
  event.preventDefault();
  const form = event.target;
  const hosts = chosenHosts(form);
  if (!hosts.length) return notice("Choose at least one host.");
  const body = {
    image: form.image.value.trim(), name: form.name.value.trim(), hosts,
    command: form.command.value.trim() || null, env: pairs(form.env.value), ports: lines(form.ports.value),
    volumes: lines(form.volumes.value), labels: pairs(form.labels.value),
    restart_policy: form.restart_policy.value, network_mode: form.network_mode.value.trim() || null,
    pull: form.pull.value, dry_run: form.dry_run.checked,
  };
  if (!body.dry_run && !confirm("Deploy " + body.image + " as " + body.name + " on " + hosts.length +
      " host(s): " + hosts.join(", ") + "?\nA container with that name is stopped and replaced.")) return;
  if (!body.dry_run) form.env.value = "";  // the values went to the hosts; don't keep them on screen
  start("POST", "/api/docker/deploy", body);
}

async function start(method, path, body) {
  try {
    const op = (await (await api(method, path, body)).json()).operation;
    renderOperation(op);
    await follow(op.id);
  } catch (error) {
    notice("Could not start: " + error.message);
  }
}

// Server-Sent Events read with fetch (the same error handling as every other call).
async function follow(id) {
  const response = await api("GET", "/api/docker/operations/" + encodeURIComponent(id) + "/events");
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data) renderOperation(JSON.parse(data));
    }
  }
  load(true);
}

function renderOperation(op) {
  const rows = Object.entries(op.hosts).map(([host, state]) => {
    const percent = state.progress && state.progress.percent != null ? state.progress.percent : null;
    return el("tr", {},
      el("td", {}, host),
      el("td", { class: "host-" + state.status }, state.status),
      el("td", {}, percent == null ? "" : el("span", { class: "bar" }, el("span", { style: "width:" + percent + "%" })),
        percent == null ? "" : " " + percent + "%"),
      el("td", {}, state.message));
  });
  const run = op.trace_id ? el("a", { href: "/runs/" + op.trace_id }, "its run in the tree") : "";
  $("#operation").replaceChildren(
    el("p", {}, op.kind + (op.dry_run ? " (dry run)" : "") + " by ", iso(op.actor), ": " + op.status, " · ", run),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "host"), el("th", {}, "state"),
      el("th", {}, "progress"), el("th", {}, "message"))), el("tbody", {}, ...rows)));
}

// -- audit ---------------------------------------------------------------------------------------

async function loadAudit() {
  try {
    const data = await (await api("GET", "/api/docker/audit?limit=30")).json();
    $("#audit tbody").replaceChildren(...data.entries.map((e) => el("tr", {},
      el("td", {}, e.at), el("td", {}, iso(e.actor), " (" + e.role + ")"),
      el("td", {}, e.action + (e.dry_run ? " (dry run)" : "")), el("td", {}, e.target),
      el("td", {}, ...isoList(e.hosts || [])), el("td", {}, e.status))));
  } catch (error) { /* a viewer without the audit log still sees the rest */ }
}

// -- wiring --------------------------------------------------------------------------------------

$("#refresh").addEventListener("click", () => load(true));
$("#filter").addEventListener("input", renderContainers);
if (mayOperate) {
  $("#logs-close").addEventListener("click", () => { $("#logs-panel").hidden = true; });
  $("#pull-form").addEventListener("submit", submitPull);
  $("#deploy-form").addEventListener("submit", submitDeploy);
}
load(false);
setInterval(() => { if (!document.hidden) load(false); }, 10000);
