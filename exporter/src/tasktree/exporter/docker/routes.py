"""``/api/docker/...`` and the ``/docker`` page (design.md §4).

Reading (hosts, containers, images, operations, audit) needs a viewer credential (see ``auth``);
every action (pull, deploy, start, stop, restart, remove, logs) an operator's, and with the
session cookie the session's CSRF token too (``X-CSRF-Token``).  Pull and deploy
answer 202 with an operation (``?wait=SECONDS`` waits for it to end, up to 300 s); its per-host
progress is polled at ``/api/docker/operations/<id>`` or streamed as Server-Sent Events at
``/api/docker/operations/<id>/events``.  Views block at most about the slowest host's timeout.
"""

from __future__ import annotations

import json
import logging

from flask import (
    Blueprint,
    Response,
    jsonify,
    render_template,
    request,
    stream_with_context,
)

from tasktree.exporter.auth import OPERATOR, VIEWER, current_principal, refusal, require
from tasktree.exporter.docker.operations import Operation
from tasktree.exporter.docker.specs import check_host_names, deploy_spec, pull_spec
from tasktree.exporter.errors import (
    BadRequest,
    NotFound,
    TasktreeError,
    json_error,
    json_unexpected,
)
from tasktree.exporter.services import current_services

logger = logging.getLogger(__name__)

docker_blueprint = Blueprint(
    "docker",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/docker/static",
)

_ACTIONS = ("start", "stop", "restart", "remove")
_SSE_KEEPALIVE_S = 15.0
_MAX_WAIT_S = 300.0


def _service():
    service = current_services().docker
    if service is None:
        raise NotFound("docker host management is not enabled in this process")
    return service


docker_blueprint.register_error_handler(TasktreeError, json_error)
docker_blueprint.register_error_handler(Exception, json_unexpected)


# -- the page ---------------------------------------------------------------------------------


@docker_blueprint.get("/docker")
def page():
    """The Containers page: a shell without data; its script reads the API with the session
    cookie and sends the session's CSRF token (``<meta name="csrf-token">``) with every action.
    Without a credential the browser is sent to ``/login``."""
    from tasktree.exporter.ui import require_page

    redirect_to_login = require_page()
    if redirect_to_login is not None:
        return redirect_to_login
    service = current_services().docker
    html = render_template(
        "docker.html",
        hosts_configured=service is not None and bool(service.hosts),
        read_only=refusal(OPERATOR),  # a viewer sees no button it may not press
    )
    return Response(html, mimetype="text/html")


# -- seeing -----------------------------------------------------------------------------------


def _hosts_arg(service) -> list[str] | None:
    names = request.args.getlist("host")
    check_host_names(names, service.hosts)
    return names or None


def _refresh() -> bool:
    return request.args.get("refresh", "").lower() in ("1", "true", "yes")


def _host_status(snap: dict) -> dict:
    fields = (
        "name",
        "url",
        "labels",
        "tls",
        "up",
        "version",
        "api_version",
        "os",
        "error",
        "last_error",
        "last_error_at",
        "latency",
        "checked_at",
    )
    return {
        **{k: snap.get(k) for k in fields},
        "containers": len(snap["containers"]),
        "running": sum(1 for c in snap["containers"] if c["state"] == "running"),
        "images": len(snap["images"]),
    }


@docker_blueprint.get("/api/docker/hosts")
@require(VIEWER)
def hosts():
    service = _service()
    snaps = service.snapshot(_hosts_arg(service), refresh=_refresh())
    return {"hosts": [_host_status(s) for s in snaps]}


@docker_blueprint.get("/api/docker/containers")
@require(VIEWER)
def containers():
    service = _service()
    snaps = service.snapshot(_hosts_arg(service), refresh=_refresh())
    state = request.args.get("state")
    items = [c for s in snaps for c in s["containers"] if state is None or c["state"] == state]
    return {"hosts": [_host_status(s) for s in snaps], "containers": items}


@docker_blueprint.get("/api/docker/images")
@require(VIEWER)
def images():
    service = _service()
    snaps = service.snapshot(_hosts_arg(service), refresh=_refresh())
    return {
        "hosts": [_host_status(s) for s in snaps],
        "images": [i for s in snaps for i in s["images"]],
    }


# -- long actions -----------------------------------------------------------------------------


def _body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object (Content-Type: application/json)")
    return body


def _accepted(op):
    wait = request.args.get("wait")
    if wait:
        try:
            seconds = min(_MAX_WAIT_S, max(0.0, float(wait)))
        except ValueError:
            raise BadRequest("'wait' must be a number of seconds") from None
        snapshot = op.wait_done(seconds)
    else:
        snapshot = op.snapshot()
    status = 200 if snapshot["finished"] else 202
    response = jsonify(operation=snapshot)
    response.status_code = status
    response.headers["Location"] = f"/api/docker/operations/{op.id}"
    return response


@docker_blueprint.post("/api/docker/pull")
@require(OPERATOR)
def pull():
    service = _service()
    return _accepted(service.pull(pull_spec(_body(), service.hosts), current_principal()))


@docker_blueprint.post("/api/docker/deploy")
@require(OPERATOR)
def deploy():
    service = _service()
    return _accepted(service.deploy(deploy_spec(_body(), service.hosts), current_principal()))


@docker_blueprint.get("/api/docker/operations")
@require(VIEWER)
def operations():
    limit = _int_arg("limit", 50, 1, 200)
    return {"operations": _service().operations.recent(limit)}


def _operation_snapshot(op_id: str) -> tuple[Operation | None, dict]:
    registry = _service().operations
    op = registry.get(op_id)
    if op is not None:
        return op, op.snapshot()
    remote = registry.remote_snapshot(op_id)
    if remote is None:
        raise NotFound(f"no docker operation {op_id!r} (operations are kept for an hour)")
    return None, remote


@docker_blueprint.get("/api/docker/operations/<op_id>")
@require(VIEWER)
def operation(op_id: str):
    return {"operation": _operation_snapshot(op_id)[1]}


@docker_blueprint.get("/api/docker/operations/<op_id>/events")
@require(VIEWER)
def operation_events(op_id: str) -> Response:
    """Server-Sent Events: ``operation`` with each new snapshot, then ``done`` with the last one."""
    op, first = _operation_snapshot(op_id)

    def events():
        snapshot = first
        yield _sse("operation", snapshot)
        while op is not None and not snapshot["finished"]:
            newer = op.wait_change(snapshot["seq"], _SSE_KEEPALIVE_S)
            if newer["seq"] == snapshot["seq"]:
                yield ": keep-alive\n\n"
                continue
            snapshot = newer
            yield _sse("operation", snapshot)
        yield _sse("done", snapshot)

    return Response(
        stream_with_context(events()),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


# -- short actions ----------------------------------------------------------------------------


@docker_blueprint.post("/api/docker/hosts/<host>/containers/<container>/<action>")
@require(OPERATOR)
def container_action(host: str, container: str, action: str):
    if action not in _ACTIONS:
        raise NotFound(f"no container action {action!r}; one of {', '.join(_ACTIONS)}")
    body = request.get_json(silent=True) or {}
    options = {}
    if action in ("stop", "restart"):
        options["timeout"] = _int_value(
            body.get("timeout", request.args.get("timeout")), "timeout", 10, 0, 600
        )
    if action == "remove":
        options["force"] = bool(body.get("force")) or request.args.get("force", "") in ("1", "true")
    result = _service().container_action(host, container, action, current_principal(), **options)
    return {"result": result}


@docker_blueprint.get("/api/docker/hosts/<host>/containers/<container>/logs")
@require(OPERATOR, acts=True)  # an action: a link from another site must not start one
def logs(host: str, container: str) -> Response:
    """The container's output as text; ``follow=1`` keeps streaming new lines."""
    follow = request.args.get("follow", "") in ("1", "true")
    since = request.args.get("since")
    stream = _service().logs(
        host,
        container,
        current_principal(),
        tail=_int_arg("tail", 200, 0, 100_000),
        follow=follow,
        timestamps=request.args.get("timestamps", "") in ("1", "true"),
        since=_int_value(since, "since", None, 0, 2**40) if since else None,
    )

    def chunks():
        try:
            yield from stream
        except Exception as exc:  # noqa: BLE001 (the status line is gone; end the text visibly)
            yield f"\n[tasktree: log stream ended: {type(exc).__name__}]\n".encode()

    return Response(
        stream_with_context(chunks()),
        mimetype="text/plain",
        headers={
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        },
    )


# -- audit ------------------------------------------------------------------------------------


@docker_blueprint.get("/api/docker/audit")
@require(VIEWER)
def audit():
    service = _service()
    if service.audit is None:
        raise NotFound("no audit log in this process")
    cursor = request.args.get("cursor")
    before = _int_value(cursor, "cursor", None, 1, 2**62) if cursor else None
    host = request.args.get("host") or None
    return service.audit.list(limit=_int_arg("limit", 50, 1, 500), before=before, host=host)


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    return _int_value(request.args.get(name), name, default, low, high)


def _int_value(raw, name: str, default, low: int, high: int):
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise BadRequest(f"'{name}' must be an integer") from None
    if not low <= value <= high:
        raise BadRequest(f"'{name}' must be between {low} and {high}")
    return value
