"""`tierstream playbooks check` checks the classes a playbooks file names against a rules file:
`--rules`, else the actions service's setting, else the shipped rules."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from shared.domain.playbooks import default_playbooks_path
from shared.domain.rules import default_rules_path

CLEAN = {"ACTIONS_RULES_FILE": None, "SCORER_RULES_FILE": None}  # None: removed for the run


def _typo(tmp_path: Path) -> Path:
    typo = tmp_path / "playbooks.yaml"
    text = default_playbooks_path().read_text()
    typo.write_text(text.replace("value_tier, to: gold}", "value_tier, to: goldd}"))
    return typo


def _renamed(tmp_path: Path) -> tuple[Path, Path]:
    """Rules whose top value tier is `goldd`, and the shipped playbooks written for them."""
    rules, books = tmp_path / "rules.yaml", tmp_path / "renamed.yaml"
    rules.write_text(default_rules_path().read_text().replace("gold", "goldd"))
    books.write_text(default_playbooks_path().read_text().replace("gold", "goldd"))
    return rules, books


def test_a_class_the_default_rules_lack_is_refused_in_one_line(tmp_path: Path) -> None:
    # Before: "valid", and the playbook never fired.
    typo = _typo(tmp_path)
    result = CliRunner().invoke(app, ["playbooks", "check", str(typo)], env=CLEAN)
    assert result.exit_code == 1, result.output
    assert result.output.startswith(
        f"invalid: {typo}: playbook 'gold_upgrade', field when.to: 'goldd' is not a value_tier"
        f" class of {default_rules_path()} (it declares gold, silver, bronze, none)"
    ), result.output


def test_the_classes_come_from_rules_or_the_actions_setting(tmp_path: Path) -> None:
    rules, books = _renamed(tmp_path)
    given = CliRunner().invoke(app, ["playbooks", "check", str(books), "--rules", str(rules)])
    assert given.exit_code == 0 and "valid (version" in given.output, given.output
    assert f"classes of {rules})" in given.output
    for variable in ("ACTIONS_RULES_FILE", "SCORER_RULES_FILE"):
        env = {**CLEAN, variable: str(rules)}
        configured = CliRunner().invoke(app, ["playbooks", "check", str(books)], env=env)
        assert configured.exit_code == 0, (variable, configured.output)
    shipped = CliRunner().invoke(
        app, ["playbooks", "check", str(default_playbooks_path())], env=CLEAN
    )
    refused = CliRunner().invoke(
        app, ["playbooks", "check", str(default_playbooks_path()), "--rules", str(rules)]
    )
    assert (shipped.exit_code, refused.exit_code) == (0, 1), refused.output
    assert "field when.to: 'gold' is not a value_tier class of" in refused.output


def test_an_unusable_rules_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing-rules.yaml"
    result = CliRunner().invoke(
        app, ["playbooks", "check", str(default_playbooks_path()), "--rules", str(missing)]
    )
    assert result.exit_code == 1
    assert result.output.startswith(f"invalid: {missing}: field (file): cannot read"), result.output


def test_a_misspelt_filter_is_refused_in_one_line_not_a_traceback(tmp_path: Path) -> None:
    books = tmp_path / "playbooks.yaml"
    text = default_playbooks_path().read_text()
    old = "Senior account manager: welcome gold customer {{ customer_id }}"
    books.write_text(text.replace(old, "Welcome {{ customer_id | upperr }}"))
    result = CliRunner().invoke(app, ["playbooks", "check", str(books)], env=CLEAN)
    assert (result.exit_code, result.exception.__class__) == (1, SystemExit), result.output
    line = next(
        n for n, text in enumerate(books.read_text().splitlines(), 1) if "| upperr }}" in text
    )
    assert result.output == (
        f"invalid: {books}:{line}: playbook 'gold_upgrade', field actions.0.title: unknown filter"
        " 'upperr' (did you mean 'upper'?)\n"
    )


def test_only_the_rules_file_setting_of_the_actions_service_is_read(tmp_path: Path) -> None:
    # Before: exit 2 on these, which have nothing to do with the file, and no check.
    unrelated = {"ACTIONS_PORT": "80800", "ACTIONS_WEBHOOK_URL": "https://hooks.example.com/x"}
    rules, books = _renamed(tmp_path)
    for file, env in (
        (default_playbooks_path(), {**CLEAN, **unrelated}),
        (books, {**CLEAN, **unrelated, "ACTIONS_RULES_FILE": str(rules)}),
    ):
        result = CliRunner().invoke(app, ["playbooks", "check", str(file)], env=env)
        assert result.exit_code == 0 and "valid (version" in result.output, result.output
