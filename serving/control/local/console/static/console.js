// Turnout console: polls /console/api/state every second and draws it; the buttons call the
// plane's admin API with the session's CSRF token. Every value from the plane is set as text
// (never as HTML), so a model or service name cannot inject markup.
"use strict";

const CSRF = document.querySelector('meta[name="turnout-csrf"]').content;
const POLL_MS = 1000;
const DISAGREEMENT_ROWS = 10;
const COLORS = { stable: "#2563eb", canary: "#ea580c" };
const CHARTS = [
  ["rps", "requests / s", (v) => v],
  ["error_rate", "error rate (%)", (v) => (v == null ? null : v * 100)],
  ["p50_ms", "p50 latency (ms)", (v) => v],
  ["p99_ms", "p99 latency (ms)", (v) => v],
];
const cards = new Map(); // service name -> {root, parts, charts}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

function fmt(value, digits = 1) {
  return value == null ? "–" : Number(value).toFixed(digits);
}

async function act(service, action) {
  const result = document.getElementById("action-result");
  if ((action === "promote" || action === "rollback") &&
      !window.confirm(`${action} ${service}?`)) return;
  result.className = "";
  result.textContent = `${action} ${service}…`;
  try {
    const response = await fetch(
      `/console/api/services/${encodeURIComponent(service)}/${action}`,
      { method: "POST", credentials: "same-origin", headers: { "X-Turnout-CSRF": CSRF } });
    const body = await response.json();
    result.textContent = response.ok ? body.event : `${action} refused: ${body.error}`;
    if (!response.ok) result.className = "error";
  } catch (err) {
    result.className = "error";
    result.textContent = `${action} failed: ${err}`;
  }
  poll();
}

function card(name) {
  if (cards.has(name)) return cards.get(name);
  const parts = {
    phase: el("span", { class: "phase", "data-testid": "phase" }),
    headline: el("p", { class: "headline", "data-testid": "headline" }),
    weights: el("div", { class: "weights", "data-testid": "weights" }),
    variants: el("tbody", { "data-testid": "variants" }),
    steps: el("div", { class: "steps", "data-testid": "steps" }),
    limits: el("p", { class: "limits", "data-testid": "limits" }),
    timeline: el("ol", { class: "timeline", "data-testid": "timeline" }),
    buttons: {},
  };
  const actions = el("span", { class: "actions" });
  for (const action of ["promote", "rollback", "pause", "resume"]) {
    const button = el("button", { class: action, "data-testid": action, type: "button",
                                  text: action[0].toUpperCase() + action.slice(1) });
    button.addEventListener("click", () => act(name, action));
    parts.buttons[action] = button;
    actions.append(button);
  }
  const head = el("tr");
  for (const title of ["role", "revision", "weight", "replicas ready / total (desired)",
                       "restarts", "req/s", "errors", "p50 ms", "p99 ms", "model"]) {
    head.append(el("th", { text: title }));
  }
  const chartBox = el("div", { class: "charts" });
  const root = el("section", { class: "card service", "data-service": name,
                               "data-testid": `service-${name}` },
    el("h2", {}, el("span", { text: name }), parts.phase, actions),
    parts.headline, parts.weights,
    el("table", {}, el("thead", {}, head), parts.variants),
    parts.steps, parts.limits, chartBox,
    el("h3", { text: "Rollout timeline (newest first)" }), parts.timeline);
  document.getElementById("services").append(root);
  const charts = {};
  const boxes = CHARTS.map(([key, title]) => {
    const box = el("div", { class: "chart", "data-testid": `chart-${key}` }, el("h3", { text: title }));
    chartBox.append(box);
    return box;
  });
  CHARTS.forEach(([key], i) => {  // once every box is laid out, so each knows its width
    charts[key] = new uPlot({
      width: Math.max(200, boxes[i].clientWidth), height: 150, legend: { live: false },
      scales: { x: { time: true }, y: { range: (u, lo, hi) => [0, Math.max(hi * 1.1, key === "error_rate" ? 1 : 0.001)] } },
      axes: [{}, { size: 55 }],
      series: [{}, { label: "stable", stroke: COLORS.stable, width: 2, spanGaps: false },
               { label: "canary", stroke: COLORS.canary, width: 2, spanGaps: false }],
    }, [[], [], []], boxes[i]);
  });
  new ResizeObserver(() => CHARTS.forEach(([key], i) =>
    charts[key].setSize({ width: Math.max(200, boxes[i].clientWidth), height: 150 }))).observe(chartBox);
  const entry = { root, parts, charts };
  cards.set(name, entry);
  return entry;
}

function drawWeights(parts, svc) {
  parts.weights.replaceChildren();
  for (const v of svc.variants) {
    if (v.weight <= 0) continue;
    const bar = el("div", { class: v.role, "data-testid": `weight-${v.role}`,
                            text: `${v.role} ${v.revision} ${v.weight}%` });
    bar.style.width = `${v.weight}%`; // CSSOM: the CSP allows no style attributes
    parts.weights.append(bar);
  }
}

function drawVariants(parts, svc) {
  parts.variants.replaceChildren();
  for (const v of svc.variants) {
    const r = v.replicas;
    const desired = r.desired == null ? "" : ` (${r.desired})`;
    const row = el("tr", { "data-testid": `variant-${v.role}` },
      el("td", { class: `role-${v.role}`, text: v.role }),
      el("td", { text: v.revision }),
      el("td", { class: "num", "data-testid": "weight", text: `${v.weight}%` }),
      el("td", { class: "num", "data-testid": "replicas", text: `${r.ready} / ${r.total}${desired}` }),
      el("td", { class: "num", text: String(r.restarts) }),
      el("td", { class: "num", text: fmt(v.rps) }),
      el("td", { class: "num", text: `${fmt(v.error_rate * 100, 2)}%` }),
      el("td", { class: "num", text: fmt(v.p50_ms) }),
      el("td", { class: "num", text: fmt(v.p99_ms) }),
      el("td", { text: v.registryVersion || v.storageUri }));
    parts.variants.append(row);
    if (v.transformer) {
      const t = v.transformer;
      parts.variants.append(el("tr", {}, el("td"), el("td", { text: t.name }), el("td"),
        el("td", { class: "num", text: `${t.ready} / ${t.total}` }),
        el("td", { class: "num", text: String(t.restarts) }),
        el("td", { colspan: "5", text: `transformer ${t.modelClass} → ${t.protocol}` })));
    }
  }
}

function drawRollout(parts, svc) {
  parts.steps.replaceChildren();
  parts.limits.textContent = "";
  const rollout = svc.rollout;
  if (!rollout) return;
  parts.steps.append(el("span", { text: "steps:" }));
  const live = svc.canary && svc.phase !== "rolled-back";
  for (const percent of rollout.steps) {
    const now = live && percent === svc.canary_percent;
    const done = live && percent < svc.canary_percent;
    parts.steps.append(el("span", { class: `step${now ? " now" : done ? " done" : ""}`, text: `${percent}%` }));
  }
  if (svc.phase === "progressing") {
    const left = Math.max(0, rollout.interval_s - (Date.now() / 1000 - rollout.step_started));
    parts.steps.append(el("span", { "data-testid": "next-analysis",
                                    text: `next analysis in ${left.toFixed(0)} s` +
                                          (rollout.holds ? `, ${rollout.holds} held` : "") }));
  } else if (svc.phase === "canary" && svc.canary) {
    parts.steps.append(el("span", { text: "analysis paused" }));
  }
  const a = rollout.analysis;
  const limits = [`interval ${rollout.interval_s} s`, `min ${a.minRequests} requests`];
  if (a.maxErrorRate != null) limits.push(`error rate ≤ ${a.maxErrorRate}`);
  if (a.maxErrorRateIncrease != null) limits.push(`≤ stable + ${a.maxErrorRateIncrease}`);
  if (a.maxP99Seconds != null) limits.push(`p99 ≤ ${a.maxP99Seconds * 1000} ms`);
  if (a.maxP99Ratio != null) limits.push(`p99 ≤ ${a.maxP99Ratio}× stable`);
  if (a.minAgreement != null) limits.push(`agreement ≥ ${a.minAgreement}`);
  parts.limits.textContent = `analysis: ${limits.join(", ")}`;
}

function drawTimeline(parts, svc) {
  parts.timeline.replaceChildren();
  for (const e of [...svc.timeline].reverse()) {
    parts.timeline.append(el("li", { "data-kind": e.kind },
      el("time", { text: clock(e.at) }), el("span", { class: `kind ${e.kind}`, text: e.kind }),
      el("span", { class: "message", text: e.message })));
  }
}

function drawCharts(charts, series) {
  const roles = series || {};
  const times = [...new Set(Object.values(roles).flatMap((s) => s.t))].sort((x, y) => x - y);
  for (const [key, , scale] of CHARTS) {
    const lines = ["stable", "canary"].map((role) => {
      const s = roles[role];
      if (!s) return times.map(() => null);
      const byT = new Map(s.t.map((t, i) => [t, scale(s[key][i])]));
      return times.map((t) => (byT.has(t) ? byT.get(t) : null));
    });
    charts[key].setData([times, ...lines]);
  }
}

function drawButtons(parts, svc) {
  const live = svc.canary != null && svc.phase !== "rolled-back";
  parts.buttons.promote.disabled = !live;
  parts.buttons.rollback.disabled = !live;
  parts.buttons.pause.disabled = svc.phase !== "progressing";
  parts.buttons.resume.disabled = !(svc.phase === "canary" && svc.canary && svc.rollout);
}

function headline(svc) {
  let line = `stable ${svc.stable}`;
  if (svc.canary) {
    line += svc.phase === "rolled-back" ? `, canary ${svc.canary} rolled back`
                                        : `, canary ${svc.canary} at ${svc.canary_percent}%`;
    if (svc.steps && svc.steps.includes(svc.canary_percent) && svc.phase !== "rolled-back") {
      line += ` (step ${svc.steps.indexOf(svc.canary_percent) + 1} of ${svc.steps.length})`;
    }
  }
  return line;
}

function answerText(side) {
  // "predict = [1]  (stable iris-00001)": each output's kept values, then who answered
  if (!side) return "";
  const outputs = Object.entries(side.outputs || {}).map(([name, o]) =>
    `${name} = ${JSON.stringify(o.data)}${o.truncated ? "…" : ""}`);
  return `${outputs.join(", ")}  (${side.variant} ${side.revision || ""})`;
}

function differenceText(c = {}) {
  const parts = [];
  if (c.class_total) parts.push(`${c.class_total - c.class_agreed}/${c.class_total} classes differ`);
  if (c.numeric_total) {
    parts.push(`${c.numeric_disagreed}/${c.numeric_total} values differ, mean |Δ| ` +
               fmt(c.mean_abs_difference, 3));
  }
  return parts.join("; ") || "outputs differ";
}

function drawDisagreements(doc) {
  const body = document.getElementById("disagreements");
  const note = document.getElementById("disagreements-note");
  const d = doc.disagreements;
  body.replaceChildren();
  note.textContent = d.note || (d.records.length ? "" :
    "none recorded: a mirrored canary that answers like stable leaves nothing here");
  for (const r of d.records.slice(0, DISAGREEMENT_ROWS)) {
    body.append(el("tr", { "data-testid": "disagreement" },
      el("td", { text: new Date(r.time).toLocaleTimeString([], { hour12: false }) }),
      el("td", { text: r.service }),
      el("td", { text: r.request_id || "" }),
      el("td", {}, el("code", { text: answerText(r.primary) })),
      el("td", {}, el("code", { text: answerText(r.shadow) })),
      el("td", { text: differenceText(r.comparison) })));
  }
}

function draw(doc) {
  document.getElementById("router").textContent = `router http :${doc.http_port}  grpc :${doc.grpc_port}`;
  document.getElementById("updated").textContent = `updated ${clock(doc.now)}`;
  const seen = new Set();
  for (const svc of doc.services) {
    seen.add(svc.name);
    const { parts, charts } = card(svc.name);
    parts.phase.textContent = svc.phase;
    parts.phase.className = `phase ${svc.phase}`;
    parts.headline.textContent = headline(svc);
    drawWeights(parts, svc);
    drawVariants(parts, svc);
    drawRollout(parts, svc);
    drawTimeline(parts, svc);
    drawButtons(parts, svc);
    drawCharts(charts, doc.series[svc.name]);
  }
  for (const [name, entry] of cards) {
    if (!seen.has(name)) { entry.root.remove(); cards.delete(name); }
  }
  document.getElementById("graphs-section").hidden = !doc.graphs.length;
  document.getElementById("graphs").textContent = doc.graphs.join(", ");
  drawDisagreements(doc);
}

let timer = null;
async function poll() {
  clearTimeout(timer);
  try {
    const response = await fetch("/console/api/state", { credentials: "same-origin" });
    if (response.status === 401) {
      document.getElementById("updated").textContent = "logged out: run turnout console again";
      return;
    }
    draw(await response.json());
  } catch (err) {
    document.getElementById("updated").textContent = `plane not answering (${err})`;
  }
  timer = setTimeout(poll, POLL_MS);
}

poll();
