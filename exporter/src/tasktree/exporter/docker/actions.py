"""What happens on one host: pull with progress, deploy (replace by name), start, stop,
restart, remove, logs.

Each function runs on the calling thread, blocks on the docker engine (each read bounded by the
client's ``TASKTREE_DOCKER_ACTION_TIMEOUT``) and raises on failure: ``ActionFailed`` with a short
message, or the docker client's own errors (turned into messages by ``listing.describe_error``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import docker
import docker.errors

from tasktree.exporter.docker.listing import describe_error
from tasktree.exporter.docker.specs import DeploySpec, split_image

Report = Callable[..., None]  # report(message=..., progress=...) → the operation's host entry

_DONE_STATES = ("Download complete", "Pull complete", "Already exists", "Verifying Checksum")
_REPORT_EVERY_S = 0.25
_ENGINE_NETWORKS = ("none", "host", "bridge", "default")  # network modes that are no network name


class ActionFailed(Exception):
    """A host refused or failed an action; ``str()`` is a short message for users (no secrets)."""


class PullProgress:
    """Folds the engine's per-layer pull events into one percentage, reported 4 times a second."""

    def __init__(self, report: Report):
        self._report = report
        self._layers: dict[str, tuple[int, int]] = {}
        self._last = 0.0
        self.status = ""

    def add(self, event: dict) -> None:
        layer, status = event.get("id"), event.get("status", "")
        detail = event.get("progressDetail") or {}
        if layer and status == "Downloading" and detail.get("total"):
            self._layers[layer] = (detail.get("current", 0), detail["total"])
        elif layer and status in _DONE_STATES:
            current, total = self._layers.get(layer, (0, 0))
            self._layers[layer] = (total, total)
        elif layer and status == "Pulling fs layer":
            self._layers.setdefault(layer, (0, 0))
        if not layer:
            self.status = status
        now = time.monotonic()
        if now - self._last >= _REPORT_EVERY_S:
            self._last = now
            self._send(f"{status} {layer or ''}".strip())

    def finish(self) -> None:
        self._layers = {k: (t, t) for k, (_, t) in self._layers.items()}
        self._send(self.status or "pulled")

    def _send(self, message: str) -> None:
        current = sum(c for c, _ in self._layers.values())
        total = sum(t for _, t in self._layers.values())
        done_layers = sum(1 for c, t in self._layers.values() if t and c >= t)
        percent = round(100.0 * current / total, 1) if total else None
        self._report(
            message=message[:200],
            progress={
                "percent": percent,
                "current": current,
                "total": total,
                "layers": len(self._layers),
                "layers_done": done_layers,
            },
        )


def pull(client: docker.APIClient, image: str, report: Report) -> dict:
    """Pull ``image`` with streamed progress; returns the pulled image's id and digests."""
    repo, tag = split_image(image)
    progress = PullProgress(report)
    report(message="pulling", progress={"percent": 0.0})
    for event in client.pull(repo, tag=tag, stream=True, decode=True):
        if "error" in event:
            raise ActionFailed(f"pull {image}: {str(event['error'])[:300]}")
        progress.add(event)
    progress.finish()
    info = client.inspect_image(image)
    return {
        "image_id": info["Id"],
        "digests": info.get("RepoDigests") or [],
        "status": progress.status,
    }


def find_container(client: docker.APIClient, name: str) -> dict | None:
    """The container named exactly ``name`` (the engine's name filter matches substrings)."""
    for c in client.containers(all=True, filters={"name": name}):
        if f"/{name}" in (c.get("Names") or []):
            return c
    return None


def image_present(client: docker.APIClient, image: str) -> bool:
    try:
        client.inspect_image(image)
        return True
    except docker.errors.ImageNotFound:
        return False


def deploy(
    client: docker.APIClient,
    spec: DeploySpec,
    *,
    report: Report,
    env: dict[str, str],
    labels: dict[str, str],
    temp_suffix: str,
) -> dict:
    """Create ``spec.name`` from ``spec.image`` on this host, replacing a container of that name.

    The new container is created and started under a temporary name, the old one stopped just
    before (they may publish the same ports); only once the new one has started is the old one
    removed and the new one renamed.  So a create or a start the engine refuses (a bad command,
    network or mount) leaves the old container as it was, running again if it ran, and no new
    one behind.  ``env`` is the full environment (the spec's plus TRACEPARENT).  A dry run only
    inspects.
    """
    existing = find_container(client, spec.name)
    present = image_present(client, spec.image)
    if spec.pull == "never" and not present:
        raise ActionFailed(f"{spec.image} is not on this host and pull is 'never'")
    pull_needed = spec.pull == "always" or not present
    plan = {
        "action": "replace" if existing else "create",
        "pull": pull_needed,
        "replaces": _short(existing),
        "replaces_state": existing.get("State") if existing else None,
    }
    if spec.dry_run:
        _check_what_a_deploy_needs(client, spec, pull_needed)
        report(message=_plan_text(plan, spec))
        return {**plan, "dry_run": True}
    if pull_needed:
        pull(client, spec.image, report)
    report(message="creating container", progress=None)
    new_id = _create(client, spec, env, labels, f"{spec.name}-{temp_suffix}")
    try:
        if existing is not None:
            report(message=f"stopping {_short(existing)}")
            client.stop(existing["Id"], timeout=spec.stop_timeout)
        report(message="starting")
        client.start(new_id)
    except Exception as exc:
        raise ActionFailed(_undo_start(client, new_id, existing, exc)) from exc
    if existing:
        report(message=f"removing {_short(existing)}")
        client.remove_container(existing["Id"], force=True)
    client.rename(new_id, spec.name)
    state = client.inspect_container(new_id)["State"]
    return {
        **plan,
        "action": "replaced" if existing else "created",
        "container_id": new_id,
        "state": state.get("Status"),
    }


def _check_what_a_deploy_needs(client: docker.APIClient, spec: DeploySpec, pull_needed: bool):
    """A dry run fails where the deploy would: a named network this host lacks, an image it would
    have to pull that its registry does not have (asked for the manifest only, nothing pulled)."""
    network = spec.network_mode
    if network and network not in _ENGINE_NETWORKS and not network.startswith("container:"):
        try:
            client.inspect_network(network)
        except docker.errors.NotFound:
            raise ActionFailed(f"network {network!r} does not exist on this host") from None
    if pull_needed:
        try:
            client.inspect_distribution(spec.image)
        except docker.errors.APIError as exc:
            raise ActionFailed(f"{spec.image} cannot be pulled: {describe_error(exc)}") from exc


def _undo_start(client: docker.APIClient, new_id: str, old: dict | None, exc: Exception) -> str:
    """The new container did not start: remove it, start the old one again if it ran; what to
    tell the user."""
    client.remove_container(new_id, force=True)
    message = f"the new container did not start: {describe_error(exc)}"
    if old is None:
        return message
    if old.get("State") == "running":
        client.start(old["Id"])
        return f"{message}; {_short(old)} kept and started again"
    return f"{message}; {_short(old)} kept"


def _create(client: docker.APIClient, spec: DeploySpec, env: dict, labels: dict, name: str) -> str:
    host_config = client.create_host_config(
        port_bindings=spec.port_bindings() or None,
        binds=spec.volumes or None,
        restart_policy=spec.restart(),
        network_mode=spec.network_mode,
    )
    ports = [
        tuple(key.split("/")) if not key.endswith("/tcp") else int(key.split("/")[0])
        for key in spec.port_bindings()
    ]
    created = client.create_container(
        spec.image,
        command=spec.command,
        name=name,
        environment=env,
        labels=labels,
        ports=ports or None,
        host_config=host_config,
    )
    return created["Id"]


def _plan_text(plan: dict, spec: DeploySpec) -> str:
    pull = f"pull {spec.image}, then " if plan["pull"] else ""
    if plan["action"] == "replace":
        old = f"{plan['replaces']} ({plan['replaces_state']})"
        return f"would {pull}replace {old} with a new {spec.name}"
    return f"would {pull}create {spec.name}"


def _short(container: dict | None) -> str | None:
    return container["Id"][:12] if container else None


def container_action(
    client: docker.APIClient, container: str, action: str, *, timeout: int = 10, force: bool = False
) -> dict:
    """start, stop, restart or remove one container (by name or id); returns its state after."""
    info = client.inspect_container(container)  # docker.errors.NotFound when there is none
    if action == "start":
        client.start(info["Id"])
    elif action == "stop":
        client.stop(info["Id"], timeout=timeout)
    elif action == "restart":
        client.restart(info["Id"], timeout=timeout)
    elif action == "remove":
        client.remove_container(info["Id"], force=force)
        return {"id": info["Id"], "name": info["Name"].lstrip("/"), "state": "removed"}
    else:
        raise ValueError(action)
    after = client.inspect_container(info["Id"])
    return {"id": info["Id"], "name": info["Name"].lstrip("/"), "state": after["State"]["Status"]}


def logs(
    client: docker.APIClient,
    container: str,
    *,
    tail: int,
    follow: bool,
    timestamps: bool,
    since: int | None,
) -> Iterator[bytes]:
    """The container's output (stdout and stderr, interleaved), the last ``tail`` lines, then new
    ones while ``follow``; raises ``docker.errors.NotFound`` before the first chunk when missing."""
    info = client.inspect_container(container)
    stream = client.logs(
        info["Id"], stream=True, follow=follow, tail=tail, timestamps=timestamps, since=since
    )
    return iter(stream)
