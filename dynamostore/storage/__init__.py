"""The node's embedded storage: an asyncio facade (`store.Storage`) over LMDB, and the data key layout (`keys`)."""

from dynamostore import native as _native

_native.extend(__path__, __name__)
