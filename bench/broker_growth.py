"""`python -m bench.broker_growth`: does the embedded broker's cost per record grow with
what a partition already holds?

It does for tansu's memory storage: the same produce-and-follow round costs its process
more CPU the more records the partition holds, and a fresh topic costs what the first
round did. That is why each e2e run of `make bench` gets fresh topics (and so fresh
services): a later run on the same topics measured the broker's storage, not Tierstream.
Apache Kafka finds a fetch offset through its offset index, whatever the log's length.

Each round appends `--events` records (requests of 100 on a fixed schedule, as the e2e
load arrives) to one partition while a consumer follows the end, and reads the broker's
CPU seconds for the round. The last `--fresh-rounds` rounds use a new topic each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console
from rich.table import Table

from bench.cpu import CpuMeter
from bench.kafka_raw import kafka_settings
from shared.embedded import EmbeddedKafka
from shared.kafka import make_consumer, make_producer

REQUEST = 100  # records a request carries, as the e2e phase's batches
PAYLOAD = json.dumps({"customer_id": "c-000001", "type": "login", "pad": "x" * 300}).encode()


@dataclass(frozen=True)
class Round:
    topic: str
    held_before: int
    broker_cpu_s: float
    wall_s: float


async def _follow(consumer: AIOKafkaConsumer, count: int) -> None:
    got = 0
    while got < count:
        batches = await consumer.getmany(timeout_ms=100, max_records=1000)
        got += sum(len(records) for records in batches.values())


async def one_round(
    bootstrap: str, broker_pid: int, topic: str, events: int, interval_s: float
) -> Round:
    """Append `events` records to partition 0 of `topic` while following its end (the
    services' producer and consumer settings)."""
    settings = kafka_settings(bootstrap, partitions=1)
    producer, consumer = make_producer(settings), make_consumer(settings, None)
    await producer.start()
    await consumer.start()
    try:
        await producer.send_and_wait(topic, PAYLOAD, partition=0)  # the topic exists now
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        held = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, held)
        meter, started = CpuMeter({"broker": broker_pid}), time.perf_counter()
        meter.start()
        follower = asyncio.create_task(_follow(consumer, events))
        for _ in range(events // REQUEST):
            for _ in range(REQUEST):
                await producer.send(topic, PAYLOAD, partition=0)
            await asyncio.sleep(interval_s)
        await follower
        return Round(topic, held, meter.read()["broker"], time.perf_counter() - started)
    finally:
        await consumer.stop()
        await producer.stop()


async def measure(rounds: int, fresh_rounds: int, events: int, interval_s: float) -> list[Round]:
    """`rounds` rounds on one topic, then `fresh_rounds` on a new topic each."""
    results = []
    with EmbeddedKafka() as kafka:
        for index in range(rounds + fresh_rounds):
            topic = "growth" if index < rounds else f"fresh-{index}"
            results.append(
                await one_round(kafka.bootstrap_servers, kafka.pid, topic, events, interval_s)
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds on the same topic")
    parser.add_argument("--fresh-rounds", type=int, default=2, help="then rounds on new topics")
    parser.add_argument("--events", type=int, default=25_000, help="records a round appends")
    parser.add_argument("--interval-ms", type=float, default=20.0, help="pause between requests")
    args = parser.parse_args()
    console = Console()
    with console.status("producing and following rounds on the embedded broker"):
        rounds = asyncio.run(
            measure(args.rounds, args.fresh_rounds, args.events, args.interval_ms / 1000)
        )
    table = Table(title=f"tansu: {args.events:,} records appended and followed per round")
    for column in ("round", "topic", "records held before", "broker CPU s", "wall s"):
        table.add_column(column, justify="right")
    for index, r in enumerate(rounds):
        table.add_row(
            str(index), r.topic, f"{r.held_before:,}", f"{r.broker_cpu_s:.2f}", f"{r.wall_s:.1f}"
        )
    console.print(table)


if __name__ == "__main__":
    main()
