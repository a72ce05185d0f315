"""The ``tasktree`` command: ``serve`` and ``demo``.  Every flag also has a TASKTREE_* variable."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
import threading

from tasktree.exporter.settings import Settings, SettingsError

# flag → (Settings field, type, help)
_SERVE_FLAGS = {
    "--database-url": ("database_url", str, "PostgreSQL URL (default: the embedded PostgreSQL)"),
    "--redis-url": ("redis_url", str, "Redis URL, for several processes sharing live updates"),
    "--host": ("host", str, "address to bind (default 127.0.0.1)"),
    "--port": ("port", int, "web UI, JSON API and /metrics port (default 8080)"),
    "--otlp-grpc-port": ("otlp_grpc_port", int, "OTLP/gRPC port (default 4317)"),
    "--otlp-http-port": ("otlp_http_port", int, "OTLP/HTTP port (default 4318)"),
    "--workers": ("workers", int, "processes folding spans into the tree (default 1)"),
    "--stall-after": ("stall_after", float, "seconds without heartbeat before a task is stalled"),
}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = Settings.from_env(
            **{field: getattr(args, field, None) for field, _, _ in _SERVE_FLAGS.values()}
        )
        from tasktree.exporter.auth import check_settings

        check_settings(settings)  # a malformed token list stops start-up, not the first request
    except SettingsError as exc:
        parser.error(str(exc))
    return args.run(settings, args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tasktree", description="The live tree of every batch job."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the tasktree service")
    demo = commands.add_parser("demo", help="run the service plus a sample job and print the URL")
    for sub in (serve, demo):
        for flag, (field, kind, text) in _SERVE_FLAGS.items():
            sub.add_argument(flag, dest=field, type=kind, help=text)
    serve.add_argument("--role", choices=["all", "folder"], default="all", help=argparse.SUPPRESS)
    serve.set_defaults(run=_serve)
    demo.add_argument("--exit", action="store_true", help="exit once the sample job is stored")
    demo.set_defaults(run=_demo)
    from tasktree.exporter.docker.cli import add_docker_commands  # issue 6: tasktree docker ...

    add_docker_commands(commands)
    return parser


def _serve(settings: Settings, args) -> int:
    from tasktree.exporter.server import Service

    service = Service(settings, serve=args.role == "all").start()
    helpers = _start_fold_workers(settings.workers - 1) if args.role == "all" else []
    if args.role == "all":
        print("TASKTREE_READY " + json.dumps(service.urls()), flush=True)
    _wait_for_signal()
    service.stop()
    for proc in helpers:
        proc.terminate()
    return 0


def _start_fold_workers(count: int) -> list[subprocess.Popen]:
    """Extra processes that only fold (the main process serves and folds too)."""
    argv = [sys.executable, "-m", "tasktree.exporter", "serve", *sys.argv[2:], "--role", "folder"]
    return [subprocess.Popen(argv) for _ in range(count)]


def _wait_for_signal() -> None:
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()


def _demo(settings: Settings, args) -> int:
    from tasktree.exporter.demo import run_demo

    return run_demo(settings, exit_when_done=args.exit)


if __name__ == "__main__":
    sys.exit(main())
