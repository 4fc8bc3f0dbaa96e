"""`python -m services.actions`: run the actions service configured from the environment."""

from __future__ import annotations

from services.actions.main import run
from services.actions.settings import ActionsSettings
from shared.logging import configure_logging
from shared.service import run_service
from shared.settings import settings_or_exit
from shared.tracing import TracingSettings


def main() -> None:
    """Entry point."""
    settings = settings_or_exit(ActionsSettings)
    settings_or_exit(TracingSettings)  # here, not after connecting, when the tracer is made
    configure_logging("actions", settings.log_level)
    run_service(run(settings), event_loop=settings.event_loop)


if __name__ == "__main__":
    main()
