"""One table of settings (``settings.OPTIONS``) drives ``tasktree serve --help`` and the README's
configuration table: the README must say what the table generates."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasktree.exporter import cli
from tasktree.exporter.settings import OPTIONS, Settings, configuration_table

README = Path(__file__).resolve().parents[3] / "README.md"
REGENERATE = (
    ".venv/bin/python -c 'from tasktree.exporter.settings import configuration_table;"
    " print(configuration_table())'"
)


def _readme_table() -> str:
    text = README.read_text()
    start = text.index("| flag | variable | default | meaning |")
    return text[start:].split("\n\n", 1)[0]


def test_the_readme_configuration_table_is_the_generated_one():
    assert _readme_table() == configuration_table(), f"regenerate it: {REGENERATE}"


def test_serve_help_names_every_setting_with_its_flag_or_variable(capsys):
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps at any space
    for option in OPTIONS:
        assert option.env in shown
        if option.flag:
            assert f"{option.flag} {option.name.upper()}" in shown


def test_flags_parse_to_the_fields_types():
    args = cli._parser().parse_args(
        ["serve", "--port", "9000", "--stall-after", "2.5", "--host", "::1"]
    )
    settings = Settings.from_env({}, **{o.name: getattr(args, o.name) for o in OPTIONS if o.flag})
    assert (settings.port, settings.stall_after, settings.host) == (9000, 2.5, "::1")
