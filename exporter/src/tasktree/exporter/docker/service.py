"""``DockerService``: the hosts, listing, operations, audit log, tracing and metrics of one process.

Built once by ``tasktree serve`` (``server.py``), kept in the app's ``Services.docker``.
Reading methods block at most about the slowest host's timeout; ``pull``/``deploy`` write the audit
row and start the run's root span on the caller's thread (so a database outage refuses the action
with 503 before anything is done), then work on background threads and return the ``Operation``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any

import psycopg_pool
from opentelemetry import trace

from tasktree.exporter.auth import Principal
from tasktree.exporter.docker import actions, tracing
from tasktree.exporter.docker.audit import AuditLog
from tasktree.exporter.docker.cache import make_cache
from tasktree.exporter.docker.hosts import HostClients, load_hosts
from tasktree.exporter.docker.listing import Inventory, describe_error
from tasktree.exporter.docker.operations import ERROR, OK, RUNNING, Operation, OperationRegistry
from tasktree.exporter.docker.specs import DeploySpec, PullSpec
from tasktree.exporter.errors import HostUnavailable, NotFound, TasktreeError
from tasktree.exporter.settings import Settings

logger = logging.getLogger(__name__)

_MAX_HOST_THREADS = 32
_DRAIN_S = 30.0  # at most this long (and the action timeout) for running operations at stop
_CUT_SHORT = "tasktree stopped before this operation ended; check the hosts"


class DockerService:
    def __init__(self, settings: Settings, pool: psycopg_pool.ConnectionPool | None):
        self.settings = settings
        self.hosts = {h.name: h for h in load_hosts(settings)}
        self.clients = HostClients(
            list(self.hosts.values()), settings.docker_timeout, settings.docker_action_timeout
        )
        self.inventory = Inventory(
            self.clients, make_cache(settings.redis_url), settings.docker_cache_ttl
        )
        self.operations = OperationRegistry(settings.redis_url)
        self.audit = AuditLog(pool) if pool is not None else None
        self.tracing = tracing.DockerTracing()
        from tasktree.exporter.docker.metrics import DockerMetrics

        self.metrics = DockerMetrics(self)
        # Operations running now: id → (coordinator thread, operation, root span).
        self._running: dict[str, tuple[threading.Thread, Operation, Any]] = {}
        self._running_lock = threading.Lock()
        self._closing = False
        self._deploy_locks = actions.DeployLocks()

    def connect_tracing(self, endpoint: str, token: str | None = None) -> None:
        """Send the runs of pulls and deploys to ``endpoint`` (this server's OTLP/HTTP receiver)."""
        self.tracing.connect(endpoint, token)

    def close(self) -> None:
        """Stop: new operations are refused, running ones get a little time to end (at most the
        action timeout, and 30 s), and those still running are recorded as cut short (audit
        row, run) rather than left running for ever."""
        self._drain()
        self.tracing.shutdown()
        self.metrics.close()
        self.inventory.close()
        self.clients.close()
        self.operations.close()

    # -- seeing ------------------------------------------------------------------------------

    def snapshot(self, names: list[str] | None = None, *, refresh: bool = False) -> list[dict]:
        return self.inventory.snapshot(names, refresh=refresh)

    # -- long actions ------------------------------------------------------------------------

    def pull(self, spec: PullSpec, who: Principal) -> Operation:
        def on_host(op: Operation, host: str, span, report) -> dict:
            span.set_attribute("docker.image", spec.image)
            return actions.pull(self.clients.client(host, action=True), spec.image, report)

        return self._launch("pull", spec.image, spec.hosts, spec.public(), who, on_host)

    def deploy(self, spec: DeploySpec, who: Principal) -> Operation:
        def on_host(op: Operation, host: str, span, report) -> dict:
            span.set_attributes(
                {
                    "docker.image": spec.image,
                    "docker.container.name": spec.name,
                    "docker.env_keys": sorted(spec.env),
                    "docker.dry_run": spec.dry_run,
                }
            )
            env = {**spec.env, "TRACEPARENT": tracing.traceparent(span)}
            labels = {
                **spec.labels,
                "tasktree.operation": op.id,
                "tasktree.trace_id": op.trace_id or "",
                "tasktree.deployed_by": who.name,
            }
            # Deploys of one name on one host take turns: a second one waits for the first to
            # end, then replaces what it left (a dry run changes nothing and does not wait).
            waiting = f"waiting for another deploy of {spec.name} on {host} to end"
            turn = (
                nullcontext()
                if spec.dry_run
                else self._deploy_locks.turn(host, spec.name, lambda: report(message=waiting))
            )
            with turn:
                return actions.deploy(
                    self.clients.client(host, action=True),
                    spec,
                    report=report,
                    env=env,
                    labels=labels,
                    temp_suffix=f"tasktree-{op.id[:8]}",
                )

        kind = "deploy"
        return self._launch(
            kind,
            f"{spec.name} ({spec.image})",
            spec.hosts,
            spec.public(),
            who,
            on_host,
            dry_run=spec.dry_run,
        )

    def _launch(
        self,
        kind: str,
        target: str,
        hosts: list[str],
        public: dict,
        who: Principal,
        on_host: Callable,
        *,
        dry_run: bool = False,
    ) -> Operation:
        if self._closing:
            raise HostUnavailable("tasktree is stopping; try again once it is back")
        op = Operation(kind, hosts, public, who.name, dry_run=dry_run)
        root = self.tracing.tracer.start_span(
            f"docker {kind}{' (dry run)' if dry_run else ''}: {target}",
            attributes={
                "docker.operation": op.id,
                "docker.action": kind,
                "docker.hosts": hosts,
                "docker.actor": who.name,
                "docker.dry_run": dry_run,
            },
        )
        op.trace_id = tracing.ids(root)[0]
        try:
            if self.audit is not None:
                op.audit_id = self.audit.start(
                    actor=who.name,
                    role=who.role,
                    action=kind,
                    hosts=hosts,
                    target=target,
                    request=public,
                    dry_run=dry_run,
                    operation_id=op.id,
                    trace_id=op.trace_id,
                )
        except Exception as exc:
            tracing.fail(root, exc, "the audit log could not be written; nothing was done")
            root.end()
            raise
        self.operations.add(op)
        logger.info(
            "docker %s %s on %s by %s (operation %s)",
            kind,
            target,
            ",".join(hosts),
            who.name,
            op.id,
        )
        coordinator = threading.Thread(
            target=self._run, args=(op, root, on_host), name=f"docker-op-{op.id}", daemon=True
        )
        with self._running_lock:
            self._running[op.id] = (coordinator, op, root)
        coordinator.start()
        return op

    def _run(self, op: Operation, root, on_host: Callable) -> None:
        """The operation's coordinator thread: every host at once, then the verdict everywhere.
        Hosts run on daemon threads (a pool's threads would hold the process past its stop until
        an engine answered; ``close`` records what was cut short)."""
        try:
            seats = threading.BoundedSemaphore(_MAX_HOST_THREADS)

            def one_host(host: str) -> None:
                with seats:
                    self._run_host(op, root, host, on_host)

            threads = [
                threading.Thread(target=one_host, args=(h,), name=f"docker-op-{op.id}-{h}",
                                 daemon=True)
                for h in op.hosts
            ]  # fmt: skip
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            status = op.finish()
            failed = [h for h, s in op.hosts.items() if s["status"] == ERROR]
            if failed:
                tracing.fail(
                    root,
                    None,
                    f"failed on {len(failed)} of {len(op.hosts)} hosts: {', '.join(failed)}",
                )
            root.set_attribute("docker.status", status)
            self.inventory.invalidate(list(op.hosts))
            if self.audit is not None and op.audit_id is not None:
                self.audit.finish(op.audit_id, status, _audit_result(op))
        except Exception:
            logger.exception("docker operation %s failed", op.id)
        finally:
            with self._running_lock:
                recorded_by_close = self._running.pop(op.id, None) is None
            if not recorded_by_close:  # else close() cut it short and ended it
                root.end()
                self.tracing.flush()

    def _drain(self) -> None:
        with self._running_lock:
            self._closing = True
            running = list(self._running.values())
        deadline = time.monotonic() + min(_DRAIN_S, self.settings.docker_action_timeout)
        for thread, _, _ in running:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._running_lock:
            cut = list(self._running.values())
            self._running.clear()
        for _, op, root in cut:
            logger.warning("docker operation %s cut short: tasktree is stopping", op.id)
            tracing.fail(root, None, _CUT_SHORT)
            root.end()
            if self.audit is not None and op.audit_id is not None:
                self.audit.finish(op.audit_id, ERROR, {**_audit_result(op), "error": _CUT_SHORT})
        self.tracing.flush()

    def _run_host(self, op: Operation, root, host: str, on_host: Callable) -> None:
        span = self.tracing.tracer.start_span(
            f"{op.kind} on {host}",
            context=trace.set_span_in_context(root),
            attributes={"docker.host": host},
        )
        op.host_update(host, status=RUNNING, span_id=tracing.ids(span)[1])

        def report(**fields) -> None:
            op.host_update(host, **fields)

        try:
            result = on_host(op, host, span, report)
        except Exception as exc:  # noqa: BLE001 (one host's failure is that host's result)
            message = describe_error(exc) if not isinstance(exc, actions.ActionFailed) else str(exc)
            tracing.fail(span, exc, message)
            op.host_update(host, status=ERROR, message=message)
        else:
            span.set_attribute(
                "docker.result", str(result.get("action") or result.get("status") or "ok")
            )
            op.host_update(host, status=OK, result=result, message=_done_text(op.kind, result))
        finally:
            span.end()

    # -- short actions -----------------------------------------------------------------------

    def container_action(
        self, host: str, container: str, action: str, who: Principal, **options
    ) -> dict:
        """start/stop/restart/remove one container, audited; ``NotFound`` for a missing one."""
        self._known(host)
        started = time.monotonic()
        try:
            result = actions.container_action(
                self.clients.client(host, action=True), container, action, **options
            )
            status, outcome = OK, result
        except Exception as exc:
            status, outcome = ERROR, {"error": describe_error(exc)}
            self._audit_once(who, action, host, container, {"options": options}, status, outcome)
            raise _translate(exc, host, container) from exc
        finally:
            self.inventory.invalidate([host])
        outcome["duration"] = round(time.monotonic() - started, 3)
        self._audit_once(who, action, host, container, {"options": options}, status, outcome)
        return outcome

    def logs(
        self,
        host: str,
        container: str,
        who: Principal,
        *,
        tail: int,
        follow: bool,
        timestamps: bool,
        since: int | None,
    ) -> Iterator[bytes]:
        self._known(host)
        asked = {"tail": tail, "follow": follow}
        try:
            stream = actions.logs(
                self.clients.client(host, action=True),
                container,
                tail=tail,
                follow=follow,
                timestamps=timestamps,
                since=since,
            )
        except Exception as exc:
            outcome = {"error": describe_error(exc)}
            self._audit_once(who, "logs", host, container, asked, ERROR, outcome)
            raise _translate(exc, host, container) from exc
        self._audit_once(who, "logs", host, container, asked, OK, {})
        return stream

    def _audit_once(
        self,
        who: Principal,
        action: str,
        host: str,
        container: str,
        request: dict,
        status: str,
        result: dict,
    ) -> None:
        if self.audit is not None:
            self.audit.start(
                actor=who.name,
                role=who.role,
                action=action,
                hosts=[host],
                target=container,
                request=request,
                status=status,
                result={host: result},
            )

    def _known(self, host: str) -> None:
        if host not in self.hosts:
            raise NotFound(f"no docker host named {host!r}")


# The engine's words when the container itself is missing (its 404s also name a missing network,
# image or mount source a container needs to start).
_NO_SUCH_CONTAINER = "No such container"


def _translate(exc: Exception, host: str, container: str) -> Exception:
    import docker.errors

    from tasktree.exporter.errors import BadRequest, Conflict

    if isinstance(exc, TasktreeError):
        return exc
    if isinstance(exc, docker.errors.NotFound) and _NO_SUCH_CONTAINER in str(exc.explanation):
        return NotFound(f"no container {container!r} on {host}")
    if isinstance(exc, docker.errors.NotFound):  # something it needs: a network, a mount source
        return Conflict(f"{host}: {describe_error(exc)}")
    if isinstance(exc, docker.errors.APIError) and exc.status_code == 409:
        return Conflict(f"{host}: {describe_error(exc)}")
    if isinstance(exc, docker.errors.APIError) and exc.status_code == 400:
        return BadRequest(f"{host}: {describe_error(exc)}")
    return HostUnavailable(f"{host}: {describe_error(exc)}")


def _done_text(kind: str, result: dict) -> str:
    if result.get("dry_run"):
        return (
            "dry run: "
            + (
                "replace " + str(result.get("replaces"))
                if result.get("action") == "replace"
                else "create"
            )
            + (" after a pull" if result.get("pull") else "")
        )
    if kind == "pull":
        return result.get("status") or "pulled"
    return (
        f"{result.get('action')} {str(result.get('container_id', ''))[:12]} ({result.get('state')})"
    )


def _audit_result(op: Operation) -> dict:
    return {
        h: {"status": s["status"], "message": s["message"], "result": s["result"]}
        for h, s in op.snapshot()["hosts"].items()
    }
