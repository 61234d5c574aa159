"""The loader of compiled modules uses them only when they were built from the sources on disk now."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from dynamostore import native


def _manifest(root: Path, modules: dict[str, str], tag: str | None = None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps({"tag": tag or native._tag(), "modules": modules}))


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DYNAMOSTORE_NATIVE_DIR", str(tmp_path / "native"))
    monkeypatch.delenv("DYNAMOSTORE_PURE", raising=False)
    monkeypatch.setattr(native, "status", "not activated")
    monkeypatch.setattr(native, "active", False)
    monkeypatch.setattr(native, "_root", None)
    return tmp_path / "native"


def test_nothing_built_means_python_modules(root: Path) -> None:
    path = ["/src/dynamostore"]
    native.activate(path)
    assert path == ["/src/dynamostore"]
    assert not native.active and native.status.startswith("not built")


def test_current_build_goes_first_on_the_package_path(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _manifest(root, native._sources())
    monkeypatch.setattr("sys.path", ["/x"])
    path = ["/src/dynamostore"]
    native.activate(path)
    assert path == [str(root / "dynamostore"), "/src/dynamostore"]
    assert native.active and native.status.startswith("on")
    import sys

    assert sys.path == ["/x", str(root / "lib")]  # the shared library, after everything else


def test_a_changed_source_makes_the_whole_build_stale(root: Path) -> None:
    digests = native._sources()
    digests["kv.quorum"] = "0" * 64
    _manifest(root, digests)
    path = ["/src/dynamostore"]
    native.activate(path)
    assert path == ["/src/dynamostore"]
    assert not native.active
    assert native.status == "stale: kv/quorum.py changed since the build"


def test_subpackages_put_their_compiled_modules_first_only_when_active(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (root / "dynamostore" / "kv").mkdir(parents=True)
    sub = ["/src/dynamostore/kv"]
    native.extend(sub, "dynamostore.kv")
    assert sub == ["/src/dynamostore/kv"]  # nothing activated yet
    _manifest(root, native._sources())
    monkeypatch.setattr("sys.path", ["/x"])
    native.activate(["/src/dynamostore"])
    native.extend(sub, "dynamostore.kv")
    assert sub == [str(root / "dynamostore" / "kv"), "/src/dynamostore/kv"]
    native.extend(sub, "dynamostore.kv")  # idempotent
    assert len(sub) == 2


def test_another_interpreter_build_is_not_used(root: Path) -> None:
    _manifest(root, native._sources(), tag="cpython-99-elsewhere")
    assert native.check() == f"built for cpython-99-elsewhere, this interpreter is {native._tag()}"


def test_pure_switch_wins_over_a_current_build(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _manifest(root, native._sources())
    monkeypatch.setenv("DYNAMOSTORE_PURE", "1")
    path = ["/src/dynamostore"]
    native.activate(path)
    assert path == ["/src/dynamostore"] and not native.active
    assert "DYNAMOSTORE_PURE" in native.status


def test_a_corrupt_manifest_is_reported(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "manifest.json").write_text("{not json")
    why = native.check()
    assert why is not None and why.startswith("unreadable manifest")


def test_compiled_modules_never_reuse_an_except_name_for_another_type() -> None:
    """mypyc gives a name one type per function: `except A as exc` then `except B as exc` makes the second
    handler fail with a TypeError when compiled. The compiled modules use one name per exception type."""
    reused = []
    for name in native.MODULES:
        tree = ast.parse(native.source_path(name).read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            types: dict[str, set[str]] = {}
            for node in ast.walk(fn):
                if isinstance(node, ast.ExceptHandler) and node.name and node.type is not None:
                    types.setdefault(node.name, set()).add(ast.unparse(node.type))
            reused += [f"{name}.{fn.name}: {n} {sorted(t)}" for n, t in types.items() if len(t) > 1]
    assert reused == []
