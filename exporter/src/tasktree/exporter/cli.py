"""The ``tasktree`` command: ``serve``, ``demo`` and ``quarantine``.  Every flag also has a
TASKTREE_* variable."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import textwrap
import threading
import time

from tasktree.exporter.settings import OPTIONS, Option, Settings, SettingsError, plain_text

logger = logging.getLogger(__name__)

_ARGUMENT_TYPES = {"int": int, "float": float}
"""The argparse type of a flag by its field's annotation (the first word); others are text."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        # Commands without the serve flags (tasktree docker ...) resolve from the environment alone.
        flags = vars(args)
        settings = Settings.from_env(**{o.name: flags.get(o.name) for o in _flagged()})
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
    serve = commands.add_parser(
        "serve",
        help="run the tasktree service",
        epilog=_environment_only_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo = commands.add_parser("demo", help="run the service plus a sample job and print the URL")
    for sub in (serve, demo):
        for option in _flagged():
            assert option.flag is not None  # _flagged() yields flagged options only
            sub.add_argument(
                option.flag,
                dest=option.name,
                type=_ARGUMENT_TYPES.get(option.kind.split()[0], str),
                help=_flag_help(option),
            )
    serve.add_argument("--role", choices=["all", "folder"], default="all", help=argparse.SUPPRESS)
    serve.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # a fold worker's server
    serve.add_argument("--report-fd", type=int, help=argparse.SUPPRESS)  # its pipe to the server
    serve.set_defaults(run=_serve)
    demo.add_argument("--exit", action="store_true", help="exit once the sample job is stored")
    demo.set_defaults(run=_demo)
    _add_quarantine_command(commands)
    from tasktree.exporter.docker.cli import add_docker_commands  # issue 6: tasktree docker ...

    add_docker_commands(commands)
    return parser


def _add_quarantine_command(commands) -> None:
    quarantine = commands.add_parser(
        "quarantine",
        help="spans set aside because folding them failed: list them, requeue or discard them",
    )
    database = next(o for o in OPTIONS if o.name == "database_url")
    quarantine.add_argument(database.flag, dest=database.name, help=_flag_help(database))
    what = quarantine.add_mutually_exclusive_group()
    what.add_argument(
        "--requeue", action="store_true", help="fold them again (once the cause is fixed)"
    )
    what.add_argument("--discard", action="store_true", help="delete them")
    quarantine.set_defaults(run=_quarantine)


def _quarantine(settings: Settings, args) -> int:
    """List, requeue or discard what is set aside; never migrates (a listing must not change a
    schema under older servers, nor need the rights to)."""
    import psycopg

    from tasktree.exporter.server import resolve_database_url, where
    from tasktree.exporter.store import quarantine

    url = resolve_database_url(settings)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            if args.requeue:
                print(f"{quarantine.requeue(conn)} span(s) landed again in {where(url)}")
                return 0
            if args.discard:
                print(f"{quarantine.discard(conn)} span(s) deleted from {where(url)}")
                return 0
            groups = quarantine.by_error(conn)
    except psycopg.errors.UndefinedTable:
        no_table = "has no span_quarantine table: no tasktree, or an older one, has served it"
        print(f"tasktree: {where(url)} {no_table}; start `tasktree serve` on it once",
              file=sys.stderr)  # fmt: skip
        return 1
    except psycopg.Error as exc:
        print(f"tasktree: PostgreSQL at {where(url)}: {str(exc).strip()}", file=sys.stderr)
        return 1
    _print_groups(groups, where(url))
    return 0


def _print_groups(groups, place: str) -> None:
    if not groups:
        print(f"No spans are set aside in {place}.")
        return
    for g in groups:
        first, last = (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns / 1e9))
                       for ns in (g.first_ns, g.last_ns))  # fmt: skip
        print(f"{g.records} span(s) of {g.runs} run(s), set aside {first} to {last} UTC"
              f" (e.g. run {g.example_trace_id}):\n    {g.error}")  # fmt: skip
    print(f"(in {place}) Fix the cause, then `tasktree quarantine --requeue` folds them again"
          " (`--discard` deletes them).")  # fmt: skip


def _flagged() -> list[Option]:
    return [option for option in OPTIONS if option.flag]


def _flag_help(option: Option) -> str:
    text = (
        f"{plain_text(option.meaning)} ({option.env}; default {plain_text(option.shown_default)})"
    )
    return text.replace("%", "%%")  # argparse formats help strings with %


def _environment_only_help() -> str:
    """The settings without a flag, for the end of ``tasktree serve --help``."""
    lines = textwrap.wrap(
        "Every flag also has a TASKTREE_* variable (the flag wins). These settings are read"
        " from the environment only:",
        width=78,
    )
    for option in OPTIONS:
        if not option.flag:
            lines.append(f"  {option.env} (default {plain_text(option.shown_default)})")
            lines += textwrap.wrap(
                plain_text(option.meaning),
                width=78,
                initial_indent=" " * 6,
                subsequent_indent=" " * 6,
                break_on_hyphens=False,
            )
    return "\n".join(lines)


def _serve(settings: Settings, args) -> int:
    from tasktree.exporter.fold_workers import FoldCountsReporter, FoldWorkers
    from tasktree.exporter.server import Service

    service = Service(settings, serve=args.role == "all").start()
    helpers = None
    if args.role == "all":
        helpers = FoldWorkers(_fold_worker_argv(), settings.workers - 1)
        service.metrics.add_fold_workers(helpers)  # their folding shows on our /metrics
        print("TASKTREE_READY " + json.dumps(service.urls()), flush=True)
    reporter = None
    if args.report_fd is not None:
        reporter = FoldCountsReporter(service.folder, service.metrics.totals, args.report_fd)
        reporter.start()
    _wait_for_signal(parent=args.parent_pid)
    if helpers is not None:  # first: a worker that ends meanwhile (systemd and Ctrl-C signal
        helpers.stop()  # every process) must not be replaced
    service.stop()
    if reporter is not None:
        reporter.stop()
    return 0


def _fold_worker_argv() -> list[str]:
    """The command of the extra processes that only fold (the main process serves and folds
    too)."""
    return [sys.executable, "-m", "tasktree.exporter", "serve", *sys.argv[2:], "--role", "folder",
            "--parent-pid", str(os.getpid())]  # fmt: skip


def _wait_for_signal(parent: int | None = None) -> None:
    """Until SIGTERM or SIGINT; with ``parent``, also until that process is gone.

    A fold worker watches the server that started it: a server killed with SIGKILL (or by the
    OOM killer) cannot stop its workers, and an orphaned worker went on folding and holding
    connections beside the next server's.
    """
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(1.0):
        if parent is not None and os.getppid() != parent:
            logger.warning(
                "the tasktree serve process %s that started this fold worker is gone; stopping",
                parent,
            )
            return


def _demo(settings: Settings, args) -> int:
    from tasktree.exporter.demo import run_demo

    return run_demo(settings, exit_when_done=args.exit)


if __name__ == "__main__":
    sys.exit(main())
