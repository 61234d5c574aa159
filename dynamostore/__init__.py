"""dynamostore: a Dynamo-style leaderless key-value store.

Compiled copies of the hot-path modules are used when they are current (see dynamostore.native).
"""

from dynamostore import native as _native

_native.activate(__path__)
