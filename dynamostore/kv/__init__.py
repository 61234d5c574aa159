"""The key-value core of a node: versions (DVV sets) and contexts, quorum tallies, the get/put coordinators, and the local replica (the vnode) through which every write reaches storage."""

from dynamostore import native as _native

_native.extend(__path__, __name__)
