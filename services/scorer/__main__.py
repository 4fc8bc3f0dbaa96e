"""`python -m services.scorer`: run the scorer configured from the environment."""

from __future__ import annotations

from services.scorer.main import run
from services.scorer.settings import ScorerSettings
from shared.gcpause import collect_less_often
from shared.logging import configure_logging
from shared.service import run_service
from shared.settings import settings_or_exit
from shared.tracing import TracingSettings


def main() -> None:
    """Configure logging and run until SIGTERM / SIGINT."""
    settings = settings_or_exit(ScorerSettings)
    settings_or_exit(TracingSettings)  # the services share it: a bad value stops each alike
    collect_less_often()  # the process's own setting: tests running run() keep the default
    configure_logging("scorer", settings.log_level)
    run_service(run(settings), event_loop=settings.event_loop)


if __name__ == "__main__":
    main()
