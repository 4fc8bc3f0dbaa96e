"""/readyz of a consuming service: Postgres answers and the broker answers the consumer."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer

from shared.http import ReadyCheck
from shared.pg import Pool, database_ready


class BrokerCheck:
    """Whether the broker answers the running consumer's metadata request within a bound.

    Not a TCP connect: a broker that accepts connections but answers nothing (hung,
    stopped, or refusing this client's TLS or SASL) is not one the service can work with.
    """

    def __init__(self, *, within: float) -> None:
        self.within = within
        self.consumer: AIOKafkaConsumer | None = None  # set while the consumer runs

    async def __call__(self) -> bool:
        consumer = self.consumer
        if consumer is None:  # not started yet, or stopped: nothing is consumed
            return False
        try:
            # The consumer's own client and connections: what it can reach, we can reach.
            await asyncio.wait_for(consumer.topics(), self.within)
        except Exception:  # refused, cut, timed out: not ready (the probe itself never fails)
            return False
        return True


def readiness(pool: Pool, broker: BrokerCheck, *, within: float) -> ReadyCheck:
    """Both checks at once, each bounded by `within` seconds, so /readyz stays fast."""

    async def ready() -> dict[str, bool]:
        database, kafka = await asyncio.gather(database_ready(pool, within=within), broker())
        return {"database": database, "kafka": kafka}

    return ready
