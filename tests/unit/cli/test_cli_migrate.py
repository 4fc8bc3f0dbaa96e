"""`tierstream migrate --to`: a move back is confirmed by --yes or by a person at a terminal."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import typer

from cli.main import confirm_move_back


@pytest.mark.parametrize(
    ("yes", "terminal", "answer", "moves", "asked"),
    [
        (True, False, False, True, False),  # --yes in a script
        (True, True, False, True, False),  # --yes asks nothing
        (False, False, True, False, False),  # a script without --yes: refused, never asked
        (False, True, True, True, True),  # a person says yes
        (False, True, False, False, True),  # a person says no
    ],
)
def test_a_move_back_needs_yes_or_a_yes_at_a_terminal(
    monkeypatch: pytest.MonkeyPatch, yes: bool, terminal: bool, answer: bool, moves: bool,
    asked: bool,
) -> None:  # fmt: skip
    questions: list[str] = []

    def confirm(text: str, **_: object) -> bool:
        questions.append(text)
        return answer

    monkeypatch.setattr(typer, "confirm", confirm)
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(isatty=lambda: terminal))
    assert confirm_move_back("scorer", "base", yes, "0008") is moves
    assert bool(questions) is asked
    assert all("scorer back from 0008 to base" in q for q in questions)
