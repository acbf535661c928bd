"""The fake engine behind https://, under a path prefix, refusing requests without its API key (like vLLM's
`--api-key`: every `/v1` path needs `Authorization: Bearer <key>`), with a self-signed certificate made here."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from tests.fakes import FakeEngine, free_port


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with the openssl command line."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the TLS tests need the `openssl` command: apt-get install openssl")
    cert, key = directory / "engine.crt", directory / "engine.key"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@dataclass
class SecureEngine(FakeEngine):
    """FakeEngine's behaviour at https://127.0.0.1:<port><prefix>, with vLLM's key check on /v1 paths."""

    prefix: str = "/some/prefix"
    api_key: str = "engine-key-7f3a9c"
    cert: Path | None = None
    key_file: Path | None = None
    chat_route: bool = True  # False: models listed, but no completion endpoint (a wrong prefix behind a proxy)
    paths: list[str] = field(default_factory=list)  # every path requested, in order
    refused: int = 0  # requests without the right key

    @property
    def url(self) -> str:
        """Base URL, prefix included."""
        return f"https://127.0.0.1:{self.port}{self.prefix}"

    async def start(self) -> None:
        """Listen with TLS on a free port."""
        assert self.cert is not None and self.key_file is not None

        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.paths.append(request.path)
            guarded = request.path.removeprefix(self.prefix).startswith("/v1")
            if guarded and request.headers.get("Authorization") != f"Bearer {self.api_key}":
                self.refused += 1
                return web.json_response({"error": "Unauthorized"}, status=401)
            response: web.StreamResponse = await handler(request)
            return response

        app = web.Application(middlewares=[guard])
        app.router.add_get(self.prefix + "/health", self._health)
        app.router.add_get(self.prefix + "/v1/models", self._models)
        if self.chat_route:
            app.router.add_post(self.prefix + "/v1/chat/completions", self._checked)
            app.router.add_post(self.prefix + "/v1/completions", self._checked)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key_file)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        self.port = self.port or free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=context).start()

    async def _checked(self, request: web.Request) -> web.StreamResponse:
        try:
            json.loads(await request.read())
        except ValueError:  # what real engines answer to a body that is not JSON (the health route probe)
            return web.json_response({"error": {"message": "invalid JSON", "type": "BadRequestError"}}, status=400)
        return await self._complete(request)
