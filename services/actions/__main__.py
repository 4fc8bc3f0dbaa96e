"""`python -m services.actions`: run the actions service configured from the environment."""

from __future__ import annotations

from services.actions.main import run
from services.actions.settings import ActionsSettings
from shared.logging import configure_logging
from shared.service import run_service, service_settings


def main() -> None:
    """Entry point."""
    settings = service_settings(ActionsSettings)
    configure_logging("actions", settings.log_level)
    run_service(run(settings), event_loop=settings.event_loop)


if __name__ == "__main__":
    main()
