"""`python -m bench` (`make bench`): run the benchmark, print the table, write the results."""

from __future__ import annotations

import asyncio
import logging

from rich.console import Console

from bench.report import print_report, write_json
from bench.runner import run_bench
from bench.settings import BenchSettings


def main() -> None:
    """Parse flags / BENCH_* variables, run every phase, report."""
    settings = BenchSettings(_cli_parse_args=True)
    logging.basicConfig(level=logging.WARNING)
    console = Console(width=None if Console().is_terminal else 120)
    results, doc = asyncio.run(run_bench(settings, console))
    write_json(settings.output, doc)
    print_report(console, results, doc)
    console.print(f"wrote {settings.output}")


if __name__ == "__main__":
    main()
