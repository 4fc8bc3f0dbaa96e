"""The load generator, run as its own process: `python -m bench.loadgen '<json job>'`.

It posts pre-encoded batch bodies to ingest over HTTP (aiohttp) and prints one JSON line
with what it measured. Keeping it out of the benchmark's process means its CPU is not
hidden inside the service's, and its timing excludes building the bodies.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp


@dataclass(frozen=True)
class IngestJob:
    """Post every body in `bodies_path` (one JSON body per line) with `concurrency` in flight."""

    url: str
    api_key: str
    bodies_path: str
    concurrency: int

    def bodies(self) -> list[bytes]:
        return Path(self.bodies_path).read_bytes().splitlines()


BATCH_PATH = "/v1/events/batch"


class IngestClient:
    """POSTs batch bodies to ingest over kept-alive connections, enough for `concurrency`.

    aiohttp rather than httpx: the load generator shares the machine's two cores with the
    services it measures, and for the same 100-event body httpx used 2.0-3.3 ms of CPU per
    request, aiohttp 0.3-0.4 (docs/BENCHMARKS.md, "The load generator").
    """

    def __init__(self, url: str, api_key: str, concurrency: int) -> None:
        self.url, self.concurrency = url, concurrency
        self.headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> IngestClient:
        self.session = aiohttp.ClientSession(
            self.url, headers=self.headers, timeout=aiohttp.ClientTimeout(total=60.0),
            connector=aiohttp.TCPConnector(limit=self.concurrency + 1),
        )  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    async def post(self, body: bytes) -> tuple[int, str]:
        """POST one batch body; the status and the answer's text."""
        assert self.session is not None, "use IngestClient in `async with`"
        async with self.session.post(BATCH_PATH, data=body) as response:
            return response.status, await response.text()


async def post_all(job: IngestJob, bodies: list[bytes]) -> dict[str, Any]:
    """Post the bodies (after one warm-up request); returns events (all, and those of 202
    answers), seconds and errors."""
    events_per_body = [len(json.loads(b)["events"]) for b in bodies]
    statuses: list[int] = []
    accepted = 0
    async with IngestClient(job.url, job.api_key, job.concurrency) as http:
        await http.post(bodies[0])  # connection and producer warm-up
        queue = iter(zip(bodies, events_per_body, strict=True))

        async def worker() -> None:
            nonlocal accepted
            for body, events in queue:
                status = (await http.post(body))[0]
                statuses.append(status)
                accepted += events if status == 202 else 0

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(job.concurrency)))
        seconds = time.perf_counter() - started
    return {
        "events": sum(events_per_body),
        "accepted_events": accepted,
        "seconds": seconds,
        "errors": sum(1 for s in statuses if s != 202),
        "loadgen_cpu_s": round(time.process_time(), 2),
    }


def main() -> None:
    """Run the job given as JSON on the command line; print the result as JSON."""
    spec = json.loads(sys.argv[1])
    mode = spec.pop("mode")
    if mode == "ingest":
        job = IngestJob(**spec)
        result = asyncio.run(post_all(job, job.bodies()))
    elif mode == "e2e":
        from bench.e2e_driver import E2eJob, drive

        result = asyncio.run(drive(E2eJob(**spec)))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
