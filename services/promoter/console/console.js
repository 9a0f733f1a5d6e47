// ctrain operator console. Plain DOM and SVG, no library, nothing fetched from elsewhere:
// every call goes to this page's origin (the promoter), with the token in a header.
"use strict";

const REFRESH_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";
const S = {
  token: sessionStorage.getItem("ctrain.token") || "",
  me: null, models: [], model: null, stream: null, view: "windows",
  units: [], selected: null, candidate: null, timer: null,
};
const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ DOM helpers
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids.flat()) {
    if (k === null || k === undefined) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}
function svg(tag, attrs, ...kids) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids.flat()) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}
function fill(id, ...kids) {
  const box = $(id);
  box.replaceChildren(...kids.flat().filter((k) => k !== null && k !== undefined));
  return box;
}
function num(x, digits = 3) {
  if (x === null || x === undefined || x === "") return "–";
  const n = Number(x);
  return Number.isInteger(n) ? n.toLocaleString() : n.toFixed(digits);
}
function day(iso) { return iso ? iso.slice(0, 10) : "–"; }
function when(epoch) {
  return epoch ? new Date(Number(epoch) * 1000).toISOString().replace("T", " ").slice(0, 19) : "–";
}
function table(headers, rows, cls) {
  return el("table", { class: cls || "" },
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows));
}
function say(text, info) {
  const m = $("message");
  m.textContent = text; m.className = info ? "info" : ""; m.hidden = !text;
}

// ------------------------------------------------------------------ API
class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}
async function api(path, opts = {}) {
  const headers = { Authorization: `Bearer ${S.token}` };
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  let r;
  try {
    r = await fetch(path, {
      method: opts.method || "GET", headers, credentials: "omit", cache: "no-store",
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    });
  } catch (e) {
    throw new ApiError(0, `the promoter did not answer (${e.message})`);
  }
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) {
    let detail = data && data.detail !== undefined ? data.detail : r.statusText;
    if (Array.isArray(detail)) detail = detail.map((d) => `${d.loc.join(".")}: ${d.msg}`).join("; ");
    if (r.status === 401) { signOut(`Signed out: ${detail}`); }
    throw new ApiError(r.status, String(detail));
  }
  return data;
}
const up = (service, path) => api(`/console/api/${service}/${path}`);
const q = (params) => new URLSearchParams(
  Object.entries(params).filter(([, v]) => v !== null && v !== undefined && v !== "")).toString();
const can = (role) => ["viewer", "approver", "admin"].indexOf(S.me.role) >=
  ["viewer", "approver", "admin"].indexOf(role);

// ------------------------------------------------------------------ session
async function signIn(token) {
  S.token = token;
  try {
    S.me = await api("/console/whoami");
  } catch (e) {
    S.token = "";
    sessionStorage.removeItem("ctrain.token");
    $("login").hidden = false; $("app").hidden = true; $("session").hidden = true;
    say(e.status === 401 ? `That token was refused: ${e.message}` : e.message);
    return;
  }
  sessionStorage.setItem("ctrain.token", token);
  $("token").value = "";
  $("login").hidden = true; $("app").hidden = false; $("session").hidden = false;
  $("who").textContent = `${S.me.identity} (${S.me.role})`;
  say("");
  await loadModels();
  show(S.view);
}
function signOut(why) {
  S.token = ""; S.me = null;
  sessionStorage.removeItem("ctrain.token");
  clearInterval(S.timer);
  for (const id of ["decide", "rollback"]) { $(id).replaceChildren(); $(id).dataset.for = ""; }
  $("app").hidden = true; $("session").hidden = true; $("login").hidden = false;
  say(why || "");
  $("token").focus();
}
async function loadModels() {
  try {
    S.models = (await up("trigger", "v1/models")).models;
  } catch (e) {
    S.models = [];
    say(`Models unknown: ${e.message}`);
  }
  const sel = $("model");
  sel.replaceChildren(...S.models.map((m) => el("option", { value: m.model }, m.model)));
  if (!S.models.some((m) => m.model === S.model)) S.model = S.models.length ? S.models[0].model : null;
  if (S.model) sel.value = S.model;
  S.stream = (S.models.find((m) => m.model === S.model) || {}).stream || null;
}

// ------------------------------------------------------------------ views
function show(view) {
  S.view = view;
  for (const v of ["windows", "runs", "candidates", "serving"]) {
    $(`tab-${v}`).setAttribute("aria-selected", String(v === view));
    $(`tab-${v}`).tabIndex = v === view ? 0 : -1;
    $(`view-${v}`).hidden = v !== view;
  }
  clearInterval(S.timer);
  refresh();
  S.timer = setInterval(refresh, REFRESH_MS);  // live: the view's APIs polled
}
async function refresh() {
  if (!S.me || !S.model) return;
  const views = { windows: viewWindows, runs: viewRuns, candidates: viewCandidates, serving: viewServing };
  try {
    await views[S.view]();
    if ($("message").className !== "info") say("");  // an error that no longer holds
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    if (S.me) say(e.message);
  }
}

// Windows: features x windows, coloured by distance / threshold, crossed cells marked.
async function viewWindows() {
  const scope = $("scope").value, kind = $("kind").value;
  const path = scope === "periods" ? "v1/periods" : "v1/windows";
  const data = await up("validator", `${path}?${q({ stream: S.stream, limit: 200 })}`);
  const units = (data.periods || data.windows || []).slice().reverse();  // oldest first
  S.units = units;
  if (!units.length) { fill("heatmap", el("p", { class: "empty" }, `No ${scope} validated yet for stream ${S.stream}.`)); return; }
  const features = [...new Set(units.flatMap((u) => u.distances.map((d) => d.feature)))].sort();
  const cellOf = (u, f) => u.distances.find((d) => d.feature === f && d.kind === kind);
  const head = el("tr", {}, el("th", { class: "feat", scope: "col" }, "feature \\ window"),
    units.map((u) => el("th", { class: "col", scope: "col", title: u.window_id }, day(u.start))));
  const verdicts = el("tr", {}, el("th", { class: "feat", scope: "row" }, "verdict"),
    units.map((u) => el("td", { class: `verdict-${u.verdict}` }, u.verdict)));
  const counts = el("tr", {}, el("th", { class: "feat", scope: "row" }, "examples"),
    units.map((u) => el("td", { class: "num" }, num(u.example_count))));
  const anomalies = el("tr", {}, el("th", { class: "feat", scope: "row" }, "anomalies"),
    units.map((u) => el("td", {
      class: u.anomalies.some((a) => a.severity === "blocking") ? "worse" : "",
      title: u.anomalies.map((a) => `${a.feature}: ${a.code} (${a.severity}) ${a.description}`).join("\n"),
    }, u.anomalies.length ? `${u.anomalies.length} (${u.anomalies.map((a) => a.severity[0]).join("")})` : "")));
  const rows = features.map((f) => el("tr", { "data-feature": f },
    el("th", { class: "feat", scope: "row" }, f),
    units.map((u) => {
      const d = cellOf(u, f);
      if (!d) return el("td", { class: "cell" });
      const r = d.threshold ? d.value / d.threshold : 0, m = Math.min(r, 1);
      const bg = d.crossed ? `hsl(4 75% ${Math.max(35, 60 - (r - 1) * 20)}%)`
        : `hsl(${210 - 175 * m} ${60 + 30 * m}% ${94 - 24 * m}%)`;
      const label = `${f} ${kind} ${d.measure} ${num(d.value, 4)} ${d.crossed ? ">" : "≤"} ${num(d.threshold, 4)} in ${u.window_id}`;
      return el("td", {
        class: `cell${d.crossed ? " crossed" : ""}`, tabindex: "0", role: "button",
        "aria-label": label, title: label, "data-window": u.window_id, "data-crossed": String(d.crossed), "data-bg": bg,
        onclick: () => selectFeature(u.window_id, f),
        onkeydown: (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); selectFeature(u.window_id, f); } },
      }, d.crossed ? "✕" : "");
    })));
  const t = table([], [verdicts, counts, anomalies, ...rows], "heat");
  t.querySelector("thead").replaceChildren(head);
  // Colours set through the CSSOM (the page's CSP allows no inline style attributes).
  fill("heatmap", t);
  for (const td of t.querySelectorAll("td.cell[data-bg]")) td.style.background = td.dataset.bg;
  const listed = units.flatMap((u) => u.anomalies.map((a) => ({ u, a }))).reverse().slice(0, 50);
  fill("anomalies", listed.length ? table(["window", "start", "feature", "anomaly", "severity", "description"],
    listed.map(({ u, a }) => el("tr", {}, el("td", {}, u.window_id), el("td", {}, day(u.start)), el("td", {}, a.feature),
      el("td", {}, a.code), el("td", { class: a.severity === "blocking" ? "worse" : "" }, a.severity), el("td", {}, a.description)))) :
    el("p", { class: "empty" }, "no anomalies in these windows"));
  if (S.selected) await drawFeature();
}
async function selectFeature(windowId, feature) {
  S.selected = { windowId, feature };
  await drawFeature();
  $("feature").scrollIntoView({ block: "nearest" });
}
async function drawFeature() {
  const { windowId, feature } = S.selected, kind = $("kind").value;
  const d = await up("validator", `v1/windows/${encodeURIComponent(windowId)}/features/${encodeURIComponent(feature)}?${q({ baseline: kind })}`);
  const series = S.units.map((u) => ({ u, d: u.distances.find((x) => x.feature === feature && x.kind === kind) }))
    .filter((x) => x.d);
  const dist = d.kind === "numeric"
    ? histogram(d.window ? d.window.histogram : [], d.baseline ? d.baseline.histogram : [])
    : categories(d.window ? d.window.categories : {}, d.baseline ? d.baseline.categories : {});
  const summary = table(["", "window", "baseline"],
    Object.keys((d.window || {}).summary || {}).map((k) => el("tr", {}, el("th", { scope: "row" }, k),
      el("td", { class: "num" }, d.window.summary[k]),
      el("td", { class: "num" }, d.baseline ? d.baseline.summary[k] || "–" : "–"))));
  fill("feature", el("div", { class: "card", id: "feature-card" },
    el("h3", {}, `${feature} in ${windowId}`),
    el("p", { class: "k" }, `${kind} baseline: ${d.baseline_id || "none (the first window)"}`,
      " · ", el("span", { class: "legend" }, el("span", { class: "swatch", id: "sw-w" }), "window",
        el("span", { class: "swatch", id: "sw-b" }), "baseline")),
    el("div", { class: "charts" }, dist, overTime(series, feature, kind), summary)));
  $("sw-w").style.background = "var(--accent)"; $("sw-b").style.background = "var(--base)";
}
function histogram(win, base) {
  const W = 360, H = 140, all = [...win, ...base];
  const box = svg("svg", { width: W, height: H + 20, role: "img", "aria-label": "histogram of the window beside its baseline" });
  if (!all.length) return box;
  const lo = Math.min(...all.map((b) => b.low)), hi = Math.max(...all.map((b) => b.high)), span = hi - lo || 1;
  const share = (s) => { const t = s.reduce((a, b) => a + b.count, 0) || 1; return s.map((b) => ({ ...b, p: b.count / t })); };
  const sets = [share(win), share(base)], top = Math.max(...sets.flat().map((b) => b.p), 1e-9);
  sets.forEach((s, i) => s.forEach((b) => {
    const x = (b.low - lo) / span * W, w = Math.max(1, (b.high - b.low) / span * W / 2), h = b.p / top * H;
    box.append(svg("rect", { x: (x + i * w).toFixed(1), y: (H - h).toFixed(1), width: w.toFixed(1), height: h.toFixed(1),
      fill: i ? "#e07b39" : "#2f6db5", "fill-opacity": "0.85" }, svg("title", {}, `${num(b.low)}–${num(b.high)}: ${(100 * b.p).toFixed(1)} %`)));
  }));
  box.append(svg("text", { x: 0, y: H + 14 }, num(lo)), svg("text", { x: W, y: H + 14, "text-anchor": "end" }, num(hi)));
  return box;
}
function categories(win, base) {
  const labels = [...new Set([...Object.keys(win).sort((a, b) => win[b] - win[a]).slice(0, 12),
    ...Object.keys(base).sort((a, b) => base[b] - base[a])])].slice(0, 12);
  const row = 18, W = 420, at = 140, top = Math.max(...labels.flatMap((k) => [win[k] || 0, base[k] || 0]), 1e-9);
  const box = svg("svg", { width: W, height: labels.length * row + 4, role: "img", "aria-label": "category shares in the window beside its baseline" });
  labels.forEach((k, i) => {
    const y = i * row;
    box.append(svg("text", { x: at - 6, y: y + 12, "text-anchor": "end" }, k === "" ? "(empty)" : (k.length > 22 ? `${k.slice(0, 21)}…` : k)));
    [[win[k] || 0, "#2f6db5", 0], [base[k] || 0, "#e07b39", 8]].forEach(([p, c, dy]) => {
      box.append(svg("rect", { x: at, y: y + 2 + dy, width: Math.max(0.5, p / top * (W - at - 50)).toFixed(1), height: 7, fill: c },
        svg("title", {}, `${k}: ${(100 * p).toFixed(1)} %`)));
    });
    box.append(svg("text", { x: W - 44, y: y + 12 }, `${(100 * (win[k] || 0)).toFixed(1)}%`));
  });
  return box;
}
function overTime(series, feature, kind) {
  const W = 360, H = 140, pad = 26;
  const box = svg("svg", { width: W, height: H + 24, role: "img", "aria-label": `${feature} ${kind} distance over time with its threshold` });
  if (!series.length) return box;
  const vals = series.flatMap((s) => [s.d.value, s.d.threshold]), top = Math.max(...vals, 1e-9) * 1.1;
  const x = (i) => pad + (series.length === 1 ? 0 : i / (series.length - 1) * (W - pad - 6));
  const y = (v) => H - v / top * (H - 8);
  const thr = series.map((s, i) => `${x(i).toFixed(1)},${y(s.d.threshold).toFixed(1)}`).join(" ");
  box.append(svg("polyline", { points: thr, fill: "none", stroke: "#b3261e", "stroke-dasharray": "4 3" }, svg("title", {}, "threshold")));
  box.append(svg("polyline", { points: series.map((s, i) => `${x(i).toFixed(1)},${y(s.d.value).toFixed(1)}`).join(" "), fill: "none", stroke: "#2f6db5", "stroke-width": 2 }));
  series.forEach((s, i) => box.append(svg("circle", { cx: x(i).toFixed(1), cy: y(s.d.value).toFixed(1), r: 3, fill: s.d.crossed ? "#b3261e" : "#2f6db5" },
    svg("title", {}, `${day(s.u.start)}: ${num(s.d.value, 4)} (threshold ${num(s.d.threshold, 4)})`))));
  box.append(svg("text", { x: 0, y: 10 }, num(top, 3)), svg("text", { x: 0, y: H }, "0"),
    svg("text", { x: pad, y: H + 16 }, day(series[0].u.start)),
    svg("text", { x: W - 6, y: H + 16, "text-anchor": "end" }, day(series[series.length - 1].u.start)));
  return box;
}

// Runs: the trigger's decisions and each run's components.
async function viewRuns() {
  const [runs, decisions] = await Promise.all([
    up("trigger", `v1/runs?${q({ model: S.model, count: 20 })}`),
    up("trigger", `v1/decisions?${q({ model: S.model, count: 50 })}`),
  ]);
  fill("runs", runs.runs.length ? runs.runs.map((r) => {
    const longest = Math.max(...r.components.map((c) => c.seconds || 0), 1);
    return el("div", { class: "card run", "data-run": r.run_id },
      el("h3", {}, `${r.run_id} `, el("span", { class: `state-${r.state}` }, r.state)),
      el("p", {}, `reason ${r.reason} · submitted ${when(r.submitted_at)} · finished ${when(r.finished_at)}`,
        r.candidate_id ? ` · candidate ${r.candidate_id}` : ""),
      r.why ? el("p", { class: "k" }, r.why) : null,
      r.failed_component ? el("div", { class: "worse" }, `failed in ${r.failed_component}`,
        el("pre", { class: "error" }, r.error || "no log tail recorded; see the run's run.log")) : null,
      r.components.length ? table(["component", "state", "seconds", ""], r.components.map((c) => el("tr", {},
        el("td", {}, c.name), el("td", { class: `state-${c.state}` }, c.state), el("td", { class: "num" }, num(c.seconds, 1)),
        el("td", {}, el("span", { class: `bar ${c.state}`, "data-w": String(Math.round(200 * (c.seconds || 0) / longest)) }))))) :
        el("p", { class: "empty" }, "no per-component progress from this backend"));
  }) : el("p", { class: "empty" }, "no runs yet"));
  for (const b of document.querySelectorAll("#runs .bar")) b.style.width = `${b.dataset.w}px`;
  fill("decisions", table(["at", "taken", "trigger", "reason", "guard", "source", "run"],
    decisions.decisions.map((d) => el("tr", {},
      el("td", {}, when(d.at)), el("td", { class: d.taken === "true" ? "better" : "" }, d.taken),
      el("td", {}, d.trigger), el("td", {}, d.reason), el("td", {}, d.guard), el("td", {}, d.source), el("td", {}, d.run_id)))));
}

// Candidates: TFMA per slice against serving, evidence, lineage, decisions, audit.
async function viewCandidates() {
  const [list, audit] = await Promise.all([
    api(`/v1/candidates?${q({ model: S.model })}`), api("/v1/audit?count=100"),
  ]);
  fill("candidates", list.candidates.length ? table(["candidate", "state", "blessed", "version", "approvals", "updated"],
    list.candidates.map((c) => el("tr", {},
      el("td", {}, el("button", { type: "button", class: "link", onclick: () => openCandidate(c.candidate_id) }, c.candidate_id)),
      el("td", { class: `state-${c.state}` }, c.state), el("td", {}, c.blessed ? "yes" : `no: ${c.failed_checks.join("; ")}`),
      el("td", { class: "num" }, c.version), el("td", {}, c.approvals.join(", ")), el("td", {}, when(c.updated_at))))) :
    el("p", { class: "empty" }, "no candidates yet"));
  fill("audit", table(["at", "candidate", "actor", "action", "from", "to", "reason"],
    audit.entries.filter((a) => !a.model || a.model === S.model).map((a) => el("tr", {},
      el("td", {}, a.at ? when(a.at) : a.id), el("td", {}, a.candidate_id), el("td", {}, a.actor),
      el("td", {}, a.action), el("td", {}, a.before), el("td", {}, a.after), el("td", {}, a.reason)))));
  if (!S.candidate && list.candidates.length) {
    const waiting = list.candidates.find((c) => c.state === "pending_approval");
    S.candidate = (waiting || list.candidates[0]).candidate_id;
  }
  if (S.candidate) await drawCandidate();
}
async function openCandidate(cid) {
  S.candidate = cid;
  if (!($("decide").dataset.for || "").startsWith(`${cid}:`)) { $("decide").replaceChildren(); $("decide").dataset.for = ""; }
  await drawCandidate();
}
async function drawCandidate() {
  const c = await api(`/v1/candidates/${encodeURIComponent(S.candidate)}`);
  // Slices as rows, metrics as columns: "candidate (Δ against serving)".
  const names = Object.keys(c.metrics.overall);
  const cell = (m) => {
    if (!m) return el("td", {});
    const d = m.baseline === null || m.baseline === undefined ? null : m.candidate - m.baseline;
    return el("td", { class: "num", title: `serving ${num(m.baseline, 4)}` }, num(m.candidate, 4),
      d === null ? "" : el("span", { class: d >= 0 ? "better" : "worse" }, ` (${d >= 0 ? "+" : ""}${d.toFixed(3)})`));
  };
  const metricRows = [["overall", c.metrics.overall], ...c.metrics.slices.map((s) => [s.slice, s.metrics])]
    .map(([slice, ms]) => el("tr", {}, el("th", { scope: "row" }, slice), names.map((k) => cell(ms[k]))));
  const L = c.lineage;
  fill("candidate", el("div", { class: "card", id: "candidate-card", "data-candidate": c.candidate_id, "data-state": c.state },
    el("h3", {}, `${c.candidate_id} `, el("span", { class: `state-${c.state}`, id: "candidate-state" }, c.state)),
    el("p", {}, `blessed: ${c.blessed ? "yes" : "no"}`, c.failed_checks.length ? ` (${c.failed_checks.join("; ")})` : "",
      c.version ? ` · version ${c.version}` : "", c.approvals.length ? ` · approved by ${c.approvals.join(", ")}` : "",
      c.reason ? ` · ${c.reason}` : ""),
    el("p", {}, el("strong", {}, "Live: "), c.live ? c.live.summary : "–"),
    el("h4", {}, "TFMA per slice: candidate (Δ against the serving model)"),
    el("div", { class: "scroll slices" }, table(["slice", ...names], metricRows, "tfma")),
    el("h4", {}, `Why it was trained: ${c.trigger_reason || "–"}`),
    el("ul", {}, Object.entries(c.trigger_evidence || {}).map(([p, lines]) => el("li", {}, `${p}: ${lines.join("; ")}`))),
    el("h4", {}, "Lineage"),
    el("dl", { class: "lineage" }, [["run", L.run_id], ["trained on", (L.windows || []).join(", ")],
      ["evaluated on", (L.eval_windows || [L.eval_window]).join(", ")], ["examples", `${num(L.train_examples)} train · ${num(L.eval_examples)} eval`],
      ["module sha256", L.module_sha256], ["model", L.model_uri], ["evaluation", L.eval_uri]].flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v || "–")]))));
  drawDecide(c);
}
function drawDecide(c) {
  const box = $("decide");
  const key = `${c.candidate_id}:${c.state}:${S.me.role}`;
  if (box.dataset.for === key) return;  // keep what is being typed
  box.dataset.for = key;
  if (c.state !== "pending_approval" && !(c.state === "rejected" && can("admin"))) { box.replaceChildren(); return; }
  if (!can("approver")) {
    box.replaceChildren(el("p", { class: "k", id: "viewer-note" }, `${S.me.identity} has role ${S.me.role}: approving needs an approver.`));
    return;
  }
  const act = async (what) => {
    const reason = $("decision-reason").value.trim();
    if (!reason) { say("Give a reason: it is kept in the audit log."); $("decision-reason").focus(); return; }
    try {
      await api(`/v1/candidates/${encodeURIComponent(c.candidate_id)}/${what}`, { method: "POST", body: { reason } });
      say(`${c.candidate_id}: ${what === "approve" ? "approved" : "rejected"}`, true);
      box.dataset.for = "";
      await refresh();
    } catch (e) { say(`${what} refused: ${e.message}`); }
  };
  box.replaceChildren(el("div", { class: "card" }, el("h3", {}, "Decide"),
    el("label", { for: "decision-reason" }, "Reason (kept in the audit log)"), el("br"),
    el("textarea", { id: "decision-reason", rows: 2, required: true }), el("br"),
    el("button", { type: "button", class: "primary", id: "approve", onclick: () => act("approve") }, "Approve"), " ",
    el("button", { type: "button", class: "danger", id: "reject", onclick: () => act("reject") }, "Reject")));
}

// Serving: versions and labels, rollback, and quality per window.
async function viewServing() {
  let m;
  try { m = await api(`/v1/models/${encodeURIComponent(S.model)}`); } catch (e) {
    if (e.status !== 404) throw e;
    fill("serving", el("p", { class: "empty" }, e.message)); fill("rollback"); m = null;
  }
  if (m) {
    const labelsOf = (v) => Object.entries(m.labels).filter(([, x]) => Number(x) === Number(v)).map(([k]) => k);
    fill("serving", el("p", { id: "stable" }, "stable → version ", el("strong", { id: "stable-version" }, m.labels.stable ?? "–")),
      m.serving_reachable === false ? el("p", { class: "worse" }, `serving unreachable: ${m.serving_error}`) : null,
      table(["version", "labels", "state", "candidate"], m.versions.map((v) => el("tr", { "data-version": String(v) },
        el("td", { class: "num" }, v), el("td", {}, labelsOf(v).join(", ")),
        el("td", {}, (m.serving_reports || {})[String(v)] || "–"), el("td", {}, (m.candidates || {})[String(v)] || "")))),
      m.watch ? el("p", { class: "k" }, `watching the promotion: ${JSON.stringify(m.watch)}`) : null);
    drawRollback(m);
  }
  try {
    const qd = await up("monitor", `v1/quality?${q({ model: S.model, limit: 200 })}`);
    const rows = qd.windows.slice().reverse();
    const metric = rows.length && rows[0].realized && "auc" in rows[0].realized ? "auc" : Object.keys((rows[0] || {}).realized || {})[0];
    fill("quality", rows.length ? [qualityChart(rows, metric), table(["window", "start", "version", "examples", "labelled", `${metric} realized`, `${metric} estimated`],
      rows.map((r) => el("tr", {}, el("td", {}, r.window_id), el("td", {}, day(r.start)), el("td", { class: "num" }, r.version),
        el("td", { class: "num" }, num(r.examples)), el("td", { class: "num" }, `${(100 * r.label_coverage).toFixed(0)} %`),
        el("td", { class: "num" }, num((r.realized || {})[metric], 4)), el("td", { class: "num" }, num((r.estimated || {})[metric], 4)))))] :
      el("p", { class: "empty" }, "no window scored yet"));
  } catch (e) { fill("quality", el("p", { class: "empty" }, e.message)); }
}
function qualityChart(rows, metric) {
  const W = 480, H = 120, pad = 30;
  const vals = rows.flatMap((r) => [(r.realized || {})[metric], (r.estimated || {})[metric]]).filter((v) => v !== undefined && v !== null);
  const lo = Math.min(...vals) - 0.02, hi = Math.max(...vals) + 0.02;
  const x = (i) => pad + (rows.length === 1 ? 0 : i / (rows.length - 1) * (W - pad - 8)), y = (v) => H - (v - lo) / (hi - lo || 1) * (H - 8);
  const box = svg("svg", { width: W, height: H + 20, role: "img", "aria-label": `${metric} per window, realized and estimated` });
  [["realized", "#2f6db5", ""], ["estimated", "#e07b39", "4 3"]].forEach(([k, c, dash]) => {
    const pts = rows.map((r, i) => [(r[k] || {})[metric], i]).filter(([v]) => v !== undefined && v !== null);
    box.append(svg("polyline", { points: pts.map(([v, i]) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" "), fill: "none", stroke: c, "stroke-width": 2, "stroke-dasharray": dash || "none" }, svg("title", {}, k)));
  });
  box.append(svg("text", { x: 0, y: 10 }, num(hi, 3)), svg("text", { x: 0, y: H }, num(lo, 3)),
    svg("text", { x: pad, y: H + 16 }, `${metric}: realized (solid), estimated (dashed)`));
  return box;
}
function drawRollback(m) {
  const box = $("rollback");
  const key = `${m.labels.stable}:${m.labels.previous}:${S.me.role}`;
  if (box.dataset.for === key) return;
  box.dataset.for = key;
  if (!can("approver") || !m.labels.previous) { box.replaceChildren(); return; }
  box.replaceChildren(el("div", { class: "card" }, el("h3", {}, "Roll back"),
    el("p", {}, `Moves stable from version ${m.labels.stable} back to ${m.labels.previous} (still loaded).`),
    el("label", { for: "rollback-reason" }, "Reason (kept in the audit log)"), el("br"),
    el("textarea", { id: "rollback-reason", rows: 2 }), el("br"),
    el("button", { type: "button", class: "danger", id: "rollback-button", onclick: async () => {
      const reason = $("rollback-reason").value.trim();
      if (!reason) { say("Give a reason: it is kept in the audit log."); $("rollback-reason").focus(); return; }
      try {
        const r = await api(`/v1/models/${encodeURIComponent(S.model)}/rollback`, { method: "POST", body: { reason } });
        say(`rolled back: stable is version ${r.version ?? (r.labels || {}).stable}`, true);
        box.dataset.for = "";
        await refresh();
      } catch (e) { say(`rollback refused: ${e.message}`); }
    } }, "Roll back")));
}

// ------------------------------------------------------------------ wiring
document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (ev) => { ev.preventDefault(); signIn($("token").value.trim()); });
  $("signout").addEventListener("click", () => signOut("Signed out."));
  $("model").addEventListener("change", () => {
    S.model = $("model").value; S.stream = (S.models.find((m) => m.model === S.model) || {}).stream;
    S.selected = null; S.candidate = null; fill("feature"); refresh();
  });
  $("scope").addEventListener("change", () => { S.selected = null; fill("feature"); refresh(); });
  $("kind").addEventListener("change", refresh);
  const tabs = ["windows", "runs", "candidates", "serving"];
  tabs.forEach((v, i) => {
    $(`tab-${v}`).addEventListener("click", () => show(v));
    $(`tab-${v}`).addEventListener("keydown", (ev) => {  // arrow keys move between tabs
      const j = ev.key === "ArrowRight" ? i + 1 : ev.key === "ArrowLeft" ? i - 1 : null;
      if (j !== null) { const t = tabs[(j + tabs.length) % tabs.length]; show(t); $(`tab-${t}`).focus(); }
    });
  });
  if (S.token) signIn(S.token); else $("token").focus();
});
