"""A stand-in for llama-server's command line and /health, for fast supervisor tests (no model, no engine)."""

from __future__ import annotations

import argparse
import http.server
import json
import os
import sys


def main() -> None:
    """Serve /health and /v1/models on --port like llama-server; exit early if FAKE_EXIT_CODE is set."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--alias", default="smollm2")
    args, _ = parser.parse_known_args()
    if os.environ.get("FAKE_EXIT_CODE"):
        print("fake llama-server: failing on purpose", flush=True)
        sys.exit(int(os.environ["FAKE_EXIT_CODE"]))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"status": "ok", "data": [{"id": args.alias}]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    http.server.HTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
