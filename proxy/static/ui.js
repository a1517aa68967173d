// strangler migration dashboard: polls the admin API every 2 s and renders two views,
// the route table (#/) and one route's evidence (#/routes/NAME). No dependencies.
"use strict";
(function () {
  const POLL_MS = 2000;
  const MAX_JSON_LINES = 4000;
  const S = {
    since: "1h", timer: 0, seq: 0, view: "",
    sortKey: "name", sortDir: 1, filter: "",
    prev: new Map(), prevAt: 0, rps: new Map(),
    route: "", selected: null, diffKey: "",
    lastRenderMs: 0, renders: 0, lastError: "",
  };
  window.strangler = S; // read by the browser test (render timings)

  // --- small helpers ------------------------------------------------------------------
  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids.flat()) {
      if (kid != null && kid !== false) e.append(kid instanceof Node ? kid : String(kid));
    }
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }
  const $ = (id) => document.getElementById(id);
  const pct = (r, digits = 2) => (r == null ? "–" : (r * 100).toFixed(digits) + "%");
  const num = (n) => (n == null ? "–" : Number(n).toLocaleString("en-US"));
  function ms(v) {
    if (v == null) return "–";
    return v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : String(Math.round(v));
  }
  function when(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    const s = Math.round((Date.now() - d.getTime()) / 1000);
    const ago = s < 90 ? s + " s" : s < 5400 ? Math.round(s / 60) + " min" : Math.round(s / 3600) + " h";
    return h("span", { title: d.toISOString() }, ago + " ago");
  }
  const SHORT = 80;
  function full(v, text) {
    if (v === undefined) return "(absent)";
    return text != null ? text : JSON.stringify(v); // text: exact digits of big integers
  }
  function cut(t, start) {
    const head = start > 0 ? "…" : "";
    const rest = t.slice(start);
    return head.length + rest.length <= SHORT ? head + rest : head + rest.slice(0, SHORT - head.length - 1) + "…";
  }
  // Two differing values, cut where they differ when cutting both at the start would hide it.
  function shortPair(a, b, ta, tb) {
    const x = full(a, ta), y = full(b, tb);
    const cx = cut(x, 0), cy = cut(y, 0);
    if (cx !== cy || x === y) return [cx, cy];
    let i = 0;
    while (i < x.length && i < y.length && x[i] === y[i]) i++;
    const start = Math.max(0, Math.min(i - SHORT / 4, Math.max(x.length, y.length) - SHORT + 1));
    return [cut(x, start), cut(y, start)];
  }
  async function getJSON(url) {
    const r = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
    const body = await r.json().catch(() => null);
    if (!r.ok) throw new Error((body && body.error && body.error.message) || "HTTP " + r.status);
    return body;
  }
  function setStatus(ok, text) {
    const st = $("status");
    st.className = "status " + (ok ? "ok" : "bad");
    st.textContent = text;
  }

  // --- badges and charts --------------------------------------------------------------
  function modeBadge(r) {
    return [
      h("span", { class: "badge mode-" + r.mode }, r.mode),
      r.auto_rollback ? h("span", { class: "badge held", title: "an automatic rollback holds this route on legacy" }, "rolled back") : null,
    ];
  }
  function shareCell(r) {
    const main = r.candidate ? r.share.toFixed(r.share % 1 ? 1 : 0) + "%" : "–";
    const sub = r.mode === "legacy" || !r.candidate ? "legacy only" : "shadow " + r.shadow_percent + "%";
    return [main, h("div", { class: "sub" }, sub)];
  }
  function breakerBadge(state) {
    if (!state) return h("span", { class: "muted" }, "–");
    return h("span", { class: "badge breaker-" + state }, state);
  }
  function gateBadge(gate) {
    return h("span", { class: "badge gate-" + gate.verdict.replace("/", ""), title: gate.reasons.join("\n") || "every threshold met" }, gate.verdict);
  }
  function rateClass(r) {
    if (r.mismatch_rate == null) return "muted";
    return r.mismatch_rate > r.thresholds.max_mismatch_rate ? "bad" : "good";
  }
  function sparkline(series, w, hgt, wide) {
    const box = svg("svg", wide
      ? { viewBox: `0 0 ${w} ${hgt}`, preserveAspectRatio: "none", class: "spark wide", role: "img" }
      : { width: w, height: hgt, viewBox: `0 0 ${w} ${hgt}`, class: "spark", role: "img" });
    const rates = series.map((b) => b.rate);
    const known = rates.filter((r) => r != null);
    const title = svg("title");
    title.textContent = known.length
      ? `mismatch rate per bucket, max ${pct(Math.max(...known))}`
      : "no compared samples in this window";
    box.append(title);
    box.append(svg("line", { x1: 0, y1: hgt - 1, x2: w, y2: hgt - 1, class: "axis" }));
    if (!known.length || rates.length < 1) return box;
    const top = Math.max(0.01, ...known);
    const step = rates.length > 1 ? (w - 2) / (rates.length - 1) : 0;
    let pts = [];
    const flush = () => {
      if (pts.length === 1) box.append(svg("circle", { cx: pts[0][0], cy: pts[0][1], r: 1.5, class: "dot" }));
      else if (pts.length) box.append(svg("polyline", { points: pts.map((p) => p.join(",")).join(" "), class: "line" }));
      pts = [];
    };
    rates.forEach((r, i) => {
      if (r == null) return flush();
      pts.push([(1 + i * step).toFixed(1), (hgt - 2 - (r / top) * (hgt - 4)).toFixed(1)]);
    });
    flush();
    return box;
  }
  function storeNote(d) {
    if (d.store && !d.store.ok) return h("p", { class: "note bad" }, "Comparison store unavailable: " + d.store.error + " (live counters still shown)");
    const rec = d.recorder;
    if (rec && rec.store_down_for != null) {
      return h("p", { class: "note bad" }, `Store down for ${Math.round(rec.store_down_for)} s; ${num(rec.buffered)} comparisons buffered: ${rec.last_error || ""}`);
    }
    if (d.store && d.store.empty) return h("p", { class: "note" }, "No comparisons stored yet.");
    return null;
  }

  // --- overview -----------------------------------------------------------------------
  const COLUMNS = [
    ["name", "Route"], ["mode", "Mode"], ["share", "Candidate share"], ["requests", "Requests"],
    ["samples", "Samples"], ["rate", "Mismatch rate"], [null, "Trend"], ["legacy", "Legacy p50 / p99 ms"],
    ["candidate", "Candidate p50 / p99 ms"], ["breaker", "Breaker"], ["gate", "Gate"],
  ];
  const SORTS = {
    name: (r) => r.name, mode: (r) => r.mode, share: (r) => r.share, requests: (r) => r.live.requests,
    samples: (r) => r.samples, rate: (r) => (r.mismatch_rate == null ? -1 : r.mismatch_rate),
    legacy: (r) => r.latency_ms.legacy.p99 || 0, candidate: (r) => r.latency_ms.candidate.p99 || 0,
    breaker: (r) => r.breaker || "", gate: (r) => r.gate.verdict,
  };

  function overviewSkeleton() {
    const head = h("tr", null, COLUMNS.map(([key, label]) =>
      h("th", key ? { "data-sort": key, class: "sortable", tabindex: 0, onclick: () => sortBy(key),
        onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(key); } } } : null, label)));
    $("app").replaceChildren(
      h("section", { id: "summary", class: "cards" }),
      h("div", { id: "notes" }),
      h("div", { class: "toolbar" },
        h("input", { id: "filter", type: "search", placeholder: "filter routes…", "aria-label": "filter routes", value: S.filter,
          oninput: (e) => { S.filter = e.target.value.toLowerCase(); if (S.last) renderOverview(S.last); } }),
        h("span", { id: "shown", class: "muted" })),
      h("div", { class: "scroll" }, h("table", { id: "routes", class: "grid" }, h("thead", null, head), h("tbody", { id: "rows" }))),
      h("p", { id: "foot", class: "muted" }));
    S.view = "overview";
    document.body.dataset.view = "overview";
  }
  function sortBy(key) {
    S.sortDir = S.sortKey === key ? -S.sortDir : key === "name" || key === "mode" ? 1 : -1;
    S.sortKey = key;
    if (S.last) renderOverview(S.last);
  }
  function noteRates(d) {
    const now = performance.now();
    const dt = (now - S.prevAt) / 1000;
    for (const r of d.routes) {
      const before = S.prev.get(r.name);
      if (before != null && dt > 0.2) S.rps.set(r.name, Math.max(0, (r.live.requests - before) / dt));
      S.prev.set(r.name, r.live.requests);
    }
    S.prevAt = now;
  }
  function renderOverview(d) {
    const t0 = performance.now();
    if (S.view !== "overview") overviewSkeleton();
    S.last = d;
    const modes = {};
    let passing = 0, gated = 0;
    for (const r of d.routes) {
      modes[r.mode] = (modes[r.mode] || 0) + 1;
      if (r.gate.verdict !== "n/a") { gated++; if (r.gate.verdict === "pass") passing++; }
    }
    $("config").textContent = "config " + d.config_version;
    $("summary").replaceChildren(
      card("Routes", num(d.routes.length), Object.entries(modes).map(([m, n]) => `${n} ${m}`).join(" · ")),
      card("Gates passing", `${passing} / ${gated}`, "routes with a candidate"),
      card("Held by auto-rollback", num(d.routes.filter((r) => r.auto_rollback).length), "routes"),
      card("Unrouted requests", num(d.default.requests), "to " + d.default.backend));
    $("notes").replaceChildren(storeNote(d) || "");
    const key = SORTS[S.sortKey] || SORTS.name;
    const rows = d.routes
      .filter((r) => !S.filter || r.name.toLowerCase().includes(S.filter) || r.path.toLowerCase().includes(S.filter))
      .sort((a, b) => { const x = key(a), y = key(b); return (x < y ? -1 : x > y ? 1 : 0) * S.sortDir; });
    const frag = document.createDocumentFragment();
    for (const r of rows) frag.append(routeRow(r));
    $("rows").replaceChildren(frag);
    for (const th of document.querySelectorAll("#routes th[data-sort]")) {
      th.classList.toggle("asc", th.dataset.sort === S.sortKey && S.sortDir > 0);
      th.classList.toggle("desc", th.dataset.sort === S.sortKey && S.sortDir < 0);
    }
    $("shown").textContent = rows.length === d.routes.length ? "" : `${rows.length} of ${d.routes.length} shown`;
    $("foot").textContent = `window ${d.window} · buckets of ${d.bucket_seconds || "–"} s · mismatch rate = mismatches / (matches + mismatches)`;
    S.lastRenderMs = performance.now() - t0;
    S.renders++;
  }
  function card(label, value, sub) {
    return h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "value" }, value), h("div", { class: "sub" }, sub || ""));
  }
  function routeRow(r) {
    const rps = S.rps.get(r.name);
    const ci = r.mismatch_ci95 ? `95% CI ${pct(r.mismatch_ci95[0])} – ${pct(r.mismatch_ci95[1])} over ${num(r.samples)} samples` : "no compared samples";
    const methods = r.methods ? r.methods.join(",") : "*";
    return h("tr", { "data-route": r.name, class: r.auto_rollback ? "held" : null },
      h("td", { class: "name" }, h("a", { href: "#/routes/" + encodeURIComponent(r.name) }, r.name), h("div", { class: "sub" }, methods + " " + r.path)),
      h("td", { class: "mode" }, modeBadge(r)),
      h("td", { class: "share num" }, shareCell(r)),
      h("td", { class: "requests num" }, num(r.live.requests), h("div", { class: "sub" }, rps == null ? "" : rps.toFixed(1) + "/s")),
      h("td", { class: "samples num" }, num(r.samples)),
      h("td", { class: "rate num " + rateClass(r), title: ci }, pct(r.mismatch_rate)),
      h("td", { class: "trend" }, sparkline(r.series, 120, 26)),
      h("td", { class: "lat num" }, `${ms(r.latency_ms.legacy.p50)} / ${ms(r.latency_ms.legacy.p99)}`),
      h("td", { class: "lat num" }, `${ms(r.latency_ms.candidate.p50)} / ${ms(r.latency_ms.candidate.p99)}`),
      h("td", { class: "breaker" }, breakerBadge(r.breaker)),
      h("td", { class: "gate" }, gateBadge(r.gate)));
  }

  // --- route detail -------------------------------------------------------------------
  function detailSkeleton(name) {
    $("app").replaceChildren(
      h("p", null, h("a", { href: "#/" }, "← all routes")),
      h("h1", { id: "title" }, name),
      h("div", { id: "notes" }),
      h("section", { id: "cards", class: "cards" }),
      h("section", { id: "rollback", class: "panel action", hidden: true },
        h("h2", null, "Automatic rollback in force"),
        h("p", { id: "rollback-why" }),
        h("p", null, "Clearing the hold needs the admin token; it is sent once, as a bearer header, and not stored."),
        h("form", { id: "clear-form", onsubmit: clearRollback },
          h("input", { id: "token", type: "password", autocomplete: "off", placeholder: "admin token", "aria-label": "admin token", required: true }),
          h("button", { type: "submit" }, "Clear auto-rollback"),
          h("span", { id: "clear-result", class: "muted" }))),
      h("section", { class: "panel" }, h("h2", null, "Mismatch rate over time"), h("div", { id: "trend" })),
      h("section", { class: "panel" }, h("h2", null, "Top differing paths"), h("div", { id: "paths" })),
      h("section", { class: "panel" }, h("h2", null, "Recent mismatches"), h("div", { id: "recent" }), h("div", { id: "diff" })),
      h("section", { class: "panel" }, h("h2", null, "Route changes"), h("div", { id: "changes" })));
    S.view = "route";
    S.route = name;
    S.selected = null;
    S.diffKey = "";
    document.body.dataset.view = "route";
  }
  function renderDetail(d) {
    const t0 = performance.now();
    const r = d.route;
    if (S.view !== "route" || S.route !== r.name) detailSkeleton(r.name);
    $("config").textContent = "config " + d.config_version;
    $("title").replaceChildren(r.name, " ", ...modeBadge(r).filter(Boolean), h("span", { class: "sub" }, ` ${r.methods ? r.methods.join(",") : "*"} ${r.path}${r.configured ? "" : " (not in the config any more)"}`));
    $("notes").replaceChildren(storeNote(d) || "");
    const lat = r.latency_ms;
    $("cards").replaceChildren(
      card("Candidate share", shareCell(r)[0], shareCell(r)[1].textContent),
      card("Requests", num(r.live.requests), Object.entries(r.live.by_class).filter(([, n]) => n > 0).map(([c, n]) => `${c} ${num(n)}`).join(" · ")),
      card("Samples", num(r.samples), `${num(r.matches)} match · ${num(r.mismatches)} mismatch · ${num(r.errors)} errors`),
      h("div", { class: "card rate " + rateClass(r), id: "rate" }, h("div", { class: "label" }, "Mismatch rate"), h("div", { class: "value" }, pct(r.mismatch_rate)),
        h("div", { class: "sub" }, r.mismatch_ci95 ? `95% CI ${pct(r.mismatch_ci95[0])} – ${pct(r.mismatch_ci95[1])}` : "no samples")),
      card("Legacy p50 / p99", `${ms(lat.legacy.p50)} / ${ms(lat.legacy.p99)} ms`, ""),
      card("Candidate p50 / p99", `${ms(lat.candidate.p50)} / ${ms(lat.candidate.p99)} ms`, r.p99_ratio == null ? "" : `p99 ×${r.p99_ratio.toFixed(2)} of legacy`),
      h("div", { class: "card" }, h("div", { class: "label" }, "Breaker"), h("div", { class: "value" }, breakerBadge(r.breaker)), h("div", { class: "sub" }, r.candidate || "")),
      h("div", { class: "card", id: "gate" }, h("div", { class: "label" }, "Gate"), h("div", { class: "value" }, gateBadge(r.gate)),
        h("ul", { class: "reasons" }, r.gate.reasons.map((x) => h("li", null, x)))));
    $("rollback").hidden = !r.auto_rollback;
    $("rollback-why").replaceChildren("This route is held on legacy",
      ...(r.rollback ? [" since ", when(r.rollback.time), r.rollback.reason ? ": " + r.rollback.reason : ""] : []), ".");
    $("trend").replaceChildren(sparkline(r.series, 1000, 90, true), h("div", { class: "sub" }, `buckets of ${d.bucket_seconds || "–"} s over ${d.window}`));
    $("paths").replaceChildren(pathsTable(d.top_paths, d.noise_paths, r.distinct_paths));
    renderRecent(d.recent);
    $("changes").replaceChildren(changesTable(d.changes));
    S.lastRenderMs = performance.now() - t0;
    S.renders++;
  }
  function pathsTable(paths, noise, distinct) {
    if (!paths.length) return h("p", { class: "muted" }, "No differing paths in this window.");
    return h("div", null, h("table", { class: "grid", id: "top-paths" },
      h("thead", null, h("tr", null, ["Path", "Count", "Share", "First seen", "Last seen", "Example (legacy → candidate)"].map((x) => h("th", null, x)))),
      h("tbody", null, paths.map((p) => h("tr", { "data-path": p.path },
        h("td", null, h("code", null, p.path)), h("td", { class: "num" }, num(p.count)), h("td", { class: "num" }, pct(p.share, 1)),
        h("td", null, when(p.first_seen)), h("td", null, when(p.last_seen)),
        h("td", { class: "example" }, p.example ? exampleCells(p.example) : "–"))))),
    distinct > paths.length ? h("p", { class: "sub", id: "more-paths" }, `… and ${num(distinct - paths.length)} more paths`) : null,
    noise.length ? h("p", { class: "sub" }, "Noise (legacy differs from itself, not counted): ", noise.map((n) => h("code", null, n.path)).flatMap((c, i) => (i ? [", ", c] : [c]))) : null);
  }
  function exampleCells(ex) {
    const [a, b] = shortPair(ex.legacy, ex.candidate, ex.legacy_text, ex.candidate_text);
    return [h("code", null, a), " → ", h("code", null, b)];
  }
  function changesTable(changes) {
    if (!changes.length) return h("p", { class: "muted" }, "No recorded changes.");
    return h("table", { class: "grid" },
      h("thead", null, h("tr", null, ["When", "Kind", "From", "To", "By"].map((x) => h("th", null, x)))),
      h("tbody", null, changes.map((c) => h("tr", null, h("td", null, when(c.time)), h("td", null, c.kind),
        h("td", null, `${c.from_mode || "–"}${c.from_percent != null ? " " + c.from_percent + "%" : ""}`),
        h("td", null, `${c.to_mode}${c.to_percent != null ? " " + c.to_percent + "%" : ""}`), h("td", null, c.actor || "–")))));
  }
  function renderRecent(recent) {
    const ids = recent.map((m) => m.id);
    if (S.selected == null || !ids.includes(S.selected)) S.selected = ids.length ? ids[0] : null;
    $("recent").replaceChildren(!recent.length ? h("p", { class: "muted" }, "No mismatches in this window.") :
      h("table", { class: "grid pick", id: "mismatches" },
        h("thead", null, h("tr", null, ["When", "Request", "Status legacy / candidate", "Differences"].map((x) => h("th", null, x)))),
        h("tbody", null, recent.map((m) => h("tr", { "data-id": m.id, class: m.id === S.selected ? "selected" : null, onclick: () => { S.selected = m.id; renderRecent(recent); } },
          h("td", null, when(m.time)), h("td", null, h("code", null, `${m.method} ${m.request_path}`)),
          h("td", null, `${m.status.legacy ?? "–"} / ${m.status.candidate ?? "–"}`),
          h("td", null, m.patterns.slice(0, 3).map((p) => h("code", null, p)), m.patterns.length > 3 ? ` +${m.patterns.length - 3}` : ""))))));
    const chosen = recent.find((m) => m.id === S.selected);
    const key = chosen ? String(chosen.id) : "";
    if (key === S.diffKey) return; // keep the diff (and its scroll position) while it is the same
    S.diffKey = key;
    $("diff").replaceChildren(chosen ? sideBySide(chosen) : "");
  }

  // --- side-by-side JSON diff ---------------------------------------------------------
  const NAME = /^[A-Za-z_][A-Za-z0-9_-]*$/;
  function childPath(parent, key) {
    if (typeof key === "number") return `${parent}[${key}]`;
    return NAME.test(key) ? `${parent}.${key}` : `${parent}["${key.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"]`;
  }
  function jsonLines(value, marks, exact) {
    const pre = h("pre", { class: "json" });
    let count = 0;
    function emit(indent, text, path, own, kind) {
      if (++count > MAX_JSON_LINES) return;
      const ln = h("div", { class: kind ? "ln diff diff-" + kind : "ln", "data-path": own ? path : null }, "  ".repeat(indent) + text);
      pre.append(ln);
    }
    function walk(v, path, indent, label, comma, inherited) {
      if (count > MAX_JSON_LINES) return;
      const own = marks.get(path);
      const kind = own || inherited;
      if (v !== null && typeof v === "object") {
        const arr = Array.isArray(v);
        const entries = arr ? v.map((x, i) => [i, x]) : Object.entries(v);
        if (!entries.length) return emit(indent, label + (arr ? "[]" : "{}") + comma, path, own, kind);
        emit(indent, label + (arr ? "[" : "{"), path, own, kind);
        entries.forEach(([k, x], i) => walk(x, childPath(path, k), indent + 1, arr ? "" : JSON.stringify(k) + ": ", i < entries.length - 1 ? "," : "", kind));
        emit(indent, (arr ? "]" : "}") + comma, path, null, kind);
      } else {
        const digits = typeof v === "number" && exact ? exact[path] : undefined; // past 2^53
        emit(indent, label + (digits != null ? digits : JSON.stringify(v)) + comma, path, own, kind);
      }
    }
    walk(value, "$", 0, "", "", null);
    if (count > MAX_JSON_LINES) pre.append(h("div", { class: "ln muted" }, `… ${count - MAX_JSON_LINES} more lines`));
    return pre;
  }
  function side(title, body, marks, status, cls) {
    const content = body.format === "json" ? jsonLines(body.value, marks, body.exact)
      : h("pre", { class: "json" }, body.format === "none" ? "(no body stored)" : body.value);
    return h("div", { class: "side " + cls }, h("h3", null, `${title} · ${status ?? "–"}`), h("div", { class: "pane" }, content));
  }
  function sideBySide(m) {
    const legacy = new Map(), cand = new Map();
    for (const d of m.differences) {
      if (d.kind !== "added") legacy.set(d.path, d.kind);
      if (d.kind !== "removed") cand.set(d.path, d.kind);
    }
    const list = m.differences.length
      ? h("table", { class: "grid", id: "differences" },
        h("thead", null, h("tr", null, ["Path", "Kind", "Legacy", "Candidate"].map((x) => h("th", null, x)))),
        h("tbody", null, m.differences.map((d) => {
          const [a, b] = shortPair(d.kind === "added" ? undefined : d.legacy, d.kind === "removed" ? undefined : d.candidate, d.legacy_text, d.candidate_text);
          return h("tr", { "data-path": d.path, onclick: () => reveal(d.path) },
            h("td", null, h("code", null, d.path)), h("td", null, d.kind),
            h("td", null, h("code", null, a)), h("td", null, h("code", null, b)));
        })))
      : h("p", { class: "muted" }, (m.bodies.legacy.format === "json" && m.bodies.candidate.format === "json"
        ? "The JSON bodies do not differ under the route's current rules"
        : "Bodies are not both JSON") + "; recorded differing paths: " + (m.patterns.join(", ") || "none"));
    const box = h("div", { class: "diffview" },
      h("p", { class: "sub" }, `${m.method} ${m.request_path} · request ${m.request_id || "–"} · ${m.time}` + (m.differences_truncated ? " · differences truncated" : "")),
      list,
      h("div", { class: "sides" }, side("Legacy", m.bodies.legacy, legacy, m.status.legacy, "side-legacy"),
        side("Candidate", m.bodies.candidate, cand, m.status.candidate, "side-candidate")));
    requestAnimationFrame(() => { if (m.differences.length) reveal(m.differences[0].path, true); });
    return box;
  }
  function reveal(path, quiet) {
    for (const pane of document.querySelectorAll("#diff .pane")) {
      const hit = Array.from(pane.querySelectorAll(".ln[data-path]")).find((e) => e.dataset.path === path);
      if (!hit) continue;
      pane.scrollTop = Math.max(0, hit.offsetTop - pane.offsetTop - 40);
      if (!quiet) { hit.classList.remove("flash"); void hit.offsetWidth; hit.classList.add("flash"); }
    }
  }

  // --- the one action -----------------------------------------------------------------
  async function clearRollback(ev) {
    ev.preventDefault();
    const input = $("token");
    const out = $("clear-result");
    const token = input.value.trim();
    if (!token) return;
    out.textContent = "sending…";
    try {
      const r = await fetch("routes/" + encodeURIComponent(S.route) + "/clear", {
        method: "POST", headers: { Authorization: "Bearer " + token }, cache: "no-store",
      });
      const body = await r.json().catch(() => ({}));
      out.className = r.ok ? "good" : "bad";
      out.textContent = !r.ok ? `refused (${r.status}): ${(body.error && body.error.message) || r.statusText}`
        : body.cleared === false ? "no hold to clear" : "cleared";
    } catch (e) {
      out.className = "bad";
      out.textContent = "failed: " + e.message;
    }
    input.value = "";
    tick();
  }

  // --- polling ------------------------------------------------------------------------
  function wanted() {
    const m = location.hash.match(/^#\/routes\/(.+)$/);
    if (!m) return null;
    try {
      return decodeURIComponent(m[1]);
    } catch (e) { // a stray % (a hand-edited link): taken as written, polling goes on
      return m[1];
    }
  }
  async function tick() {
    clearTimeout(S.timer);
    const my = ++S.seq;
    if (!document.hidden) {
      const name = wanted();
      try {
        const q = "?since=" + encodeURIComponent(S.since);
        const d = await getJSON(name == null ? "api/overview" + q : "api/routes/" + encodeURIComponent(name) + q);
        if (my !== S.seq) return;
        if (name == null) { noteRates(d); renderOverview(d); } else renderDetail(d);
        S.lastError = "";
        setStatus(true, "live · " + new Date().toLocaleTimeString());
      } catch (e) {
        if (my !== S.seq) return;
        S.lastError = e.message;
        if (name != null && S.view !== "route") $("app").replaceChildren(h("p", null, h("a", { href: "#/" }, "← all routes")), h("p", { class: "note bad" }, e.message));
        setStatus(false, "error: " + e.message);
      }
    }
    if (my === S.seq) S.timer = setTimeout(tick, POLL_MS);
  }
  document.addEventListener("DOMContentLoaded", () => {
    const since = $("since");
    S.since = since.value;
    since.addEventListener("change", () => { S.since = since.value; S.prev.clear(); S.rps.clear(); S.diffKey = ""; tick(); });
    window.addEventListener("hashchange", () => { S.view = ""; tick(); });
    document.addEventListener("visibilitychange", () => { if (!document.hidden) tick(); });
    tick();
  });
})();
