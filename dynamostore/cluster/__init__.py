"""How a node knows the cluster: failure detection (`liveness`), the Raft driver and its on-disk log (`raft`, `raftlog`), and the replicated membership (`membership`)."""

from dynamostore import native as _native

_native.extend(__path__, __name__)
