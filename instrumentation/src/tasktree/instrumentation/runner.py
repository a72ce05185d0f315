"""``tasktree-run [--name NAME] [--heartbeat S] [--no-stderr-tail] -- CMD [ARGS]``: any program
as a task.

The task is a root, or a child of the task in ``TRACEPARENT`` when that is set; the program gets
its own ``TRACEPARENT`` (the runner's task) so that a tasktree-instrumented child hangs below it.
While the program runs the task heartbeats.  stdin and stdout are the program's own; stderr is
passed through as it comes and its last 8 KiB kept (a tee), attached to the task as
``tasktree.stderr_tail`` when the program fails, its secrets masked as in the command (the
pipe makes stderr no terminal, may reorder its lines against stdout's in one file, and ends the
program with SIGPIPE at its next stderr write if the runner is killed: ``--no-stderr-tail``
leaves stderr alone, without a tail).  The task ends when the program exits: a background
process it leaves behind (``cmd &``) is not waited for, and its stderr is passed on only until
the runner exits.  The status comes from the exit code (0 is ``ok``) or the signal that killed
it; the runner exits with the program's exit code, or 128+N for signal N.  SIGTERM, SIGHUP,
SIGQUIT, SIGUSR1 and SIGUSR2 are forwarded to the program; SIGINT is not (a terminal sends it to
the program already), so the runner just waits for the program.
"""

from __future__ import annotations

import argparse
import collections
import errno
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

from opentelemetry import context, trace
from opentelemetry.trace import Status, StatusCode

from tasktree.instrumentation import configuration as _configure
from tasktree.instrumentation.decorator import _parent, _start
from tasktree.instrumentation.environment import redacted_args, redacted_text
from tasktree.instrumentation.propagation import child_env

STDERR_TAIL_BYTES = 8192
STDERR_TAIL_ATTRIBUTE = "tasktree.stderr_tail"
# After the program exits, how long its stderr may still take to reach us.  A background process it
# left behind (``cmd &``, a daemon's start script) keeps the pipe open, so the end of the pipe
# cannot be what the runner, and the task, wait for.
_STDERR_DRAIN_WAIT = 0.3
_FORWARDED = ("SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
_INTERPRETER = re.compile(
    r"(?P<kind>python|pypy)[0-9.]*|(?P<other>bash|sh|zsh|dash|node|ruby|perl|Rscript)"
)
# Per interpreter: options whose value is the next argument (python -W ignore etl.py), and the
# options after which the program is inline code (the job is then named after the interpreter).
_TAKES_VALUE = {
    "python": {"-W", "-X", "-Q", "--check-hash-based-pycs"},
    "bash": {"-o", "-O", "--rcfile", "--init-file"},
    "sh": {"-o"}, "zsh": {"-o"}, "dash": {"-o"},
    "node": {"-r", "--require", "--import", "--loader", "--experimental-loader", "--env-file",
             "-C", "--conditions", "--title"},
    "ruby": {"-r", "-I", "-E", "-C"},
    "perl": {"-I", "-M", "-m"},
    "Rscript": set(),
}  # fmt: skip
_INLINE_CODE = {
    "python": {"-c"}, "bash": {"-c"}, "sh": {"-c"}, "zsh": {"-c"}, "dash": {"-c"},
    "node": {"-e", "--eval", "-p", "--print"}, "ruby": {"-e"}, "perl": {"-e", "-E"},
    "Rscript": {"-e"},
}  # fmt: skip
# What env takes before the program: options with a value, and NAME=value assignments.
_ENV_TAKES_VALUE = {"-u", "--unset", "-C", "--chdir", "-S", "--split-string"}


def job_name(command: list[str]) -> str:
    """A short name for ``command``: the script for an interpreter (``python etl.py`` → ``etl``,
    ``python -m pkg.job`` → ``pkg.job``, ``env A=1 python -W ignore etl.py`` → ``etl``), else
    the program's base name."""
    command = _after_env(command) or command[:1]
    program = os.path.basename(command[0])
    interpreter = _INTERPRETER.fullmatch(program)
    if interpreter is None:
        return program
    kind = "python" if interpreter.group("kind") else interpreter.group("other")
    args = iter(command[1:])
    for arg in args:
        if kind == "python" and arg == "-m":
            return next(args, program)
        if arg in _INLINE_CODE[kind]:
            return program
        if arg in _TAKES_VALUE[kind]:
            next(args, None)
        elif arg == "--" or not arg.startswith("-"):
            script = arg if arg != "--" else next(args, "")
            return Path(script).stem or program
    return program


def _after_env(command: list[str]) -> list[str]:
    """``command`` without a leading ``env [OPTIONS] [NAME=value ...]``."""
    if not command or os.path.basename(command[0]) != "env":
        return command
    rest = iter(command[1:])
    for arg in rest:
        if arg in _ENV_TAKES_VALUE:
            next(rest, None)
        elif not (arg.startswith("-") or "=" in arg):
            return [arg, *rest]
    return []


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tasktree-run",
        description="Run a program as a tasktree task (a child of $TRACEPARENT when set).",
        usage="tasktree-run [--name NAME] [--heartbeat S] [--no-stderr-tail] -- CMD [ARGS ...]",
    )
    parser.add_argument("--name", help="task name (default: the command line)")
    parser.add_argument(
        "--heartbeat",
        type=float,
        metavar="S",
        help="seconds between heartbeats (default: $TASKTREE_HEARTBEAT_INTERVAL or 10)",
    )
    parser.add_argument(
        "--no-stderr-tail",
        dest="stderr_tail",
        action="store_false",
        help="leave the program's stderr as it is (a terminal stays a terminal, its lines keep"
        " their order with stdout's, and the program outlives a killed tasktree-run); a failed"
        " task then has no stderr tail",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the program and its arguments")
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("no command given (tasktree-run [options] -- CMD [ARGS])")
    if args.heartbeat is not None and args.heartbeat <= 0:
        parser.error("--heartbeat must be positive")
    return args


def _tee(source: int, tail: collections.deque) -> None:
    """Copies the program's stderr to ours as it comes and keeps the last bytes."""
    kept = 0
    while chunk := os.read(source, 65536):
        data = chunk
        while data:
            try:
                data = data[os.write(2, data) :]
            except OSError:
                break  # our stderr is gone: keep reading so the program never blocks
        tail.append(chunk)
        kept += len(chunk)
        while kept - len(tail[0]) >= STDERR_TAIL_BYTES:
            kept -= len(tail.popleft())
    os.close(source)


def _tail_text(tail: collections.deque) -> str:
    """The last bytes of stderr, secrets masked (``sh -x`` prints the command with its token).
    Masked before being cut: a secret cut off from its ``--password`` would show."""
    # The tee may still be appending (a background process writing): tuple() copies in one go.
    text = redacted_text(b"".join(tuple(tail)).decode("utf-8", errors="replace"))
    return text.encode()[-STDERR_TAIL_BYTES:].decode("utf-8", errors="replace")


def _forward_signals(process: subprocess.Popen) -> None:
    def forward(signum, frame):
        if process.poll() is None:
            process.send_signal(signum)

    for name in _FORWARDED:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), forward)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _cannot_start(program: str, error: OSError) -> tuple[int, str]:
    """The exit code a shell gives when ``program`` cannot be started (POSIX: 127 not found, 126
    found but not executable), and the reason, for the task's status and the user."""
    if error.errno in (errno.ENOENT, errno.ENOTDIR) or not program:
        return 127, f"command not found: {program}"
    reason = error.strerror or str(error)
    if error.errno == errno.ENOEXEC:  # a shell would run it with sh; exec does not
        reason += " (a script needs a #! line)"
    return 126, f"cannot execute {program}: {reason}"


def _run(command: list[str], span, keep_tail: bool = True) -> tuple[int, str, str]:
    """Runs the program; returns (runner exit code, status message or '', stderr tail).  Without
    ``keep_tail`` its stderr is left alone and there is no tail."""
    try:
        process = subprocess.Popen(
            command, env=child_env(), stderr=subprocess.PIPE if keep_tail else None
        )
    except OSError as error:
        code, message = _cannot_start(command[0], error)
        print(f"tasktree-run: {message}", file=sys.stderr)
        return code, message, ""
    span.set_attribute("tasktree.pid", process.pid)
    _forward_signals(process)
    tail: collections.deque = collections.deque()
    tee = None
    if process.stderr is not None:
        tee = threading.Thread(
            target=_tee, args=(os.dup(process.stderr.fileno()), tail), daemon=True
        )
        process.stderr.close()
        tee.start()
    returncode = process.wait()
    if tee is not None:
        tee.join(_STDERR_DRAIN_WAIT)
    if returncode < 0:
        number = -returncode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return 128 + number, f"killed by {name}", _tail_text(tail)
    return returncode, (f"exit code {returncode}" if returncode else ""), _tail_text(tail)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    command = args.command
    service_name = None if os.environ.get("OTEL_SERVICE_NAME") else (args.name or job_name(command))
    _configure.configure(
        service_name=service_name, heartbeat_interval=args.heartbeat, handle_sigterm=False
    )
    shown = redacted_args(command)
    name = args.name or shlex.join(shown)[:120]
    parent = _parent()
    span = _start(name, {"tasktree.command": shlex.join(shown)}, parent)
    token = context.attach(trace.set_span_in_context(span, parent))
    try:
        code, message, tail = _run(command, span, keep_tail=args.stderr_tail)
        span.set_attribute("process.exit.code", code)
        if message:
            span.set_status(Status(StatusCode.ERROR, message))
            if tail:
                span.set_attribute(STDERR_TAIL_ATTRIBUTE, tail)
    finally:
        context.detach(token)
        span.end()
    return code


def console_main() -> None:
    sys.exit(main())
