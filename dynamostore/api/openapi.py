"""The OpenAPI 3 description of the client HTTP API, served at /openapi.json."""

from __future__ import annotations

from typing import Any

_LEVEL = {"type": "string", "pattern": "^(ONE|TWO|THREE|QUORUM|ALL|one|two|three|quorum|all|[0-9]+)$"}


def _err(desc: str) -> dict[str, Any]:
    return {
        "description": desc,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def spec(n_val: int, max_value: int, max_key: int) -> dict[str, Any]:
    key_param = {
        "name": "key", "in": "path", "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": max_key},
    }
    common = [
        {"name": "X-Consistency-Level", "in": "header", "schema": _LEVEL,
         "description": f"R for reads, W for writes (N = {n_val})"},
        {"name": "X-Sloppy-Quorum", "in": "header", "schema": {"type": "string", "enum": ["true", "false"]}},
        {"name": "X-Timeout-Ms", "in": "header", "schema": {"type": "integer", "minimum": 1, "maximum": 120000}},
    ]
    write_params = common + [
        {"name": "X-Write-Quorum", "in": "header", "schema": _LEVEL},
        {"name": "X-Durable-Writes", "in": "header", "schema": _LEVEL},
        {"name": "X-Context", "in": "header", "schema": {"type": "string"},
         "description": "causal context from a previous read (or write answer): the write supersedes what it "
                        "covers; omit on a PUT for a write concurrent with everything, on a DELETE to delete "
                        "what the node reads at R"},
        {"name": "w", "in": "query", "schema": _LEVEL},
        {"name": "dw", "in": "query", "schema": _LEVEL},
        {"name": "pw", "in": "query", "schema": _LEVEL},
    ]
    read_params = common + [
        {"name": "X-Read-Quorum", "in": "header", "schema": _LEVEL},
        {"name": "r", "in": "query", "schema": _LEVEL},
        {"name": "pr", "in": "query", "schema": _LEVEL},
    ]
    write_errors = {
        "400": _err("malformed key, header, context or quorum (R/W larger than N)"),
        "409": _err("the write would exceed the sibling limit"),
        "503": _err("the write quorum was not reached in time"),
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "dynamostore", "version": "0.1.0",
                 "description": "Dynamo-style leaderless key-value store: per-request quorums, siblings, contexts."},
        "paths": {
            "/kv/{key}": {
                "get": {
                    "summary": "Read a key",
                    "parameters": [key_param] + read_params,
                    "responses": {
                        "200": {"description": "the value; X-Context covers it"},
                        "300": {"description": "siblings: multipart/mixed, or JSON with base64 values"},
                        "400": _err("malformed key, header or quorum"),
                        "404": _err("absent or deleted"),
                        "503": _err("the read quorum was not reached in time"),
                    },
                },
                "put": {
                    "summary": "Write a key",
                    "parameters": [key_param] + write_params
                    + [{"name": "returnbody", "in": "query", "schema": {"type": "string", "enum": ["true", "false"]}}],
                    "requestBody": {"content": {"application/octet-stream": {
                        "schema": {"type": "string", "format": "binary", "maxLength": max_value}}}},
                    "responses": {
                        "204": {"description": "stored; X-Acks, X-Hinted, X-Coordinator, and an X-Context "
                                               "covering the request's context plus this write only"},
                        "200": {"description": "stored, with the body (returnbody=true)"},
                        "300": {"description": "stored; siblings remain (returnbody=true)"},
                        "413": _err("value over the limit"),
                        **write_errors,
                    },
                },
                "delete": {
                    "summary": "Delete a key (writes a tombstone)",
                    "parameters": [key_param] + write_params + [
                        {"name": "X-Read-Quorum", "in": "header", "schema": _LEVEL,
                         "description": "without X-Context: the R of the read that finds what to delete"},
                        {"name": "r", "in": "query", "schema": _LEVEL}],
                    "responses": {
                        "204": {"description": "tombstone stored; without X-Context, X-Deleted-Siblings says how "
                                               "many values the read found and the tombstone supersedes"},
                        "404": _err("without X-Context: the read found no value, nothing was written"),
                        **write_errors,
                    },
                },
            },
            "/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
            "/health/ready": {"get": {
                "summary": "Readiness: the node can serve reads, writes and admin changes (storage open, the "
                           "membership log applied, a Raft leader known, a ring, a serving member)",
                "responses": {"200": {"description": 'JSON {"ready": true, "node", "raft_leader"}'},
                              "503": _err('not ready yet: "reason" and the list "reasons" say why')},
            }},
            "/status": {"get": {"summary": "Node, ring, members, hints, anti-entropy",
                                "responses": {"200": {"description": "JSON status"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
            "/status/history": {"get": {
                "summary": "The last minutes of this node, one sample a second (what the console at /ui charts)",
                "parameters": [{"name": "since", "in": "query", "schema": {"type": "integer"},
                                "description": "only samples numbered after this one"}],
                "responses": {"200": {"description": "JSON: interval_s, seq, samples"},
                              "400": _err("since is not an integer")},
            }},
            "/debug/kv/{key}": {"get": {
                "summary": "Every stored copy of a key on every node that may hold it (data and hints), "
                           "and why it has its siblings",
                "parameters": [key_param],
                "responses": {"200": {"description": "JSON: copies, merged version, primaries_agree, explanation"},
                              "400": _err("malformed key")},
            }},
        },
        "components": {"schemas": {"Error": {
            "type": "object", "required": ["error", "reason"],
            "properties": {"error": {"type": "string"}, "reason": {"type": "string"}},
        }}},
    }
