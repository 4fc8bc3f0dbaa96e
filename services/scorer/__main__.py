"""`python -m services.scorer`: run the scorer configured from the environment."""

from __future__ import annotations

import asyncio

from services.scorer.main import run
from services.scorer.settings import ScorerSettings
from shared.logging import configure_logging


def main() -> None:
    """Configure logging and run until SIGTERM / SIGINT."""
    settings = ScorerSettings()
    configure_logging("scorer", settings.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
