"""Node-to-node RPC: wire format (`wire`), frame batching (`cork`), client, server and method router (`rpc`)."""

from dynamostore import native as _native

_native.extend(__path__, __name__)
