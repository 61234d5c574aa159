"""The client-facing HTTP surface: the HTTP/1.1 server (`server`), the key-value handlers (`kv`), the admin handlers (`admin`), the routing table and error mapping (`routes`), and the OpenAPI document."""

from dynamostore import native as _native

_native.extend(__path__, __name__)
