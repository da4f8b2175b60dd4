"""Fetching a package's sdist (hash-checked, cached) and reading it, in memory, into a repo.

Nothing of the sdist runs on the host, not even setup.py: that is why this does not call
`pip download` (pip runs the build backend to read the metadata). Archive members that are
absolute, climb out with `..` or are links are skipped; sizes are capped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Mapping

from packaging.version import InvalidVersion, Version


DEFAULT_INDEX = "https://pypi.org/simple"
DEFAULT_CACHE = Path(os.environ.get("DAGGER_JAX_SDIST_CACHE", "~/.cache/dagger_jax/sdists")).expanduser()
SDIST_EXTENSIONS = (".tar.gz", ".tgz", ".zip")
MAX_SDIST_BYTES = 100_000_000
TEST_DIRS = frozenset({"tests", "test", "testing"})
NOT_SOURCE_DIRS = TEST_DIRS | {"docs", "doc", "examples", "example", "benchmarks", "benchmark",
                               "scripts", "tools", "build", "dist"}
NOT_SOURCE_MODULES = frozenset({"setup.py", "conftest.py", "noxfile.py", "fabfile.py", "versioneer.py"})
CONFIG_FILES = frozenset({"pytest.ini", "setup.cfg", "tox.ini", "pyproject.toml", "conftest.py"})
LICENSE_FILE = re.compile(r"^(LICEN[CS]E|COPYING|NOTICE|AUTHORS)(\.\w+)?$", re.IGNORECASE)
# --tb=short keeps failures readable and short; `-o addopts=` drops options (coverage, xdist)
# that need plugins the image does not have.
PYTEST = "python3 -m pytest -rA -p no:cacheprovider --tb=short -o addopts="
LOG = "/tmp/dagger_jax_pytest.log"


class SdistError(RuntimeError):
    """A package's sdist cannot be had: unknown name, no sdist, index unreachable, bad hash."""


class PackageLayoutError(ValueError):
    """An sdist that cannot become a task repo (no tests, no source, too large)."""


@dataclasses.dataclass(frozen=True)
class PypiConfig:
    """Knobs of the real-package builder; the defaults bound a task to a few minutes."""

    max_trials: int = 20               # mutations run in the sandbox per task
    test_timeout_s: float = 120.0
    max_file_bytes: int = 1_000_000    # larger files are left out of the repo
    max_repo_bytes: int = 8_000_000
    baseline_budget_s: float = 360.0   # for a suite too slow to run whole: file by file
    whole_suite_s: float = 20.0        # a suite this quick is every task's test command; a
    #                                    slower one runs only the files the bug breaks
    name_function: bool = False        # whether the problem statement names the buggy function
    cache_dir: Path = DEFAULT_CACHE
    index_url: str = DEFAULT_INDEX


@dataclasses.dataclass(frozen=True)
class BuildFailure:
    """A task that could not be built, and why (recorded; the batch goes on)."""

    package: str
    index: int
    reason: str


@dataclasses.dataclass(frozen=True)
class PackageRepo:
    """An sdist read into a task repo: files as text, and where its source and tests are."""

    name: str
    version: str
    sdist: str                         # file name, for provenance
    sha256: str
    files: Mapping[str, str]
    source_root: str                   # "" (flat layout) or "src"
    source_files: tuple[str, ...]      # .py files a bug may go into
    test_files: tuple[str, ...]        # test modules pytest is pointed at
    restored_files: tuple[str, ...]    # everything of the tests, restored before grading

    def env(self) -> str:
        """The test command's environment. No bytecode: a same-size edit made within the same
        second as the last run would otherwise be hidden by the stale .pyc."""
        path = f"PYTHONPATH={self.source_root} " if self.source_root else ""
        return f"PYTHONDONTWRITEBYTECODE=1 {path}"


# ---------------------------------------------------------------- fetching the sdist


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _split_sdist_name(filename: str) -> tuple[str, str] | None:
    """(normalised project name, version) from `name-version.tar.gz`, or None."""
    ext = next((e for e in SDIST_EXTENSIONS if filename.endswith(e)), None)
    if ext is None or "-" not in filename:
        return None
    name, _, version = filename[:-len(ext)].rpartition("-")
    return _normalise(name), version


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_sdist(requirement: str, cache_dir: Path = DEFAULT_CACHE, index_url: str = DEFAULT_INDEX,
                timeout_s: float = 60.0) -> Path:
    """The sdist for `NAME`, `NAME==VERSION` (newest final release when unpinned) or a local path.

    Uses the index's JSON simple API (PEP 691), the one pip reads, and checks the file's sha256.
    """
    if requirement.endswith(SDIST_EXTENSIONS) or "/" in requirement:
        if not Path(requirement).is_file():
            raise SdistError(f"sdist {requirement} does not exist")
        return Path(requirement)
    match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*(\S+))?\s*", requirement)
    if match is None:
        raise SdistError(f"package {requirement!r}: expected NAME, NAME==VERSION or an sdist path")
    name, pinned = _normalise(match.group(1)), match.group(2)
    cache_dir = Path(cache_dir)
    if pinned and cache_dir.is_dir():  # a pinned sdist never changes: no need to ask the index
        for cached in sorted(cache_dir.iterdir()):
            if _split_sdist_name(cached.name) == (name, pinned):
                return cached
    url = f"{index_url.rstrip('/')}/{name}/"
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            listing = json.load(answer)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise SdistError(f"no package {match.group(1)!r} on {index_url} ({url} answered 404)") from None
        raise SdistError(f"package index {url} answered {e.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise SdistError(f"could not read package index {url}: {e}") from None
    found: list[tuple[Version, bool, dict]] = []
    for entry in listing.get("files", []):
        parsed = _split_sdist_name(entry.get("filename", ""))
        if parsed is None or parsed[0] != name or entry.get("yanked"):
            continue
        try:
            version = Version(parsed[1])
        except InvalidVersion:
            continue
        if (pinned and version == Version(pinned)) or (not pinned and not version.is_prerelease):
            found.append((version, entry["filename"].endswith(".tar.gz"), entry))
    if not found:
        what = f"version {pinned}" if pinned else "a final release"
        raise SdistError(f"package {match.group(1)!r} on {index_url} has no sdist for {what}")
    entry = max(found, key=lambda f: (f[0], f[1]))[2]
    path = cache_dir / entry["filename"]
    expected = entry.get("hashes", {}).get("sha256")
    if path.is_file() and (expected is None or _sha256(path.read_bytes()) == expected):
        return path
    file_url = urllib.parse.urljoin(url, entry["url"])
    try:
        with urllib.request.urlopen(file_url, timeout=timeout_s) as answer:
            data = answer.read(MAX_SDIST_BYTES + 1)
    except (urllib.error.URLError, OSError) as e:
        raise SdistError(f"could not download {file_url}: {e}") from None
    if len(data) > MAX_SDIST_BYTES:
        raise SdistError(f"{file_url} is larger than {MAX_SDIST_BYTES:,} bytes")
    if expected and _sha256(data) != expected:
        raise SdistError(f"{file_url}: sha256 {_sha256(data)} is not the index's {expected}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.rename(path)  # atomic: a concurrent build never reads half a file
    return path


# ---------------------------------------------------------------- reading it into a repo


def _members(sdist: Path, max_file_bytes: int, max_total_bytes: int) -> dict[str, bytes]:
    """Regular files of the archive by path below its top directory (links, devices, paths
    leaving the tree and oversized files are left out); nothing is written to disk."""
    out: dict[str, bytes] = {}
    total = 0

    def take(name: str, size: int, read) -> None:
        nonlocal total
        total += size
        if total > max_total_bytes:  # an archive bomb must not fill the host's memory
            raise PackageLayoutError(f"sdist {sdist} unpacks to more than {max_total_bytes:,} bytes")
        out[name] = read()

    try:
        if sdist.name.endswith(".zip"):
            with zipfile.ZipFile(sdist) as archive:
                for info in archive.infolist():
                    if not info.is_dir() and info.file_size <= max_file_bytes:
                        take(info.filename, info.file_size, lambda: archive.read(info))
        else:
            with tarfile.open(sdist, "r:*") as archive:
                for info in archive:
                    if info.isreg() and info.size <= max_file_bytes:
                        take(info.name, info.size, lambda: archive.extractfile(info).read())
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as e:
        raise PackageLayoutError(f"sdist {sdist} cannot be read: {e}") from None
    clean = {}
    for name, data in out.items():
        parts = PurePosixPath(name).parts
        if len(parts) < 2 or name.startswith("/") or ".." in parts:
            continue
        clean["/".join(parts[1:])] = data  # drop `name-version/`
    return clean


def _is_test_module(name: str) -> bool:
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py")
                                     or name in ("tests.py", "test.py"))


def load_sdist(sdist: Path, config: PypiConfig = PypiConfig()) -> PackageRepo:
    """Reads an sdist into a task repo: the source package(s), every test, pytest's config."""
    members = _members(Path(sdist), config.max_file_bytes, 4 * config.max_repo_bytes)
    parsed = _split_sdist_name(Path(sdist).name) or (Path(sdist).name, "0")
    root = "src" if any(p.startswith("src/") and p.endswith(".py") for p in members) else ""
    prefix = f"{root}/" if root else ""
    packages = {p[len(prefix):].split("/")[0] for p in members
                if p.startswith(prefix) and p.endswith("/__init__.py") and p[len(prefix):].count("/") == 1}
    packages = {p for p in packages if p not in NOT_SOURCE_DIRS and not p.endswith(".egg-info")}
    modules = {p for p in members if p.startswith(prefix) and "/" not in p[len(prefix):]
               and p.endswith(".py") and p[len(prefix):] not in NOT_SOURCE_MODULES
               and not _is_test_module(p[len(prefix):])}

    def in_tests(path: str) -> bool:
        parts = path.split("/")
        return bool(TEST_DIRS & set(parts[:-1])) or _is_test_module(parts[-1])

    def in_source(path: str) -> bool:
        rest = path[len(prefix):] if path.startswith(prefix) else None
        return rest is not None and (path in modules or rest.split("/")[0] in packages)

    def keep(path: str) -> bool:
        parts = path.split("/")
        return (in_source(path) or in_tests(path)
                or (len(parts) == 1 and (path in CONFIG_FILES or LICENSE_FILE.match(path) is not None)))

    files: dict[str, str] = {}
    for path, data in sorted(members.items()):
        if not keep(path) or "__pycache__" in path or path.endswith((".pyc", ".pyo", ".so")):
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue  # binary: a task repo is text
        if path.endswith(".py"):  # so a patch of the file applies with git and unidiff alike
            text = text.replace("\r\n", "\n")
            text = text if text.endswith("\n") or not text else text + "\n"
        files[path] = text
    where = f"sdist {Path(sdist).name}"
    test_files = tuple(p for p in files if in_tests(p) and _is_test_module(p.rsplit("/", 1)[-1]))
    if not test_files:
        raise PackageLayoutError(f"{where} has no tests (looked for test_*.py, *_test.py and "
                                 "tests.py next to its source and under tests/, test/, testing/)")
    source_files = tuple(p for p in files if in_source(p) and p.endswith(".py") and not in_tests(p)
                         and p.rsplit("/", 1)[-1] != "conftest.py")
    if not source_files:
        raise PackageLayoutError(f"{where} has no importable Python source next to its tests")
    size = sum(len(t.encode()) for t in files.values())
    if size > config.max_repo_bytes:
        raise PackageLayoutError(f"{where}: the repo would be {size:,} bytes, over the "
                                 f"{config.max_repo_bytes:,}-byte cap")
    if "PKG-INFO" in members:  # so importlib.metadata.version(name) works without installing
        files[f"{prefix}{parsed[0].replace('-', '_')}-{parsed[1]}.dist-info/METADATA"] = \
            members["PKG-INFO"].decode("utf-8", "replace")
    files[".gitignore"] = "__pycache__/\n*.pyc\n.pytest_cache/\n"
    restored = tuple(p for p in files if in_tests(p) or p == "conftest.py")
    return PackageRepo(parsed[0], parsed[1], Path(sdist).name, _sha256(Path(sdist).read_bytes()),
                       files, root, source_files, test_files, restored)
