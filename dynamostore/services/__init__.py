"""Background services of a node, each given the narrow views it needs: hinted handoff, ownership transfer, anti-entropy (with its Merkle trees) and tombstone reaping."""

from dynamostore import native as _native

_native.extend(__path__, __name__)
