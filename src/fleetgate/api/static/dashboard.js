// fleetgate dashboard: polls the gateway's JSON and draws tables and inline-SVG charts. No dependencies.
"use strict";

(function () {
  const KEY = "fleetgate.dashboard.key";
  const POLL_MS = 2000;
  const SVG = "http://www.w3.org/2000/svg";
  const W = 640, H = 220, PAD = { l: 52, r: 52, t: 12, b: 26 };
  let timer = null;
  let mode = null; // "admin" | "tenant"
  let epoch = 0; // bumped on sign-out/sign-in: an answer that arrives for an older key is dropped

  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text); // never innerHTML: names are data
    if (cls) node.className = cls;
    return node;
  }

  function svgEl(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const dash = "\u2013";
  function num(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return dash;
    return Number(v).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
  }
  function pct(v) { return v === null || v === undefined ? dash : (100 * v).toFixed(1) + "%"; }
  function secs(v) {
    if (v === null || v === undefined) return dash;
    if (v === 0) return "0";
    return v < 1 ? (1000 * v).toFixed(v < 0.01 ? 1 : 0) + " ms" : v.toFixed(2) + " s";
  }
  function clock(t) { return new Date(t * 1000).toLocaleTimeString("en-GB", { hour12: false }); }

  function setRows(table, rows) {
    const body = $(table).tBodies[0];
    body.replaceChildren();
    const heads = $(table).tHead.rows[0].cells;
    for (const cells of rows) {
      const tr = document.createElement("tr");
      cells.forEach((c, i) => {
        const td = c instanceof Node ? c : el("td", c);
        if (heads[i] && heads[i].className) td.classList.add(heads[i].className); // right-align number columns
        tr.appendChild(td);
      });
      body.appendChild(tr);
    }
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = el("td", "nothing yet", "muted");
      td.colSpan = $(table).tHead.rows[0].cells.length;
      tr.appendChild(td);
      body.appendChild(tr);
    }
  }

  function tiles(id, items) {
    const box = $(id);
    box.replaceChildren();
    for (const [label, value] of items) {
      const tile = el("div", null, "tile");
      tile.appendChild(el("span", value, "value"));
      tile.appendChild(el("span", label, "label"));
      box.appendChild(tile);
    }
  }

  const TICKS = 5;
  // The smallest 1, 2 or 5 x 10^k at or above v: with five intervals every grid line lands on a round value.
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * p >= v * (1 - 1e-9)) return m * p;
    return 10 * p;
  }
  const plain = (v) => num(v, 2);

  // One line chart: x is wall time over the window ending `now`; series on a left or right axis, null = gap.
  function chart(id, legendId, data, series) {
    const svg = $(id);
    svg.replaceChildren();
    const x0 = PAD.l, x1 = W - PAD.r, y0 = H - PAD.b, y1 = PAD.t;
    const t = data.t || [];
    const start = data.now - data.window;
    const xs = (ts) => x0 + ((ts - start) / data.window) * (x1 - x0);
    const axes = {};
    for (const s of series) {
      const vals = (data[s.key] || []).filter((v) => v !== null && v !== undefined);
      const a = s.axis || "left";
      axes[a] = Math.max(axes[a] || 0, s.max || 0, ...vals);
    }
    for (const a of Object.keys(axes)) axes[a] = series.find((s) => (s.axis || "left") === a && s.max) ? axes[a] : niceMax(axes[a]);
    // Grid and axis labels: four steps up each used axis.
    for (let i = 0; i <= TICKS; i++) {
      const y = y0 - (i / TICKS) * (y0 - y1);
      svg.appendChild(svgEl("line", { x1: x0, x2: x1, y1: y, y2: y, class: "grid" }));
      for (const [a, max] of Object.entries(axes)) {
        const s = series.find((x) => (x.axis || "left") === a);
        const left = a === "left";
        svg.appendChild(svgEl("text", { x: left ? x0 - 6 : x1 + 6, y: y + 4, class: "tick", "text-anchor": left ? "end" : "start" },
          (s.tick || plain)((i / TICKS) * max)));
      }
    }
    for (let m = 0; m <= data.window / 60; m += 5) {
      const x = xs(start + m * 60);
      svg.appendChild(svgEl("line", { x1: x, x2: x, y1: y0, y2: y0 + 4, class: "axis" }));
      const label = m * 60 === data.window ? "now" : "-" + Math.round((data.window - m * 60) / 60) + "m";
      svg.appendChild(svgEl("text", { x: x, y: H - 6, class: "tick", "text-anchor": "middle" }, label));
    }
    svg.appendChild(svgEl("line", { x1: x0, x2: x1, y1: y0, y2: y0, class: "axis" }));
    const legend = $(legendId);
    legend.replaceChildren();
    let drawn = 0;
    series.forEach((s, n) => {
      const vals = data[s.key] || [];
      const max = axes[s.axis || "left"];
      const ys = (v) => y0 - (Math.min(v, max) / max) * (y0 - y1);
      let d = "", run = 0, points = 0;
      const lonely = [];
      for (let i = 0; i < t.length; i++) {
        const v = vals[i];
        if (v === null || v === undefined || t[i] < start) {
          if (run === 1) lonely.push(i - 1);
          run = 0;
          continue;
        }
        d += (run === 0 ? "M" : "L") + xs(t[i]).toFixed(1) + "," + ys(v).toFixed(1) + " ";
        run += 1;
        points += 1;
      }
      if (run === 1) lonely.push(t.length - 1);
      if (points) {
        svg.appendChild(svgEl("path", { d: d.trim(), class: "series s" + n, "data-series": s.key, "data-points": points }));
        for (const i of lonely) svg.appendChild(svgEl("circle", { cx: xs(t[i]), cy: ys(vals[i]), r: 2.5, class: "dot s" + n }));
        drawn += 1;
      }
      const last = [...vals].reverse().find((v) => v !== null && v !== undefined);
      const item = el("span", s.label + " " + (last === undefined ? dash : s.fmt(last)), "key s" + n);
      legend.appendChild(item);
    });
    if (!drawn) svg.appendChild(svgEl("text", { x: (x0 + x1) / 2, y: (y0 + y1) / 2, class: "empty", "text-anchor": "middle" }, "no data yet"));
  }

  function health(r) {
    const td = el("td", r.healthy ? "healthy" : "down", r.healthy ? "ok" : "bad");
    if (r.last_error) td.title = r.last_error;
    return td;
  }

  function renderAdmin(o) {
    $("who").textContent = "admin";
    $("status").textContent = "updated " + clock(o.generated_at) + ", every " + o.step + " s";
    tiles("tiles", [
      ["in flight", num(o.now.in_flight, 0)],
      ["queued", num(o.now.queue_depth, 0)],
      ["requests/s", num(o.now.requests_per_s, 2)],
      ["output tokens/s", num(o.now.output_tokens_per_s, 1)],
      ["replicas healthy", o.fleet.filter((r) => r.healthy).length + " / " + o.fleet.length],
    ]);
    const data = Object.assign({ now: o.generated_at, window: o.window }, o.series);
    chart("chart-ttft", "legend-ttft", data, [
      { key: "ttft_p50", label: "p50", fmt: secs, tick: secs },
      { key: "ttft_p99", label: "p99", fmt: secs, tick: secs },
    ]);
    chart("chart-throughput", "legend-throughput", data, [
      { key: "requests_per_s", label: "req/s", fmt: (v) => num(v, 2) },
      { key: "output_tokens_per_s", label: "out tok/s", fmt: (v) => num(v, 0), axis: "right" },
    ]);
    chart("chart-cache", "legend-cache", data, [{ key: "cache_hit_ratio", label: "hit", fmt: pct, tick: pct, max: 1 }]);
    chart("chart-queue", "legend-queue", data, [
      { key: "queue_depth", label: "queued", fmt: (v) => num(v, 0) },
      { key: "in_flight", label: "in flight", fmt: (v) => num(v, 0) },
    ]);
    setRows("fleet", o.fleet.map((r) => [
      r.id, (r.models || []).join(", ") || dash, health(r), num(r.in_flight, 0), num(r.queue, 0),
      pct(r.kv), pct(r.cache_hit), num(r.tokens_per_s, 1),
    ]));
    $("currency").textContent = o.currency ? "(" + o.currency + ")" : "";
    $("usage-error").textContent = o.usage_error || "";
    setRows("tenants", o.tenants.map((x) => [
      x.tenant, num(x.requests_per_s, 2), num(x.input_tokens_per_s, 1), num(x.output_tokens_per_s, 1),
      num(x.throttles, 0), num(x.requests_today, 0), num(x.tokens_today, 0), x.spend_today,
    ]));
    setRows("decisions", o.decisions.map((d) => [clock(d.at), d.request_id, d.tenant, d.model, d.replica, d.route]));
  }

  function renderTenant(p) {
    $("who").textContent = "tenant " + p.tenant;
    $("status").textContent = "updated " + clock(p.generated_at);
    const r = p.rates || {};
    const u = p.usage_today;
    tiles("tenant-tiles", [
      ["requests/s", num(r.requests_per_s, 2)],
      ["output tokens/s", num(r.output_tokens_per_s, 1)],
      ["throttled (15m)", num(r.throttles, 0)],
      ["requests today", u ? num(u.totals.requests, 0) : dash],
      ["charge today", u ? u.totals.charge + (u.currency ? " " + u.currency : "") : dash],
    ]);
    const t = p.series.t;
    const data = Object.assign({ now: p.generated_at, window: t.length ? Math.max(900, p.generated_at - t[0]) : 900 }, p.series);
    chart("chart-tenant", "legend-tenant", data, [
      { key: "requests_per_s", label: "req/s", fmt: (v) => num(v, 2) },
      { key: "output_tokens_per_s", label: "out tok/s", fmt: (v) => num(v, 0), axis: "right" },
    ]);
    $("tenant-currency").textContent = u && u.currency ? "(" + u.currency + ")" : "";
    $("tenant-usage-error").textContent = p.usage_error || "";
    setRows("tenant-usage", (u ? u.lines : []).map((x) => [
      x.model, num(x.requests, 0), num(x.fresh_tokens, 0), num(x.cached_tokens, 0), num(x.output_tokens, 0), x.charge,
    ]));
  }

  async function get(path, key) {
    const resp = await fetch(path, { headers: { Authorization: "Bearer " + key }, cache: "no-store" });
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    return { status: resp.status, body: body };
  }

  function message(res) {
    return (res.body && res.body.error && res.body.error.message) || "HTTP " + res.status;
  }

  function show(which) {
    for (const id of ["login", "admin", "tenant"]) $(id).hidden = id !== which;
    $("signout").hidden = which === "login";
  }

  // Forget what the last key could see, so the next key (maybe a tenant's) never finds it in the page.
  function clearViews() {
    for (const t of document.querySelectorAll("table tbody")) t.replaceChildren();
    for (const s of document.querySelectorAll("svg.chart, .legend, .tiles")) s.replaceChildren();
    for (const id of ["currency", "usage-error", "tenant-currency", "tenant-usage-error"]) $(id).textContent = "";
  }

  function signOut(reason) {
    epoch += 1;
    clearTimeout(timer);
    sessionStorage.removeItem(KEY);
    mode = null;
    clearViews();
    $("who").textContent = "";
    $("status").textContent = "";
    $("login-error").textContent = reason || "";
    show("login");
    $("key").focus();
  }

  // Which page a key opens: the overview if it is the admin key, else the tenant's own page.
  async function open(key) {
    let res = await get("/dashboard/api/overview", key);
    if (res.status === 200) return Object.assign(res, { mode: "admin" });
    if (res.status !== 401 && res.status !== 403) return res;
    res = await get("/dashboard/api/tenant", key);
    return res.status === 200 ? Object.assign(res, { mode: "tenant" }) : res;
  }

  async function poll() {
    const key = sessionStorage.getItem(KEY);
    if (!key) return signOut();
    const mine = epoch;
    try {
      const res = mode ? await get(mode === "admin" ? "/dashboard/api/overview" : "/dashboard/api/tenant", key) : await open(key);
      if (mine !== epoch) return;
      if (res.mode) mode = res.mode;
      if (res.status === 401 || res.status === 403) return signOut(message(res));
      if (res.status !== 200) {
        $("status").textContent = "error: " + message(res) + " (retrying)";
      } else if (mode === "admin") {
        show("admin");
        renderAdmin(res.body);
      } else {
        show("tenant");
        renderTenant(res.body);
      }
    } catch (e) {
      if (mine !== epoch) return;
      $("status").textContent = "gateway unreachable (retrying)";
    }
    timer = setTimeout(poll, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const key = $("key").value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY, key);
      $("key").value = "";
      $("login-error").textContent = "";
      clearTimeout(timer);
      epoch += 1;
      mode = null;
      poll();
    });
    $("signout").addEventListener("click", () => signOut());
    if (sessionStorage.getItem(KEY)) poll(); else signOut();
  });
})();
