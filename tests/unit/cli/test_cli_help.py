"""The commands' --help: a flag is shown as taking no value."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.main import app


@pytest.mark.parametrize(
    ("command", "option"),
    [("run", "--no-demo"), ("simulate", "--dry-run"), ("report", "--json")],
)
def test_a_flag_has_no_value_placeholder_in_the_help(command: str, option: str) -> None:
    # Typer's rich help showed `--no-demo <bool>`, as if it took a value.
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.output.splitlines() if f"{option} " in line]
    after = line.split(option, 1)[1]
    assert "<bool>" not in after and "BOOLEAN" not in after, line
