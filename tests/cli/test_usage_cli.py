"""`fleetgate usage ...` as scripts use it: reports (--json, --csv), price books, reconcile, on a seeded SQLite file."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fleetgate.billing.rating import PriceBookSpec, Rating
from fleetgate.local.rundir import ProcRecord, RunDir, RunState
from fleetgate.metering.ledger import SqlLedger
from fleetgate.tenancy.models import TenantSpec
from fleetgate.tenancy.store import TenantStore
from tests.billing.test_rating import BOOK1, BOOK2, E1, E2, E3
from tests.metering.test_reconcile import LLAMACPP_AFTER_3, RECORDED, free_port

FLEETGATE = [sys.executable, "-m", "fleetgate.cli.main"]
ROOT = Path(__file__).resolve().parents[2]
PERIOD = ["--since", "2026-11-01", "--until", "2026-11-30"]
EARLY = datetime(2026, 11, 1, tzinfo=UTC).timestamp()  # before this test process started


async def _seed(url: str) -> None:
    store = await TenantStore.open(url)
    ledger = SqlLedger(store.engine)
    try:
        acme, _ = await store.upsert_tenant(TenantSpec(external_id="acme"))
        bravo, _ = await store.upsert_tenant(TenantSpec(external_id="bravo"))
        ids = {"tid-acme": acme.id, "tid-bravo": bravo.id}
        await ledger.insert([replace(e, tenant_id=ids[e.tenant_id], replica_id="remote-0") for e in (E1, E2, E3)])
        # The requests behind the recorded llama-server metrics, served by local-0 (tenant "t" has no name).
        shifted = [
            replace(e, event_id=f"rec-{i}", started_at=EARLY + i, ended_at=EARLY + i + 1)
            for i, e in enumerate(RECORDED)
        ]
        await ledger.insert(shifted)
        rating = Rating(store.engine)
        await rating.create_book(PriceBookSpec.model_validate(BOOK1))
        await rating.create_book(PriceBookSpec.model_validate(BOOK2))
    finally:
        await store.close()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    url = f"sqlite:///{tmp_path / 'fg.db'}"
    asyncio.run(_seed(url))
    return {**os.environ, "FLEETGATE_DATABASE__URL": url, "FLEETGATE_RUN_DIR": str(tmp_path / "run")}


def run(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*FLEETGATE, *args], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def money(report: dict[str, Any]) -> list[tuple[str, str, int, int, int, int]]:
    return [
        (x["tenant"], x["model"], x["requests"], x["charge_micros"], x["cost_micros"], x["price_book_version"])
        for x in report["lines"]
    ]


def test_report_json_rates_each_day_with_the_book_in_effect(env: dict[str, str]) -> None:
    report = json.loads(run(env, "usage", *PERIOD, "--json").stdout)
    # Both books were created after 2026-11-02, so that day takes the oldest (v1); figures as in test_rating.
    acme = report["lines"][1]
    assert (acme["day"], acme["fresh_tokens"], acme["cached_tokens"], acme["output_tokens"]) == (
        "2026-11-02",
        600,
        400,
        500,
    )
    assert (acme["charge"], acme["cost"], acme["margin"]) == ("0.00018", "0.0002", "-0.00002")
    assert money(report) == [
        # The recorded requests, one roll-up: 63 fresh x 0.10 = 6.3 -> 6; 42 cached x 0.05 = 2.1 -> 2; 40 x 0.20
        # = 8; three 1-second requests x 0.36/h = 300.
        ("t", "smollm2", 3, 16, 300, 1),
        ("acme", "smollm2", 1, 180, 200, 1),
        ("bravo", "mystery", 1, 0, 0, 1),
        ("bravo", "smollm2:support-bot", 1, 131_481, 360_000, 1),
    ]
    assert report["currency"] == "USD" and report["policy"] == "per_token"
    only = json.loads(run(env, "usage", "report", *PERIOD, "--tenant", "bravo", "--json").stdout)
    assert {x["tenant"] for x in only["lines"]} == {"bravo"}
    assert only["totals"]["unpriced_requests"] == 1 and only["totals"]["charge_micros"] == 131_481


def test_report_rerated_with_another_version(env: dict[str, str]) -> None:
    report = json.loads(run(env, "usage", "report", *PERIOD, "--price-book", "2", "--tenant", "acme", "--json").stdout)
    assert money(report) == [("acme", "smollm2", 1, 84, 45, 2)]
    assert report["price_book_version"] == 2 and report["totals"]["margin"] == "0.000039"
    missing = run(env, "usage", *PERIOD, "--price-book", "9", ok=False)
    assert missing.returncode == 1 and "no price book version 9" in missing.stderr


def test_report_csv(env: dict[str, str]) -> None:
    out = run(env, "usage", *PERIOD, "--tenant", "bravo", "--csv", "--price-book", "2").stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["model"], r["charge"], r["charge_micros"], r["cost"]) for r in rows] == [
        ("mystery", "0.00003", "30", "0.00"),
        ("smollm2:support-bot", "0.366296", "366296", "0.04"),
    ]
    assert rows[0]["day"] == "2026-11-02" and rows[0]["currency"] == "USD" and rows[0]["price_book_version"] == "2"


def test_report_table_and_bad_dates(env: dict[str, str]) -> None:
    table = run({**env, "COLUMNS": "200"}, "usage", *PERIOD).stdout
    assert "acme" in table and "total" in table and "0.131481" in table and "(unpriced)" in table
    bad = run(env, "usage", "--since", "November", ok=False)
    assert bad.returncode == 1 and "--since" in bad.stderr


def test_prices_set_and_list(env: dict[str, str], tmp_path: Path) -> None:
    stored = json.loads(run(env, "usage", "prices", "set", "-f", str(ROOT / "prices.example.yaml"), "--json").stdout)
    assert stored["version"] == 3 and stored["prices"]["smollm2"]["input"] == "0.10"
    assert stored["gpu_costs"] == {"cpu": {"per_hour": "0.05"}, "h100": {"per_1m_tokens": "0.02"}}
    ghost = tmp_path / "ghost.yaml"
    ghost.write_text("prices: {m: {input: 1, output: 2}}\ntenant_overrides: {ghost: {m: {input: 0, output: 0}}}\n")
    warned = run(env, "usage", "prices", "set", "-f", str(ghost), "--note", "for ghosts")
    assert "v4 stored" in warned.stdout and "unknown tenants: ghost" in warned.stderr
    books = json.loads(run(env, "usage", "prices", "list", "--json").stdout)
    assert [(b["version"], b["note"]) for b in books] == [
        (1, "launch prices"),
        (2, None),
        (3, "example list prices"),
        (4, "for ghosts"),
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text("prices: {smollm2: {input: 0.0000001, output: 1}}\n")
    failed = run(env, "usage", "prices", "set", "-f", str(bad), ok=False)
    assert failed.returncode == 1 and "prices.smollm2.input" in failed.stderr and "6 decimals" in failed.stderr


@pytest.fixture
async def engine_url() -> AsyncIterator[str]:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=LLAMACPP_AFTER_3, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def _run_async(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    # The metrics server lives on this event loop, so the CLI must run without blocking it.
    proc = await asyncio.create_subprocess_exec(
        *FLEETGATE, *args, env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_reconcile_reads_replicas_from_the_run_dir(env: dict[str, str], engine_url: str) -> None:
    # This test process stands in for a replica: its start time is when "its counters began".
    replica = ProcRecord.of(os.getpid(), "replica", port=0, url=engine_url, id="local-0")
    run_dir = RunDir(Path(env["FLEETGATE_RUN_DIR"]))
    run_dir.write(RunState(status="running", replicas=[replica], engines=["http://127.0.0.1:9"]))
    # An --engine URL is reconciled too (its kind read from the engine): one nobody answers on is an error, exit 1.
    code, out, err = await _run_async(
        env, "usage", "reconcile", "--since", "2026-11-01T00:00:00", "--json", "--max-drift", "0"
    )
    assert code == 1, err + out
    unreachable = [d for d in json.loads(out)["replicas"] if d["url"] == "http://127.0.0.1:9"]
    assert len(unreachable) == 1 and unreachable[0]["error"]
    run_dir.write(RunState(status="running", replicas=[replica], engines=[]))
    code, out, err = await _run_async(
        env, "usage", "reconcile", "--since", "2026-11-01T00:00:00", "--json", "--max-drift", "0"
    )
    assert code == 0, err + out
    (drift,) = json.loads(out)["replicas"]
    assert (drift["replica_id"], drift["requests"], drift["prompt_drift"], drift["completion_drift"]) == (
        "local-0",
        3,
        0,
        0,
    )
    # Without --since each replica counts from its own start: the seeded events came before it, so all differ.
    code, out, err = await _run_async(env, "usage", "reconcile", "--json", "--max-drift", "5")
    (drift,) = json.loads(out)["replicas"]
    assert code == 1 and (drift["requests"], drift["prompt_drift"], drift["completion_drift"]) == (0, 63, 40)
    code, out, err = await _run_async({**env, "COLUMNS": "200"}, "usage", "reconcile", "--since", "2026-11-01")
    assert code == 0 and "local-0" in out and "+0" in out


def test_reconcile_without_a_running_stack(env: dict[str, str]) -> None:
    result = run(env, "usage", "reconcile", ok=False)
    assert result.returncode == 1 and "fleetgate up" in result.stderr
