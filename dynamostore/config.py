"""Node and cluster configuration: pydantic models for the TOML files in `config/` and `DIR/cluster.toml`.

A cluster file has a `[cluster]` table (identity, secret, ring shape, members) and optional settings
tables (`[quorum]`, `[limits]`, `[handoff]`, `[antientropy]`, `[detector]`, `[storage]`, `[raft]`,
`[security]`, `[listeners]`) that apply to every node. Unknown fields are errors, so a typo is reported with the field's name instead of being
ignored. Nothing here is global: the loaded `NodeConfig` is passed to whatever needs it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(Exception):
    """A configuration file is missing, unreadable or invalid; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Member(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="node id, unique in the cluster")
    http_host: str = "127.0.0.1"
    http_port: int = Field(ge=1, le=65535)
    rpc_host: str = "127.0.0.1"
    rpc_port: int = Field(ge=1, le=65535)
    data_dir: str | None = Field(default=None, description="defaults to <cluster data dir>/<id>")


class ClusterSettings(_Strict):
    name: str = "dynamostore"
    secret: str = Field(min_length=16, description="shared secret that authenticates nodes to each other")
    partitions: int = Field(default=64, ge=1, le=4096, description="Q: fixed for the life of the cluster")
    n_val: int = Field(default=3, ge=1, le=9, description="N: replicas per key")
    data_dir: str = Field(default="./data", description="parent of each member's data directory")
    members: list[Member] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_members(self) -> ClusterSettings:
        ids = [m.id for m in self.members]
        if len(set(ids)) != len(ids):
            raise ValueError(f"member ids must be unique, got {ids}")
        return self


class QuorumSettings(_Strict):
    r: int = Field(default=2, ge=1, description="default read quorum")
    w: int = Field(default=2, ge=1, description="default write quorum")
    dw: int = Field(default=0, ge=0, description="default replicas that must fsync before a write is acknowledged")
    sloppy: bool = Field(default=True, description="count hinted fallbacks toward quorums by default")
    timeout_ms: int = Field(default=2000, ge=10, le=120_000, description="default request timeout")
    repair_wait_ms: int = Field(default=500, ge=0, description="how long a read waits for stragglers to repair them")
    read_all: bool = Field(
        default=False, description="ask all N replicas on every read (Riak) instead of R, plus more on failure"
    )
    replica_timeout_ms: int = Field(
        default=300, ge=1, description="a replica slower than this is replaced by a fallback (sloppy writes)"
    )


class LimitSettings(_Strict):
    max_key_bytes: int = Field(default=400, ge=1, le=440, description="storage keys carry a node id and prefix; LMDB caps keys at 511 bytes")
    max_value_bytes: int = Field(default=1 << 20, ge=1, le=64 << 20)
    max_siblings: int = Field(default=64, ge=2, description="writes past this many siblings are refused (409)")
    warn_siblings: int = Field(default=16, ge=1, description="log a warning when a key has this many siblings")


class HandoffSettings(_Strict):
    enabled: bool = True
    interval_ms: int = Field(default=500, ge=10, description="how often pending hints are looked at")
    rate_per_sec: int = Field(default=2000, ge=1, description="max hints delivered per second per node")
    concurrency: int = Field(default=2, ge=1, description="targets delivered to at once")
    max_hint_window_s: int = Field(default=3 * 3600, ge=1, description="stop hinting a node down this long")
    max_hints_per_target: int = Field(default=1_000_000, ge=1)


class AntiEntropySettings(_Strict):
    enabled: bool = True
    segments: int = Field(default=1024, ge=1, le=65_536, description="Merkle leaves per partition")
    exchange_interval_s: float = Field(default=10.0, gt=0, description="per partition")
    concurrency: int = Field(default=1, ge=1)
    max_keys_per_sec: int = Field(default=1000, ge=1, description="repair throttle (keeps foreground p99 within ~5%)")
    tombstone_grace_s: float = Field(default=3600.0, ge=0, description="keep tombstones at least this long")
    sweep_interval_s: float = Field(
        default=3600.0, gt=0, description="rescan every local partition this often: fixes drifted Merkle leaves, reaps tombstones"
    )
    scan_keys_per_sec: int = Field(default=10_000, ge=1, description="pace of tree builds and sweeps")


class DetectorSettings(_Strict):
    heartbeat_ms: int = Field(default=200, ge=10)
    down_after_ms: int = Field(default=800, ge=50, description="no answer for this long: routed around")


class RaftSettings(_Strict):
    voters: int = Field(default=3, ge=1, le=7, description="Raft voters among the founding members; the rest learn")
    tick_ms: int = Field(default=50, ge=5, le=1000, description="Raft logical clock tick")
    election_ticks: int = Field(default=10, ge=3, le=100, description="election timeout in ticks (randomized x1-2)")
    compact_every: int = Field(default=1000, ge=10, description="snapshot and compact the log every N entries")


class TransferSettings(_Strict):
    keys_per_sec: int = Field(default=20_000, ge=1, description="ownership transfer stream throttle, per node")
    batch_keys: int = Field(default=500, ge=1, description="keys per transfer batch")


class StorageSettings(_Strict):
    map_size_gb: int = Field(default=64, ge=1, description="LMDB map size (virtual; sparse on disk)")
    lmdb_sync: Literal["nometasync", "nosync"] = Field(
        default="nometasync",
        description="nometasync: every commit is fdatasync()ed (in a writer thread) and the store survives power "
        "loss intact, at worst without its last transaction(s); nosync: commits only reach the page cache (on "
        "the event loop, faster) and an OS crash or power loss may corrupt the store (docs/storage.md)",
    )


class SecuritySettings(_Strict):
    tls: bool = Field(default=False, description="HTTPS on the client port, mutual TLS between nodes")
    auth: bool = Field(default=False, description="clients need an API token (Authorization: Bearer)")
    insecure: bool = Field(
        default=False, description="allow listening on a non-loopback address without tls and auth"
    )
    certs_dir: str = Field(default="certs", description="ca.crt, <id>.crt, <id>.key; relative to the cluster file")
    ca_file: str = Field(default="", description="the cluster CA certificate; default <certs_dir>/ca.crt")
    cert_file: str = Field(default="", description="this node's certificate ({id}: the node id); default <certs_dir>/{id}.crt")
    key_file: str = Field(default="", description="this node's private key; default <certs_dir>/{id}.key")
    bootstrap_token_sha256: str = Field(
        default="", pattern=r"^([0-9a-fA-F]{64})?$",
        description="SHA-256 (hex) of the first admin token: `dynamostore token bootstrap` makes one",
    )
    status_access: Literal["open", "read", "admin"] = Field(default="read", description="who may GET /status")
    metrics_access: Literal["open", "read", "admin"] = Field(default="read", description="who may GET /metrics")


class ListenerSettings(_Strict):
    header_timeout_s: float = Field(default=10.0, gt=0, description="a request head (and a TLS handshake) must arrive within this")
    body_timeout_s: float = Field(default=30.0, gt=0, description="a request body must arrive within this of its head")
    idle_timeout_s: float = Field(default=75.0, gt=0, description="idle keep-alive HTTP connections are closed after this")
    max_http_connections: int = Field(default=1024, ge=1, description="more are answered 503 and closed")
    max_rpc_connections: int = Field(default=256, ge=1, description="peer connections per node; more are refused")
    rpc_handshake_timeout_s: float = Field(default=5.0, gt=0, description="a peer must authenticate within this")


class NodeSettings(_Strict):
    """Everything tunable that applies to every node (what `--settings FILE` may hold)."""

    quorum: QuorumSettings = QuorumSettings()
    limits: LimitSettings = LimitSettings()
    handoff: HandoffSettings = HandoffSettings()
    antientropy: AntiEntropySettings = AntiEntropySettings()
    detector: DetectorSettings = DetectorSettings()
    storage: StorageSettings = StorageSettings()
    raft: RaftSettings = RaftSettings()
    transfer: TransferSettings = TransferSettings()
    security: SecuritySettings = SecuritySettings()
    listeners: ListenerSettings = ListenerSettings()
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    testing_faults: bool = Field(default=False, description="allow fault injection (bench/tests only)")


class ClusterFile(NodeSettings):
    cluster: ClusterSettings

    @model_validator(mode="after")
    def _quorums_fit(self) -> ClusterFile:
        n = self.cluster.n_val
        for name in ("r", "w", "dw"):
            if getattr(self.quorum, name) > n:
                raise ValueError(f"quorum.{name} = {getattr(self.quorum, name)} is larger than n_val = {n}")
        if self.cluster.partitions < len(self.cluster.members):
            raise ValueError("cluster.partitions must be at least the number of members")
        return self


class NodeConfig(_Strict):
    """What one node process runs with: the cluster file plus which member it is."""

    file: ClusterFile
    node_id: str
    data_dir: Path
    joining: Member | None = None  # set for a node that is not a founding member (it joins a running cluster)
    config_dir: Path = Path(".")  # the cluster file's directory: relative certificate paths start there
    insecure: bool = False  # `dynamostore node --insecure`: as [security] insecure = true

    @field_validator("node_id")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        return v

    @property
    def me(self) -> Member:
        if self.joining is not None:
            return self.joining
        return next(m for m in self.file.cluster.members if m.id == self.node_id)

    @property
    def founder(self) -> bool:
        return self.joining is None

    @property
    def cluster(self) -> ClusterSettings:
        return self.file.cluster

    @property
    def secret(self) -> bytes:
        return self.file.cluster.secret.encode()


def _describe(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


def parse_settings(data: dict[str, Any], source: str) -> NodeSettings:
    try:
        return NodeSettings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from exc


def load_cluster_file(path: Path) -> ClusterFile:
    try:
        return ClusterFile.model_validate(read_toml(path))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, str(path))) from exc


def load_node_config(
    path: Path, node_id: str, *, http_port: int | None = None, rpc_port: int | None = None, host: str = "127.0.0.1"
) -> NodeConfig:
    """The config of one node. A node that is not a founding member of the file's cluster (one that will
    join a running cluster) must be given its ports."""
    cf = load_cluster_file(path)
    ids = [m.id for m in cf.cluster.members]
    joining: Member | None = None
    if node_id in ids:
        member = next(m for m in cf.cluster.members if m.id == node_id)
    elif http_port is None or rpc_port is None:
        raise ConfigError(
            f"node id {node_id!r} is not a founding member of {path} (members: {', '.join(ids)}); "
            "to start a new node that will join the cluster, give --http-port and --rpc-port"
        )
    else:
        try:
            joining = member = Member(id=node_id, http_host=host, http_port=http_port, rpc_host=host, rpc_port=rpc_port)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, "command line")) from exc
    base = Path(cf.cluster.data_dir)
    if not base.is_absolute():
        base = (path.parent / base).resolve()
    data_dir = Path(member.data_dir) if member.data_dir else base / node_id
    return NodeConfig(file=cf, node_id=node_id, data_dir=data_dir, joining=joining, config_dir=path.parent.resolve())
