"""Compiled copies of the hot-path modules (mypyc), and the loader that uses them only while they are current.

The Python sources stay the source of truth: tests, editing and debugging all work on them, and a node runs
them unchanged where nothing was compiled. `dynamostore native build` compiles the modules in
`MODULES` with mypyc (one shared library) into `<sys.prefix>/dynamostore-native/` and records the SHA-256 of
every source it compiled. At import, `activate()` (called by `dynamostore/__init__.py`) puts that directory
ahead of the package's own on `dynamostore.__path__` only when every recorded hash still matches the source
on disk, so an edited module never runs as a stale compiled copy: it falls back to Python, all of it, until
the next build. `DYNAMOSTORE_PURE=1` turns compiled modules off; `DYNAMOSTORE_NATIVE_DIR` puts them
somewhere else (an interpreter whose prefix is not writable).

On the throughput bench this cuts the coordinator's CPU per get by about a quarter (docs/performance.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

# The request path: HTTP front end and API, the node's call wrappers, coordinator and tallies, versions and
# contexts, RPC, failure detector, metrics, the replica, storage and the Merkle bookkeeping of each write.
# Everything else (Raft, anti-entropy exchanges, handoff, CLI) is not hot and stays interpreted.
MODULES = (
    "api.kv",
    "api.routes",
    "api.server",
    "cluster.liveness",
    "cluster.peers",
    "cluster.state",
    "kv.context",
    "kv.coordinator",
    "kv.quorum",
    "kv.replica",
    "kv.versioning",
    "metrics",
    "net.client",
    "net.cork",
    "net.rpc",
    "net.server",
    "net.wire",
    "node",
    "outcome",
    "services.merkle_trees",
    "storage.engine",
    "storage.keys",
    "storage.lmdb_engine",
    "storage.store",
    "ticks",
)
GROUP = "dynamostore"  # the shared library is the top-level module `dynamostore__mypyc`
PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_TREES = ("dynamostore", "ring", "antientropy", "handoff")  # what type-checking the modules imports

# What activate() decided, for the node's log and /status.
status = "not activated"
active = False
_root: Path | None = None  # the build in use, once activated


def source_path(module: str) -> Path:
    """The source file of a compiled module, given as a dotted path under the package (`kv.replica`)."""
    return PACKAGE_DIR.joinpath(*module.split(".")).with_suffix(".py")


def native_dir() -> Path:
    return Path(os.environ.get("DYNAMOSTORE_NATIVE_DIR") or Path(sys.prefix) / "dynamostore-native")


def _tag() -> str:
    """Compiled modules fit one interpreter build: its cache tag and platform."""
    return f"{sys.implementation.cache_tag}-{sysconfig.get_platform()}"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sources() -> dict[str, str]:
    return {name: _digest(source_path(name)) for name in MODULES}


def check(root: Path | None = None) -> str | None:
    """None when the compiled modules under `root` match this interpreter and the current sources; else why not."""
    root = root or native_dir()
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except FileNotFoundError:
        return "not built (dynamostore native build)"
    except (OSError, ValueError) as exc:
        return f"unreadable manifest: {exc}"
    if manifest.get("tag") != _tag():
        return f"built for {manifest.get('tag')}, this interpreter is {_tag()}"
    recorded = manifest.get("modules", {})
    try:
        current = _sources()
    except OSError as exc:
        return f"cannot read the sources: {exc}"
    changed = sorted(name for name in MODULES if recorded.get(name) != current[name])
    if changed:
        return f"stale: {', '.join(n.replace('.', '/') + '.py' for n in changed)} changed since the build"
    return None


def activate(package_path: list[str]) -> None:
    """Put the compiled modules ahead of the sources when they are current (see the module docstring).
    Called by `dynamostore/__init__.py`; each subpackage then calls `extend` for its own `__path__`."""
    global status, active, _root
    if os.environ.get("DYNAMOSTORE_PURE", "") not in ("", "0"):
        status = "off (DYNAMOSTORE_PURE is set)"
        return
    root = native_dir()
    why = check(root)
    if why is not None:
        status = why
        return
    package_path.insert(0, str(root / "dynamostore"))
    if str(root / "lib") not in sys.path:
        sys.path.append(str(root / "lib"))
    status = f"on ({len(MODULES)} modules compiled with mypyc)"
    active = True
    _root = root


def extend(package_path: list[str], package: str) -> None:
    """A subpackage's compiled modules go ahead of its sources, when `activate` turned them on. (A directory
    of the build without an `__init__.py` never shadows the source package itself: a regular package found
    later on the parent's path wins over a namespace portion.)"""
    if not active or _root is None:
        return
    compiled = _root.joinpath(*package.split("."))
    if compiled.is_dir() and str(compiled) not in package_path:
        package_path.insert(0, str(compiled))


# --- building ------------------------------------------------------------------------------------------

_SETUP = """
from setuptools import setup
from mypyc.build import mypycify
setup(name="dynamostore-native", script_args=["build_ext", "--inplace"],
      ext_modules=mypycify({paths!r} + ["--ignore-missing-imports", "--follow-imports=silent"],
                                  group_name={group!r}))
"""


def build(force: bool = False, quiet: bool = False) -> Path:
    """Compile MODULES into native_dir(); a no-op when the build there is current (unless `force`)."""
    root = native_dir()
    if not force and check(root) is None:
        if not quiet:
            print(f"dynamostore.native: compiled modules in {root} are current")
        return root
    src_root = PACKAGE_DIR.parent
    with tempfile.TemporaryDirectory(prefix="dynamostore-native-") as tmp:
        work = Path(tmp)
        for tree in SOURCE_TREES:
            if (src_root / tree).is_dir():
                shutil.copytree(src_root / tree, work / tree, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        files = {name: Path("dynamostore", *name.split(".")).with_suffix(".py") for name in MODULES}
        digests = {name: _digest(work / files[name]) for name in MODULES}
        paths = [str(files[name]) for name in MODULES]
        if not quiet:
            print(f"dynamostore.native: compiling {len(MODULES)} modules with mypyc (a minute or two)...")
        proc = subprocess.run([sys.executable, "-c", _SETUP.format(paths=paths, group=GROUP)], cwd=work,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"mypyc failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
        staging = Path(tempfile.mkdtemp(prefix=".native-", dir=root.parent))
        try:
            (staging / "lib").mkdir()
            for lib in work.glob(f"{GROUP}__mypyc.*"):
                shutil.copy2(lib, staging / "lib" / lib.name)
            for name in MODULES:
                folder = (work / files[name]).parent
                stem = files[name].stem
                shims = list(folder.glob(f"{stem}.*.so")) + list(folder.glob(f"{stem}.*.pyd"))
                if not shims:
                    raise BuildError(f"mypyc produced no extension for dynamostore.{name}")
                dest = staging / files[name].parent
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy2(shims[0], dest / shims[0].name)
            (staging / "manifest.json").write_text(json.dumps({"tag": _tag(), "modules": digests}, indent=1))
            old = root.with_name(root.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            if root.exists():
                root.rename(old)
            staging.rename(root)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    if not quiet:
        print(f"dynamostore.native: compiled modules written to {root}")
    return root


class BuildError(Exception):
    pass


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("native", help="compile the hot-path modules with mypyc, or report whether nodes use them")
    p.add_argument("op", choices=["build", "status", "clean"],
                   help="build: compile (a no-op when current); status: would nodes use them, and why not; "
                        "clean: remove them")
    p.add_argument("--force", action="store_true", help="build: compile even when current")
    p.add_argument("--optional", action="store_true",
                   help="build: on failure print a warning and exit 0 (nodes then run the Python modules)")


def run(args: argparse.Namespace) -> int:
    if args.op == "status":
        why = check()
        print(f"compiled modules: {'current' if why is None else why} ({native_dir()})")
        return 0 if why is None else 1
    if args.op == "clean":
        shutil.rmtree(native_dir(), ignore_errors=True)
        print(f"removed {native_dir()}")
        return 0
    try:
        build(force=args.force)
    except (BuildError, OSError) as exc:
        print(f"dynamostore native: could not compile; nodes will run the Python modules: {exc}", file=sys.stderr)
        return 0 if args.optional else 1
    return 0
