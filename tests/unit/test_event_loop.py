"""The services' event loop: uvloop when installed (or asked for), asyncio's own otherwise."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from shared.service import loop_factory, run_service


def test_auto_and_uvloop_choose_uvloop_when_it_is_installed() -> None:
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop


def test_asyncio_chooses_the_standard_loop() -> None:
    assert loop_factory("asyncio") is None


def test_without_uvloop_auto_falls_back_and_uvloop_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes `import uvloop` fail
    assert loop_factory("auto") is None
    with pytest.raises(SystemExit, match="uvloop is not installed"):
        loop_factory("uvloop")


@pytest.mark.parametrize(("choice", "loop_type"), [("auto", uvloop.Loop), ("asyncio", None)])
def test_run_service_runs_the_coroutine_on_the_chosen_loop(
    choice: str, loop_type: type | None
) -> None:
    seen: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        seen.append(asyncio.get_running_loop())

    run_service(main(), event_loop=choice)
    assert len(seen) == 1
    if loop_type is None:
        assert not isinstance(seen[0], uvloop.Loop)
    else:
        assert isinstance(seen[0], loop_type)
