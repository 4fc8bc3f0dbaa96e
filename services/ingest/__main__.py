"""`python -m services.ingest`: run ingest configured from the environment."""

from __future__ import annotations

import asyncio

from services.ingest.main import run
from services.ingest.settings import IngestSettings
from shared.logging import configure_logging


def main() -> None:
    """Configure logging and run until SIGTERM / SIGINT."""
    settings = IngestSettings()
    configure_logging("ingest", settings.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
