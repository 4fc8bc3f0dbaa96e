"""`python -m services.ingest`: run ingest configured from the environment."""

from __future__ import annotations

from services.ingest.main import run
from services.ingest.settings import IngestSettings
from shared.logging import configure_logging
from shared.service import run_service, service_settings


def main() -> None:
    """Configure logging and run until SIGTERM / SIGINT."""
    settings = service_settings(IngestSettings)
    configure_logging("ingest", settings.log_level)
    run_service(run(settings), event_loop=settings.event_loop)


if __name__ == "__main__":
    main()
