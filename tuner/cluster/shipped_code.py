"""The code a Ray Job runs: the submitted tree's `data/`, `models/` and `tuner/`, shipped as the `leukotune` package.

The nodes of a cluster have leukotune installed (`cluster.yaml` installs it in editable mode), and a job's
working_dir on `sys.path` does not change what `import leukotune.tuner` finds: the folders install under another
name through setuptools' package-dir mapping. So `submit` copies them into a staging folder laid out as the import
name (`leukotune/{data,models,tuner}` plus an `__init__.py`) and hands it to Ray as `py_modules`. Ray unpacks it on
every node and puts it first on PYTHONPATH for the job's driver and every worker; a regular package found on a path
entry wins over the installed copy (a namespace package in site-packages, or the editable finder that setuptools
appends to `sys.meta_path`), so the driver and the trials import the submitted code.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# The folders that install as leukotune.<name> (pyproject.toml's package-dir).
PACKAGES = ("data", "models", "tuner")
IMPORT_NAME = "leukotune"
# Read by the job's driver (tuner/tracking/client.py's code_version) for the study's parent run: a job's copy of
# the code has no .git to ask.
VERSION_ENV = "LEUKOTUNE_CODE_VERSION"
# Never shipped: caches and compiled files (Ray's own excludes apply on top).
COPY_EXCLUDES = ("__pycache__", "*.pyc", "*.pyo", ".pytest_cache", ".mypy_cache", ".ruff_cache", "*.egg-info")

_INIT = '"""leukotune as shipped with a Ray Job by `leukotune submit` (see tuner/cluster/shipped_code.py)."""\n'


@dataclass(frozen=True)
class ShippedCode:
    """Where the shipped folders come from, which version they are, and the staged package handed to Ray."""

    source: Path  # the folder holding data/, models/ and tuner/
    from_working_dir: bool  # False: the working_dir is no leukotune checkout, so the code running here is shipped
    version: str  # "0.1.0+5d1c2e3", or with "with uncommitted changes" / "not a git checkout" and a files digest
    package: Path  # the staged `leukotune` folder (py_modules entry)
    size_bytes: int

    def describe(self) -> str:
        origin = ("" if self.from_working_dir else
                  " (the working_dir holds no data/, models/, tuner/: the copy running here)")
        return (f"code: {IMPORT_NAME} {self.version} from {self.source}{origin}, {self.size_bytes / 2**20:.1f} MiB; "
                f"the job's driver and every worker import it (py_modules)")


def is_checkout(folder: Path) -> bool:
    """A leukotune source tree: data/, models/ and tuner/ as packages side by side."""
    return all((folder / name / "__init__.py").is_file() for name in PACKAGES)


def installed_folders() -> dict[str, Path]:
    """The folders of the leukotune.data/.models/.tuner this process imports (found, not imported: torch is slow)."""
    folders = {}
    for name in PACKAGES:
        spec = importlib.util.find_spec(f"{IMPORT_NAME}.{name}")
        folders[name] = Path(list(spec.submodule_search_locations)[0])
    return folders


def code_folders(working_dir: Path) -> tuple[dict[str, Path], bool]:
    """The folders to ship: the working_dir's when it is a checkout (the submitted tree), else the ones running here."""
    root = working_dir.expanduser().resolve()
    if is_checkout(root):
        return {name: root / name for name in PACKAGES}, True
    return installed_folders(), False


def stage(folders: dict[str, Path], into: Path) -> Path:
    """Copy the folders into `into/leukotune/` (minus caches) and make it a regular package; returns that folder."""
    package = into / IMPORT_NAME
    package.mkdir(parents=True)
    for name, folder in folders.items():
        shutil.copytree(folder, package / name, ignore=shutil.ignore_patterns(*COPY_EXCLUDES))
    (package / "__init__.py").write_text(_INIT)
    return package


def files_digest(package: Path) -> str:
    """SHA-256 over the staged files' relative paths and bytes: the same code gives the same digest anywhere."""
    digest = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.is_file()):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def package_version(source: Path) -> str:
    """The version in the source tree's pyproject.toml, else the installed distribution's."""
    try:
        import tomllib

        return str(tomllib.loads((source / "pyproject.toml").read_text())["project"]["version"])
    except (ImportError, OSError, ValueError, KeyError):
        pass
    try:
        return version(IMPORT_NAME)
    except PackageNotFoundError:
        return "unknown"


def describe_version(source: Path, digest: str) -> str:
    """`0.1.0+<commit>` for a clean checkout; otherwise also the files digest, since no commit names the code."""
    base = package_version(source)
    sha = _git(source, "rev-parse", "--short", "HEAD")
    if not sha:
        return f"{base}, not a git checkout (files sha256:{digest})"
    changes = _git(source, "status", "--porcelain", "--", *PACKAGES)  # untracked files count: they are shipped
    if changes:
        return f"{base}+{sha} with uncommitted changes (files sha256:{digest})"
    return f"{base}+{sha}"


def ship(working_dir: Path, into: Path) -> ShippedCode:
    """Stage the job's code under `into` (a temporary folder the caller removes once Ray has uploaded it)."""
    folders, from_working_dir = code_folders(working_dir)
    package = stage(folders, into)
    source = Path(os.path.commonpath([folder.parent for folder in folders.values()]))
    size = sum(p.stat().st_size for p in package.rglob("*") if p.is_file())
    return ShippedCode(source, from_working_dir, describe_version(source, files_digest(package)), package, size)

