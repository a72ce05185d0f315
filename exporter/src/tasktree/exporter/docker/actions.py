"""What happens on one host: pull with progress, deploy (replace by name), start, stop,
restart, remove, logs.

Each function runs on the calling thread, blocks on the docker engine (each read bounded by the
client's ``TASKTREE_DOCKER_ACTION_TIMEOUT``) and raises on failure: ``ActionFailed`` with a short
message, or the docker client's own errors (turned into messages by ``listing.describe_error``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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


class DeployLocks:
    """Deploys of one container name on one host take turns within this process: one lock per
    (host, name), dropped again once nobody holds or waits for it."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._locks: dict[tuple[str, str], tuple[threading.Lock, list[int]]] = {}

    @contextmanager
    def turn(self, host: str, name: str, waiting: Callable[[], None]) -> Iterator[None]:
        """Hold the lock of ``name`` on ``host``; ``waiting()`` first when another deploy has it."""
        key = (host, name)
        with self._mutex:
            lock, users = self._locks.setdefault(key, (threading.Lock(), [0]))
            users[0] += 1
        try:
            if not lock.acquire(blocking=False):
                waiting()
                lock.acquire()
            try:
                yield
            finally:
                lock.release()
        finally:
            with self._mutex:
                users[0] -= 1
                if not users[0]:
                    del self._locks[key]


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

    The steps, in this order:

    1. create the new container under a temporary name (``<name>-<temp_suffix>``);
    2. stop the old one (they may publish the same ports) and rename it aside
       (``<name>-<temp_suffix>-replaced``);
    3. give the new one the name, then start it;
    4. remove the old one.

    Until step 4 the old container exists, so a failure at any step before it is undone: the new
    container is removed, the old one gets its name back and is started again if it ran.  Nothing
    runs under a temporary name: the new one is named before it starts (its log driver's tag,
    for one, is fixed at start), and it can be named only once the old one has let go of the
    name.  Renaming the new one last, after removing the old one, would leave nothing to go back
    to when that rename fails (a name taken meanwhile), and the new one running under its
    temporary name.  Two deploys of one name on one host in this process take turns
    (``DeployLocks``, held by the caller); one from elsewhere (another tasktree, by hand) that
    slips in between makes a rename or the stop fail, and the deploy that meets it is undone.

    ``env`` is the full environment (the spec's plus TRACEPARENT).  A dry run only inspects.
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
    swap = _Swap(client, spec.name, existing, f"{spec.name}-{temp_suffix}")
    swap.create(spec, env, labels)
    old = _short(existing)
    try:
        if existing is not None:
            report(message=f"stopping {old}")
            swap.run(f"could not stop {old}", client.stop, existing["Id"], spec.stop_timeout)
            swap.run(f"could not rename {old} aside", client.rename, existing["Id"], swap.aside)
            swap.old_aside = True
        naming = f"could not name the new container {spec.name}"
        swap.run(naming, client.rename, swap.new_id, spec.name, naming=True)
        report(message="starting")
        swap.run("the new container did not start", client.start, swap.new_id)
    except _StepFailed as failed:
        raise ActionFailed(swap.undo(failed)) from failed.__cause__
    if existing is not None:
        report(message=f"removing {old}")
        swap.remove_old()
    state = client.inspect_container(swap.new_id)["State"]
    return {
        **plan,
        "action": "replaced" if existing else "created",
        "container_id": swap.new_id,
        "state": state.get("Status"),
    }


class _StepFailed(Exception):
    """A step of a deploy failed (``str()``: which, and why); the cause is the engine's error."""


class _Swap:
    """One deploy's new and old container on a host, and how to undo the swap so far."""

    def __init__(self, client: docker.APIClient, name: str, old: dict | None, temp_name: str):
        self.client = client
        self.name = name
        self.old = old
        self.temp_name = temp_name
        self.aside = f"{temp_name}-replaced"
        self.new_id = ""
        self.old_aside = False

    def create(self, spec: DeploySpec, env: dict, labels: dict) -> None:
        try:
            self.new_id = _create(self.client, spec, env, labels, self.temp_name)
        except docker.errors.APIError:
            raise  # the engine answered: nothing was created
        except Exception:
            # No answer (a timeout, a dropped connection): it may have been created all the same.
            _quietly(self.client.remove_container, self.temp_name, force=True)
            raise

    def run(self, step: str, call: Callable, *args, naming: bool = False) -> None:
        """One step; a failure is raised as ``_StepFailed`` saying which step and why."""
        try:
            call(*args)
        except Exception as exc:
            if naming and isinstance(exc, docker.errors.APIError) and exc.status_code == 409:
                step += " (taken meanwhile, by hand or by another tasktree)"
            raise _StepFailed(f"{step}: {describe_error(exc)}") from exc

    def undo(self, failed: _StepFailed) -> str:
        """Remove the new container, give the old one its name back and start it again if it
        ran; what to tell the user: the failed step, then what became of the old one."""
        message = str(failed)
        error = _quietly(self.client.remove_container, self.new_id, force=True)
        if error is not None and not isinstance(error, docker.errors.NotFound):
            message += (
                f"; the new container {self.new_id[:12]} could not be removed "
                f"({describe_error(error)}): remove it by hand"
            )
        if self.old is None:
            return message
        old = f"{message}; {_short(self.old)}"
        if self.old_aside:
            error = _quietly(self.client.rename, self.old["Id"], self.name)
            if isinstance(error, docker.errors.NotFound):
                return f"{old} was removed meanwhile"
            if error is not None:
                return (
                    f"{old} could not get its name back ({describe_error(error)}): "
                    f"it is stopped and named {self.aside}"
                )
        if self.old.get("State") != "running":
            return f"{old} kept"
        error = _quietly(self.client.start, self.old["Id"])
        if isinstance(error, docker.errors.NotFound):
            return f"{old} was removed meanwhile"
        if error is not None:
            return f"{old} kept but could not start again: {describe_error(error)}"
        return f"{old} kept and started again"

    def remove_old(self) -> None:
        """The new one runs under the name: the old one (stopped, aside) goes."""
        assert self.old is not None
        error = _quietly(self.client.remove_container, self.old["Id"], force=True)
        if error is not None and not isinstance(error, docker.errors.NotFound):
            raise ActionFailed(
                f"{self.name} replaced and running, but the old container {_short(self.old)} "
                f"(stopped, named {self.aside}) could not be removed: {describe_error(error)}"
            )


def _quietly(call: Callable, *args, **kwargs) -> Exception | None:
    """``call``; None, or the exception it raised (undoing goes on after a failed step)."""
    try:
        call(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        return exc
    return None


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
