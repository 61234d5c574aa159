"""Readiness (/health/ready): the pure rule over a node's facts, and the endpoint on a fake of those facts.

A node answers /health as soon as its listener is up; before its Raft log has applied the founding entry an
admin change is refused 409 "the cluster is not bootstrapped" (issue 14, item 6). Readiness is what callers
wait on instead: each missing condition alone makes the node not ready, and says why."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from dynamostore.api.ops import OpsApi, ReadyFacts, ready_reasons
from dynamostore.api.server import Request
from dynamostore.cli.localcluster import free_base_port
from dynamostore.metrics import NodeMetrics
from dynamostore.security.authz import Policy

READY = ReadyFacts(store_usable=True, membership_applied=True, raft_leader="n2", ring_known=True,
                   member_status="active")


def test_a_node_with_every_condition_met_is_ready() -> None:
    assert ready_reasons(READY) == []
    for status in ("joining", "leaving"):  # still serves reads and writes while it moves
        assert ready_reasons(replace(READY, member_status=status)) == []


@pytest.mark.parametrize("change, why", [
    ({"store_usable": False}, "storage"),
    ({"membership_applied": False}, "founding entry"),  # the race of issue 14 item 6
    ({"raft_leader": None}, "no Raft leader"),
    ({"ring_known": False}, "no ring"),
    ({"member_status": None}, "status is none"),  # started to join, not joined yet
    ({"member_status": "removed"}, "status is removed"),
])
def test_each_missing_condition_alone_makes_the_node_not_ready(change: dict[str, object], why: str) -> None:
    reasons = ready_reasons(replace(READY, **change))  # type: ignore[arg-type]
    assert len(reasons) == 1 and why in reasons[0], reasons


class Facts:
    """A node's facts that the test changes between probes."""

    def __init__(self) -> None:
        self.now = replace(READY, membership_applied=False, raft_leader=None)

    def __call__(self) -> ReadyFacts:
        return self.now


def _get(path: str) -> Request:
    return Request("GET", path, "", {}, True, 0)


async def test_the_endpoint_answers_503_with_reasons_then_200_once_ready() -> None:
    facts = Facts()
    ops = OpsApi("n1", dict, NodeMetrics("n1"), {}, None, facts)
    resp = await ops.ready(_get("/health/ready"))
    doc = json.loads(resp.body)
    assert resp.status == 503 and doc["ready"] is False and doc["error"] == "not_ready"
    assert len(doc["reasons"]) == 2 and "founding entry" in doc["reason"] and "no Raft leader" in doc["reason"]
    facts.now = READY
    resp = await ops.ready(_get("/health/ready"))
    doc = json.loads(resp.body)
    assert resp.status == 200 and doc == {"ready": True, "node": "n1", "raft_leader": "n2"}
    # liveness is unaffected by readiness: /health answered 200 all along
    assert (await ops.health(_get("/health"))).status == 200


async def test_an_ops_api_without_readiness_wired_is_never_ready() -> None:
    resp = await OpsApi("n1", dict, NodeMetrics("n1"), {}, None).ready(_get("/health/ready"))
    assert resp.status == 503


def test_readiness_is_open_like_health() -> None:
    assert Policy().required("GET", "/health/ready", "") is None


@pytest.mark.cluster
async def test_dynamostore_cluster_reports_running_only_once_every_node_takes_admin_changes(tmp_path: Path) -> None:
    """`dynamostore cluster` waits on readiness: when it says "cluster running", every node answers
    /health/ready 200 and an admin change proposed right then is applied, not refused "not bootstrapped"."""
    base = free_base_port(3)
    out = tmp_path / "cluster.out"
    with open(out, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "dynamostore", "cluster", "--nodes", "3", "--data-dir",
                                 str(tmp_path / "data"), "--base-port", str(base)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "cluster running" not in out.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
            await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as s:
            for k in range(3):
                async with s.get(f"http://127.0.0.1:{base + k}/health/ready") as r:
                    doc = await r.json()
                    assert r.status == 200 and doc["ready"] is True and doc["raft_leader"], doc
            async with s.post(f"http://127.0.0.1:{base + 2}/admin/clear", json={}) as r:
                assert r.status == 200, await r.text()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
