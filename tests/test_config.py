"""Configuration: the documented defaults match the code, example clusters load, errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynamostore.config import ConfigError, NodeSettings, load_cluster_file, load_node_config, parse_settings, read_toml
from dynamostore.cli.localcluster import write_cluster_file

CONFIG = Path(__file__).resolve().parent.parent / "config"


def test_defaults_file_documents_every_setting_with_its_real_default() -> None:
    documented = read_toml(CONFIG / "defaults.toml")
    assert parse_settings(documented, "defaults.toml") == NodeSettings()
    code = NodeSettings().model_dump()
    assert set(documented) == set(code)
    for table, fields in code.items():
        if isinstance(fields, dict):
            assert set(documented[table]) == set(fields), table


@pytest.mark.parametrize("name", ["local-3.toml", "local-5.toml"])
def test_example_clusters_load(name: str) -> None:
    cf = load_cluster_file(CONFIG / name)
    nid = cf.cluster.members[0].id
    cfg = load_node_config(CONFIG / name, nid)
    assert cfg.me.id == nid and cfg.data_dir.name == nid


def test_bad_config_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "c.toml"
    bad.write_text(
        '[cluster]\nsecret = "0123456789abcdef0123"\nmembers = [{id = "a", http_port = 1, rpc_port = 2}]\n'
        "[quorum]\nw = 7\n[handoff]\nenabeld = true\n"
    )
    with pytest.raises(ConfigError) as e:
        load_cluster_file(bad)
    assert "handoff.enabeld" in str(e.value)
    bad.write_text('[cluster]\nsecret = "short"\nmembers = []\n')
    with pytest.raises(ConfigError) as e:
        load_cluster_file(bad)
    assert "cluster.secret" in str(e.value) and "cluster.members" in str(e.value)
    with pytest.raises(ConfigError, match="not valid TOML"):
        bad.write_text("[[[")
        load_cluster_file(bad)
    with pytest.raises(ConfigError, match="not a founding member"):
        load_node_config(CONFIG / "local-3.toml", "n9")


def test_cluster_file_keeps_secret_and_partitions_on_restart(tmp_path: Path) -> None:
    settings = tmp_path / "s.toml"
    settings.write_text("[cluster]\npartitions = 32\n[handoff]\nenabled = false\n")
    first = load_cluster_file(write_cluster_file(tmp_path / "d", 3, 20001, settings))
    assert first.cluster.partitions == 32 and first.handoff.enabled is False
    again = load_cluster_file(write_cluster_file(tmp_path / "d", 3, 20001, None))
    assert again.cluster.secret == first.cluster.secret and again.cluster.partitions == 32
    settings.write_text("[cluster]\npartitions = 64\n")
    with pytest.raises(ConfigError, match="fixed for the life"):
        write_cluster_file(tmp_path / "d", 3, 20001, settings)
    settings.write_text("[quorum]\nbogus = 1\n")
    with pytest.raises(ConfigError, match="quorum.bogus"):
        write_cluster_file(tmp_path / "e", 3, 20001, settings)


def test_storage_lmdb_sync_defaults_to_the_power_loss_safe_mode_and_refuses_unknown_modes() -> None:
    assert NodeSettings().storage.lmdb_sync == "nometasync"
    assert parse_settings({"storage": {"lmdb_sync": "nosync"}}, "s.toml").storage.lmdb_sync == "nosync"
    with pytest.raises(ConfigError) as e:
        parse_settings({"storage": {"lmdb_sync": "fast"}}, "s.toml")
    assert "storage.lmdb_sync" in str(e.value) and "'nometasync' or 'nosync'" in str(e.value)
