"""`python -m services.actions`: run the actions service configured from the environment."""

from __future__ import annotations

import asyncio

from services.actions.main import run
from services.actions.settings import ActionsSettings
from shared.logging import configure_logging


def main() -> None:
    """Entry point."""
    settings = ActionsSettings()
    configure_logging("actions", settings.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
