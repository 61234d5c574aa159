"""The `dynamostore` command as a user runs it: kv put/get/delete, status, admin, and clear errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Cluster


def ds(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dynamostore", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.cluster
async def test_kv_status_and_admin_commands(make_cluster: Callable[..., Any]) -> None:
    c: Cluster = await make_cluster(3)
    url = c.url("n2")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return ds(*args)

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(run, *args)

    r = await cli("kv", "put", "greeting", "hello", "--url", url)
    assert r.returncode == 0 and "X-Coordinator" in r.stderr
    r = await cli("kv", "put", "greeting", "hello again", "--url", c.url("n1"))  # reads first: replaces
    assert r.returncode == 0
    r = await cli("kv", "get", "greeting", "--url", c.url("n3"), "--consistency", "ALL")
    assert r.returncode == 0 and r.stdout == "hello again\n"
    await cli("kv", "put", "greeting", "blind", "--blind", "--url", url)
    r = await cli("kv", "get", "greeting", "--url", url, "-r", "3")
    assert r.returncode == 0 and "2 siblings" in r.stdout and "blind" in r.stdout
    r = await cli("kv", "delete", "greeting", "--url", url, "-r", "3")  # the node deletes what it reads: both
    assert r.returncode == 0 and r.stdout == "deleted 2 values\n", r
    r = await cli("kv", "delete", "greeting", "--url", url, "-r", "3")
    assert r.returncode == 2 and "not found" in r.stderr
    r = await cli("kv", "get", "greeting", "--url", url, "-r", "3")
    assert r.returncode == 2 and "not found" in r.stderr
    r = await cli("kv", "put", "k", "v", "-w", "4", "--url", url)
    assert r.returncode == 1 and "larger than N = 3" in r.stderr
    r = await cli("status", "--url", url, "--json")
    doc = json.loads(r.stdout)
    assert doc["node"] == "n2" and {m["id"] for m in doc["members"]} == {"n1", "n2", "n3"}
    r = await cli("status", "--url", url)
    assert r.returncode == 0 and "ring epoch" in r.stdout
    r = await cli("admin", "members", "--url", url)
    assert r.returncode == 0 and json.loads(r.stdout)["voters"] == ["n1", "n2", "n3"]
    r = await cli("admin", "leave", "n1", "--url", url)  # unsafe: refused with the reason, nothing staged
    assert r.returncode == 1 and "fewer than N=3" in r.stderr
    r = await cli("admin", "plan", "--url", url)
    assert r.returncode == 1 and "nothing is staged" in r.stdout
    r = await cli("admin", "remove", "n3", "--url", url)  # n3 is up: remove is for dead nodes
    assert r.returncode == 1 and "use leave" in r.stderr


def test_clear_errors_without_a_cluster(tmp_path: Path) -> None:
    r = ds("status", "--url", "http://127.0.0.1:9")
    assert r.returncode == 1 and "cannot reach" in r.stderr and "Traceback" not in r.stderr
    r = ds("node", "--config", str(tmp_path / "missing.toml"), "--id", "n1")
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "s.toml"
    bad.write_text("[handoff]\nenabeld = true\n")
    r = ds("cluster", "--nodes", "3", "--data-dir", str(tmp_path / "d"), "--base-port", "20001", "--settings", str(bad))
    assert r.returncode == 2 and "handoff.enabeld" in r.stderr and "Traceback" not in r.stderr
    r = ds("kv", "put", "k", "--url", "http://127.0.0.1:9")
    assert r.returncode == 2 and "value is required" in r.stderr
