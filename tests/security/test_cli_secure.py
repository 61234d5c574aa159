"""`dynamostore cluster --tls` as a user runs it, and the client commands against it with and without
credentials: clear answers, never a traceback."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dynamostore.cli.localcluster import free_base_port

pytestmark = pytest.mark.cluster


def ds(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dynamostore", *args], capture_output=True, text=True, timeout=90,
                          env={**os.environ, **(env or {})})


async def test_cluster_tls_and_the_client_commands(tmp_path: Path) -> None:
    base = free_base_port(3)
    data = tmp_path / "data"
    log = open(tmp_path / "cluster.out", "w")
    proc = subprocess.Popen([sys.executable, "-m", "dynamostore", "cluster", "--tls", "--nodes", "3",
                             "--data-dir", str(data), "--base-port", str(base)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "cluster running" not in (tmp_path / "cluster.out").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "cluster.out").read_text()
            await asyncio.sleep(0.1)
        out = (tmp_path / "cluster.out").read_text()
        assert f"https://127.0.0.1:{base}" in out and "admin.token" in out
        url = f"https://127.0.0.1:{base + 1}"
        ca, token = str(data / "certs" / "ca.crt"), str(data / "admin.token")

        def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
            return ds(*args, env=env)

        r = await asyncio.to_thread(run, "kv", "put", "k", "v1", "--url", url, "--ca", ca, "--token-file", token)
        assert r.returncode == 0, r.stderr
        r = await asyncio.to_thread(run, "kv", "get", "k", "--url", f"https://127.0.0.1:{base + 2}",
                                    env={"DYNAMOSTORE_CA": ca, "DYNAMOSTORE_TOKEN_FILE": token})
        assert r.returncode == 0 and r.stdout == "v1\n", r.stderr
        r = await asyncio.to_thread(run, "kv", "get", "k", "--url", url, "--ca", ca)  # no token
        assert r.returncode != 0 and "401" in r.stderr and "Traceback" not in r.stderr, r.stderr
        r = await asyncio.to_thread(run, "status", "--url", url, "--ca", ca)
        assert r.returncode == 1 and "401" in r.stderr and "Traceback" not in r.stderr, r.stderr
        r = await asyncio.to_thread(run, "status", "--url", url, "--ca", ca, "--token-file", token, "--json")
        assert r.returncode == 0 and '"tls": true' in r.stdout
        r = await asyncio.to_thread(run, "status", "--url", url, "--token-file", token)  # the CA not given
        assert r.returncode == 1 and "certificate" in r.stderr.lower() and "Traceback" not in r.stderr
        r = await asyncio.to_thread(run, "admin", "members", "--url", url, "--ca", ca, "--token-file", "/nonexistent")
        assert r.returncode == 2 and "token file" in r.stderr
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
