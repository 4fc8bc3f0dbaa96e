"""`python -m services.scorer`: run the scorer configured from the environment."""

from __future__ import annotations

from services.scorer.main import run
from services.scorer.settings import ScorerSettings
from shared.gcpause import collect_less_often
from shared.logging import configure_logging
from shared.service import run_service, service_settings


def main() -> None:
    """Configure logging and run until SIGTERM / SIGINT."""
    settings = service_settings(ScorerSettings)
    collect_less_often()  # the process's own setting: tests running run() keep the default
    configure_logging("scorer", settings.log_level)
    run_service(run(settings), event_loop=settings.event_loop)


if __name__ == "__main__":
    main()
