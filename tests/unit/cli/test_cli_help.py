"""The commands' --help: flags without a value placeholder, sentences unbroken, names not types."""

from __future__ import annotations

from pathlib import Path

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


def help_of(*args: str, columns: int = 300) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("group", [(), ("rules",), ("playbooks",)])
def test_each_command_is_summed_up_on_one_line_when_the_terminal_is_wide(
    group: tuple[str, ...],
) -> None:
    # The docstrings' source line breaks split the list mid-sentence: "migrate  Apply ...
    # (schemas scorer and actions)," then "or with --service ..." on a line of its own.
    shown = help_of(*group)
    rows = shown.split("Commands")[1].splitlines()[1:-1]
    assert rows and all(not row.startswith("│  ") for row in rows), shown


def test_a_commands_help_keeps_sentences_whole_and_list_items_on_their_lines() -> None:
    shown = help_of("report")
    assert "with its tier at the end: one who moved" in shown, shown
    codes = help_of("import")
    assert "which may also be a mistyped address), unavailable or failing" in codes, codes
    assert "\n 2  usage error" in codes and "\n 130  interrupted" in codes, codes


def test_import_usage_names_its_file_its_choices_and_the_mapping_form() -> None:
    shown = help_of("import", columns=120)
    assert "{file}" not in shown and "FILE" in shown.split("\n", 3)[1], shown
    [type_] = [line for line in shown.splitlines() if "--type " in line]
    assert "<purchase|login|support>" in type_ and "<str>" not in type_, shown
    [column] = [line for line in shown.splitlines() if "--column " in line]
    assert "FIELD=COLUMN" in column and "list[str]" not in column, shown


@pytest.mark.parametrize("args", [("rules", "check"), ("rules", "diff"), ("playbooks", "check")])
def test_a_file_argument_is_named_file_in_the_usage(args: tuple[str, ...]) -> None:
    usage = next(line for line in help_of(*args).splitlines() if "Usage:" in line)
    assert "FILE" in usage and "{file}" not in usage, usage


def test_a_bad_type_is_a_usage_error_listing_the_choices(tmp_path: Path) -> None:
    source = tmp_path / "x.csv"
    source.write_text("customer_id,occurred_at,channel\n")
    result = CliRunner().invoke(
        app, ["import", str(source), "--type", "logins"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2, result.output
    assert "'purchase', 'login', 'support'" in result.output, result.output
