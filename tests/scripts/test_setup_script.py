"""``scripts/setup`` run twice at once (a second terminal) must not break either run (issue 18).

Run against a copy of the script with a stand-in for Python that behaves as the real one does in
the race: ``-m venv`` makes ``.venv/bin/python`` at once and its pip only a moment later, so a
second setup that does not wait finds a venv without pip.  No real venv, no pip install: fast.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

FAKE_PYTHON = textwrap.dedent("""\
    #!/usr/bin/env bash
    # python3 for scripts/setup: "-m venv DIR" makes DIR/bin/python at once, pip 0.5 s later.
    case "$1" in
      -c) exit 0 ;;
      --version) echo "Python 3.12.0"; exit 0 ;;
      -m) mkdir -p "$3/bin"; cp "$(dirname "$0")/venv-python" "$3/bin/python"
          sleep 0.5; touch "$3/pip-ready" ;;
    esac
""")

VENV_PYTHON = textwrap.dedent("""\
    #!/usr/bin/env bash
    # The venv's python: "-m pip ..." fails as the real one does before pip is in, and records
    # when each install starts and ends (installs into one venv must not overlap).
    venv="$(dirname "$0")/.."
    [ -e "$venv/pip-ready" ] || { echo "$0: No module named pip" >&2; exit 1; }
    echo "start $$" >> "$venv/installs"; sleep 0.2; echo "end $$" >> "$venv/installs"
""")


def copy_of_the_repo(tmp_path: Path) -> Path:
    """What scripts/setup reads: itself and the dependency files, plus the stand-in Python."""
    repo = tmp_path / "repo"
    for name in (
        "scripts/setup", "exporter/pyproject.toml", "instrumentation/pyproject.toml",
        "requirements-test.txt",
    ):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, repo / name)
    for name, text in (("python3", FAKE_PYTHON), ("venv-python", VENV_PYTHON)):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    return repo


def test_two_setups_at_once_both_succeed_and_install_once(tmp_path):
    repo = copy_of_the_repo(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(tmp_path / "python3")}

    def setup() -> subprocess.Popen:
        return subprocess.Popen([repo / "scripts/setup"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    first = setup()
    deadline = time.monotonic() + 10
    while not (repo / ".venv/bin/python").exists():  # the second terminal: the venv is half made
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.01)
    runs = [first, setup()]
    outputs = [run.communicate(timeout=30) for run in runs]

    for run, (_, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err
    assert "another scripts/setup is running" in "".join(err for _, err in outputs)
    installs = (repo / ".venv/installs").read_text().split()[::2]
    assert installs == ["start", "end", "start", "end"]  # pip, then the packages: one setup only


def test_the_setup_lock_file_is_ignored_by_git():
    lock = REPO / ".setup.lock"
    done = subprocess.run(["git", "check-ignore", "-q", str(lock)], cwd=REPO)
    assert done.returncode == 0, ".setup.lock is not in .gitignore"
