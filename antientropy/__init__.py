"""Anti-entropy: Merkle trees per partition, the exchange protocol, read-repair planning, pacing.

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
    TokenBucket,
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
    "TokenBucket",
    "answer",
    "decode",
    "encode",
    "item_hash",
    "plan_read_repair",
    "run_exchange",
]
