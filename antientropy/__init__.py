"""Anti-entropy: Merkle trees per partition, the exchange protocol, read-repair planning, scheduling,
the tombstone reaping rule (pacing uses the shared ``ring.pacing.TokenBucket``).

Everything here is pure (no asyncio, clock or sockets) and imports only ``ring``; the node's asyncio
driver in ``dynamostore`` does the I/O.
"""

from antientropy.exchange import (
    ExchangeError,
    ExchangeInitiator,
    ExchangeResult,
    SegmentCache,
    answer,
    decode,
    encode,
    run_exchange,
)
from antientropy.merkle import MerkleTree, item_hash
from antientropy.readrepair import ReadRepairPlan, ReadReply, plan_read_repair
from antientropy.scheduler import (
    ExchangeOutcome,
    ExchangeScheduler,
    ExchangeTask,
    SchedulerConfig,
)

__all__ = [
    "ExchangeError",
    "ExchangeInitiator",
    "ExchangeOutcome",
    "ExchangeResult",
    "ExchangeScheduler",
    "ExchangeTask",
    "MerkleTree",
    "ReadRepairPlan",
    "ReadReply",
    "SchedulerConfig",
    "SegmentCache",
    "answer",
    "decode",
    "encode",
    "item_hash",
    "plan_read_repair",
    "run_exchange",
]
