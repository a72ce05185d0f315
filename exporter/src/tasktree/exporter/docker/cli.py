"""``tasktree docker ls | pull | deploy | logs``: a client of a server's ``/api/docker`` routes.

Going through the server (not to the engines directly) means the same credentials, audit log and
traced runs as the web page.  ``--url`` / ``TASKTREE_URL`` (default ``http://127.0.0.1:8080``) and
``--token`` / ``TASKTREE_TOKEN``.  Exit status: 0 done, 1 the action failed on some host, 2 usage,
3 the server refused or could not be reached.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tasktree.exporter.settings import NO_DOCKER_HOSTS

_BAR = 24


def add_docker_commands(commands) -> None:
    """Add ``docker`` and its subcommands to the ``tasktree`` parser's subparsers."""
    docker = commands.add_parser(
        "docker", help="docker hosts: list, pull, deploy, logs (through the server)"
    )
    docker.set_defaults(run=run_docker)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get("TASKTREE_URL", "http://127.0.0.1:8080"),
        help="tasktree server (TASKTREE_URL, default http://127.0.0.1:8080)",
    )
    common.add_argument(
        "--token",
        default=os.environ.get("TASKTREE_TOKEN"),
        help="viewer or operator token (TASKTREE_TOKEN; prefer it to the flag)",
    )
    sub = docker.add_subparsers(required=True, metavar="ACTION")
    sub.add_parser = functools.partial(sub.add_parser, parents=[common])

    ls = sub.add_parser("ls", help="hosts and their containers (or --images)")
    ls.add_argument(
        "--host", dest="target_hosts", action="append", help="only this host (repeatable)"
    )
    ls.add_argument("--images", action="store_true", help="list images instead of containers")
    ls.add_argument("--refresh", action="store_true", help="ask the hosts now, not the cache")
    ls.add_argument("--json", action="store_true", help="print the API's JSON")
    ls.set_defaults(docker_run=_ls)

    pull = sub.add_parser("pull", help="pull an image on hosts, with progress")
    pull.add_argument("image")
    _host_args(pull)
    pull.set_defaults(docker_run=_pull)

    deploy = sub.add_parser("deploy", help="create or replace a container on many hosts at once")
    deploy.add_argument("image")
    deploy.add_argument(
        "--name", required=True, help="container name (an existing one is replaced)"
    )
    _host_args(deploy)
    deploy.add_argument("--command", help="command, split like a shell would")
    deploy.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        help="NAME=value, or NAME to pass this shell's value (repeatable)",
    )
    deploy.add_argument("--env-file", help="file of NAME=value lines")
    deploy.add_argument(
        "-p",
        "--port",
        dest="publish",
        action="append",
        default=[],
        help="[ip:]host:container[/udp]",
    )
    deploy.add_argument("-v", "--volume", action="append", default=[], help="source:/path[:ro]")
    deploy.add_argument("--label", action="append", default=[], help="name=value")
    deploy.add_argument(
        "--restart", default="no", help="no, always, unless-stopped, on-failure[:N]"
    )
    deploy.add_argument("--network", help="network mode: none, host, bridge or a network name")
    deploy.add_argument("--pull", choices=["missing", "always", "never"], default="missing")
    deploy.add_argument(
        "--stop-timeout", type=int, default=10, help="seconds the replaced container gets"
    )
    deploy.add_argument(
        "--dry-run", action="store_true", help="show what would change; change nothing"
    )
    deploy.set_defaults(docker_run=_deploy)

    logs = sub.add_parser("logs", help="a container's output")
    logs.add_argument("docker_host", metavar="host")
    logs.add_argument("container")
    logs.add_argument("--tail", type=int, default=200)
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("-t", "--timestamps", action="store_true")
    logs.set_defaults(docker_run=_logs)


def _host_args(parser) -> None:
    # dest names differ from `tasktree serve`'s (host, port): main() reads those from any namespace
    parser.add_argument(
        "--host",
        dest="target_hosts",
        action="append",
        help="a host (repeatable; default: all hosts)",
    )
    parser.add_argument(
        "--selector", action="append", default=[], help="only hosts with label name=value"
    )


class CliError(Exception):
    """The server refused or could not be reached; the message says which."""


class UsageError(Exception):
    """What was asked cannot be sent as it is (exit 2, like argparse's own usage errors)."""


def _request(args, method: str, path: str, body=None, *, stream: bool = False):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    request = urllib.request.Request(
        args.url.rstrip("/") + path, data=data, method=method, headers=headers
    )
    try:
        response = urllib.request.urlopen(request, timeout=None if stream else 120)
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise CliError(f"{method} {path}: {exc.code} {message}") from None
    except urllib.error.URLError as exc:
        raise CliError(
            f"cannot reach tasktree at {args.url}: {exc.reason} (is `tasktree serve` running"
            " there? point --url or TASKTREE_URL at its web address)"
        ) from None
    if stream:
        return response
    with response:
        return json.loads(response.read())


def run_docker(settings, args) -> int:
    """Entry point from ``tasktree docker ...`` (``settings`` is unused: this is a client)."""
    try:
        return args.docker_run(args)
    except UsageError as exc:
        print(f"tasktree docker: {exc}", file=sys.stderr)
        return 2
    except CliError as exc:
        print(f"tasktree docker: {exc}", file=sys.stderr)
        return 3
    except BrokenPipeError:  # `tasktree docker ls | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
        return 0
    except KeyboardInterrupt:
        return 130


# -- ls -----------------------------------------------------------------------------------------


def _ls(args) -> int:
    query = [("host", h) for h in args.target_hosts or []] + (
        [("refresh", "1")] if args.refresh else []
    )
    path = "/api/docker/" + ("images" if args.images else "containers")
    data = _request(args, "GET", path + ("?" + urllib.parse.urlencode(query) if query else ""))
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    if not data["hosts"]:  # two empty tables would not say why, nor what to do
        print(f"tasktree docker: {NO_DOCKER_HOSTS}", file=sys.stderr)
        return 0
    _table(
        ["HOST", "STATE", "ENGINE", "CONTAINERS", "ANSWERED", "ERROR"],
        [
            [
                h["name"],
                "up" if h["up"] else "DOWN",
                h["version"] or "-",
                f"{h['running']}/{h['containers']}",
                f"{h['latency'] * 1000:.0f} ms",
                h["error"] or "",
            ]
            for h in data["hosts"]
        ],
    )
    print()
    if args.images:
        _table(
            ["HOST", "TAGS", "ID", "SIZE"],
            [
                [
                    i["host"],
                    ", ".join(i["tags"]) or "<none>",
                    i["id"][7:19],
                    f"{(i['size'] or 0) / 1e6:.1f} MB",
                ]
                for i in data["images"]
            ],
        )
    else:
        _table(
            ["HOST", "NAME", "IMAGE", "STATE", "STATUS"],
            [
                [c["host"], c["name"], c["image"], c["state"], c["status"]]
                for c in data["containers"]
            ],
        )
    return 0


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())


# -- pull and deploy ----------------------------------------------------------------------------


def _targets(args) -> dict:
    body: dict = {"hosts": args.target_hosts or ["*"]}
    if args.selector:
        body["selector"] = dict(_pair(s, "--selector") for s in args.selector)
    return body


def _pair(text: str, flag: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise UsageError(f"{flag} wants name=value, got {text!r}")
    return name, value


def _pull(args) -> int:
    data = _request(args, "POST", "/api/docker/pull", {"image": args.image, **_targets(args)})
    return _follow(args, data["operation"])


def _deploy(args) -> int:
    body = {
        "image": args.image,
        "name": args.name,
        **_targets(args),
        "command": args.command,
        "env": _environment(args),
        "ports": args.publish,
        "volumes": args.volume,
        "labels": dict(_pair(x, "--label") for x in args.label),
        "restart_policy": args.restart,
        "network_mode": args.network,
        "pull": args.pull,
        "stop_timeout": args.stop_timeout,
        "dry_run": args.dry_run,
    }
    data = _request(args, "POST", "/api/docker/deploy", body)
    return _follow(args, data["operation"])


def _environment(args) -> dict[str, str]:
    env: dict[str, str] = {}
    if args.env_file:
        try:
            lines = Path(args.env_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UsageError(f"--env-file {args.env_file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise UsageError(f"--env-file {args.env_file}: not UTF-8 text") from None
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                name, value = _pair(line, "--env-file")
                env[name] = value
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:  # NAME alone: this shell's value, so secrets stay off the command line
            if name not in os.environ:
                raise UsageError(f"-e {name}: not set in this environment")
            value = os.environ[name]
        env[name] = value
    return env


def _follow(args, op: dict) -> int:
    """Draw per-host progress from the operation's event stream until it ends."""
    view = _Progress(op, sys.stdout)
    view.draw(op)
    with _request(
        args, "GET", f"/api/docker/operations/{op['id']}/events", stream=True
    ) as response:
        for snapshot in _sse(response):
            view.draw(snapshot)
            op = snapshot
    view.close(op)
    return 0 if op["status"] == "ok" else 1


def _sse(response):
    data: list[str] = []
    for raw in response:
        line = raw.decode("utf-8").rstrip("\n")
        if line.startswith("data: "):
            data.append(line[6:])
        elif not line and data:
            yield json.loads("\n".join(data))
            data = []


class _Progress:
    """One line per host with a bar; redrawn in place on a terminal, printed on change otherwise."""

    def __init__(self, op: dict, out):
        self.out = out
        self.tty = out.isatty()
        self.hosts = list(op["hosts"])
        self.width = max(len(h) for h in self.hosts)
        self.drawn = 0
        self.last: dict[str, str] = {}
        title = f"{op['kind']}{' (dry run)' if op.get('dry_run') else ''}: operation {op['id']}"
        print(title + (f", run {op['trace_id']}" if op.get("trace_id") else ""), file=out)

    def draw(self, op: dict) -> None:
        lines = [self._line(h, op["hosts"][h]) for h in self.hosts]
        if self.tty:
            if self.drawn:
                self.out.write(f"\x1b[{self.drawn}F")
            cols = shutil.get_terminal_size().columns
            for line in lines:
                self.out.write("\x1b[2K" + line[: cols - 1] + "\n")
            self.drawn = len(lines)
        else:
            for host, line in zip(self.hosts, lines, strict=True):
                key = op["hosts"][host]["status"] + op["hosts"][host]["message"]
                if self.last.get(host) != key:
                    self.last[host] = key
                    self.out.write(line + "\n")
        self.out.flush()

    def _line(self, host: str, state: dict) -> str:
        percent = (state.get("progress") or {}).get("percent")
        if percent is None:
            percent = 100.0 if state["status"] in ("ok", "error") else 0.0
        filled = int(_BAR * percent / 100)
        bar = "#" * filled + "." * (_BAR - filled)
        status, message = state["status"], state["message"]
        return f"{host.ljust(self.width)}  [{bar}] {percent:5.1f}%  {status:<7}  {message}"

    def close(self, op: dict) -> None:
        failed = [h for h, s in op["hosts"].items() if s["status"] == "error"]
        print(
            f"{op['status']}" + (f": failed on {', '.join(failed)}" if failed else ""),
            file=self.out,
        )


# -- logs ---------------------------------------------------------------------------------------


def _logs(args) -> int:
    query = urllib.parse.urlencode(
        {"tail": args.tail, "follow": int(args.follow), "timestamps": int(args.timestamps)}
    )
    path = (
        f"/api/docker/hosts/{urllib.parse.quote(args.docker_host, safe='')}/containers/"
        f"{urllib.parse.quote(args.container, safe='')}/logs?{query}"
    )
    with _request(args, "GET", path, stream=True) as response:
        while (
            chunk := response.read1(65536) if hasattr(response, "read1") else response.read(65536)
        ):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
    return 0
