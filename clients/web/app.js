/* app.js — chord's web dashboard (docs/dashboard.md): plain JavaScript, no build step, no
 * framework; Chart.js (Debian's libjs-chart.js, served by chordd at /ui/chart.min.js) draws the
 * curves. Every server string reaches the page through textContent (the h() helper), never
 * innerHTML.
 *
 * Pages (the URL's hash): #/jobs (table + create form), #/jobs/ID (live curves over the job's
 * event stream, samples of a step, checkpoints, config, cancel), #/datasets (list + upload),
 * #/models (list + register), #/playground (rollouts with per-token log-probs).
 *
 * Auth: with tokens on, a 401 opens the token dialog; the token (sessionStorage) goes in an
 * `Authorization: Bearer` header on every request — the event stream too, which is read with
 * fetch() rather than EventSource (which cannot send headers), so no token ever sits in a URL. */
"use strict";

/* ---- small helpers ------------------------------------------------------------------------ */

const $ = (sel, root = document) => root.querySelector(sel);

/* h("div", {class: "x", onclick: f}, child, "text", [more]) — children are nodes or text. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "style") el.style.cssText = v; /* CSSOM: allowed by the page's CSP, a style attribute is not */
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  const add = (c) => {
    if (c === null || c === undefined || c === false) return;
    if (Array.isArray(c)) c.forEach(add);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  };
  children.forEach(add);
  return el;
}

/* Replaces el's children (nodes or text; null and false are skipped, as in h()). */
function fill(el, ...kids) {
  el.replaceChildren(...kids.flat().filter((k) => k !== null && k !== undefined && k !== false));
  return el;
}

function fmt(v, digits = 4) {
  if (v === null || v === undefined) return "—";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return v.toLocaleString("en-US");
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
  return String(Number(v.toPrecision(digits)));
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(n < 10 ? 2 : 1) : n) + " " + u[i];
}

function fmtDuration(s) {
  if (s === null || s === undefined || !isFinite(s) || s < 0) return "—";
  s = Math.round(s);
  if (s < 60) return s + "s";
  const m = Math.floor(s / 60), hr = Math.floor(m / 60);
  if (hr < 1) return m + "m " + String(s % 60).padStart(2, "0") + "s";
  if (hr < 48) return hr + "h " + String(m % 60).padStart(2, "0") + "m";
  return Math.floor(hr / 24) + "d " + (hr % 24) + "h";
}

function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  const ago = (Date.now() - d.getTime()) / 1000;
  if (ago >= 0 && ago < 86400) return fmtDuration(ago) + " ago";
  return d.toLocaleString();
}

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

function badge(text, cls) { return h("span", {class: "badge " + (cls || text)}, text); }

function progressBar(job) {
  const done = Math.max(0, job.current_step), total = job.steps || 1;
  const pct = Math.min(100, (100 * done) / total);
  return h("div", {},
    h("div", {class: "progress " + job.state, role: "progressbar", "aria-valuenow": done,
              "aria-valuemax": total}, h("span", {style: `width:${pct.toFixed(1)}%`})),
    h("div", {class: "progress-label"}, `${fmt(done)} / ${fmt(total)} steps`));
}

/* Remaining time from the job's pace since it started (steps stored so far). */
function jobEta(job, secondsPerStep) {
  if (job.state === "queued") return "waiting";
  if (TERMINAL.has(job.state)) return "—";
  const done = Math.max(0, job.current_step);
  let per = secondsPerStep;
  if (!per && job.started_at && done > 0) per = (Date.now() - Date.parse(job.started_at)) / 1000 / done;
  if (!per) return "…";
  return fmtDuration(per * (job.steps - done));
}

function modelLabel(cfg) {
  const m = (cfg && cfg.model) || {};
  if (m.path) return m.path;
  if (m.init && m.init.config) {
    const c = m.init.config;
    return `${c.model_type || "model"} init (${c.hidden_size}×${c.num_hidden_layers})`;
  }
  return "—";
}

let toastTimer = null;
function toast(msg, bad) {
  const t = $("#toast");
  t.textContent = msg;
  t.className = "toast" + (bad ? " bad" : "");
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, bad ? 7000 : 3500);
}

/* ---- the API ------------------------------------------------------------------------------ */

const auth = {
  get token() { return sessionStorage.getItem("chord.token") || ""; },
  set token(v) { if (v) sessionStorage.setItem("chord.token", v); else sessionStorage.removeItem("chord.token"); },
  headers(extra) {
    const hd = Object.assign({}, extra || {});
    if (this.token) hd.Authorization = "Bearer " + this.token;
    return hd;
  },
};

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function errorOf(res) {
  let code = "http_" + res.status, msg = res.statusText || "request failed";
  try {
    const doc = await res.json();
    if (doc && doc.error) { code = doc.error.code; msg = doc.error.message; }
  } catch (e) { /* not JSON */ }
  if (res.status === 401) askToken(msg);
  return new ApiError(res.status, code, msg);
}

async function api(method, path, body, signal) {
  const opt = {method, headers: auth.headers(), signal};
  if (body !== undefined) {
    opt.headers["Content-Type"] = "application/json";
    opt.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  const res = await fetch(path, opt);
  if (!res.ok) throw await errorOf(res);
  return res.json();
}

/* Reads a job's Server-Sent Events with fetch (so the Authorization header goes along) and calls
 * on(event, data, id) per event. Resolves when the stream ends; rejects on an HTTP error. */
async function readEvents(path, on, signal) {
  const res = await fetch(path, {headers: auth.headers({Accept: "text/event-stream"}), signal});
  if (!res.ok) throw await errorOf(res);
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buf += dec.decode(value, {stream: true}).replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let event = "message", id = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line[0] === ":") continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event = val;
        else if (field === "data") data.push(val);
        else if (field === "id") id = val;
      }
      if (data.length) on(event, JSON.parse(data.join("\n")), id);
    }
  }
}

/* ---- the token dialog --------------------------------------------------------------------- */

let tokenWanted = false;
function askToken(reason) {
  $("#token-button").hidden = false;
  const dlg = $("#token-dialog");
  const err = $("#token-error");
  err.hidden = !auth.token;
  err.textContent = auth.token ? reason || "that token was refused" : "";
  if (!dlg.open) { tokenWanted = true; dlg.showModal(); $("#token-input").focus(); }
}

function setupToken() {
  $("#token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    auth.token = $("#token-input").value.trim();
    $("#token-input").value = "";
    $("#token-dialog").close();
    tokenWanted = false;
    route();
  });
  $("#token-button").addEventListener("click", () => {
    auth.token = "";
    askToken();
  });
  if (auth.token) $("#token-button").hidden = false;
}

/* ---- the frame: navigation, health, page lifetime ------------------------------------------ */

/* What the current page started (timers, streams, charts): ended when the page changes. */
let page = null;
function newPage() {
  if (page) {
    page.controller.abort();
    page.timers.forEach(clearInterval);
    page.charts.forEach((c) => c.destroy());
  }
  page = {controller: new AbortController(), timers: [], charts: []};
  return page;
}

function every(ms, fn) { page.timers.push(setInterval(fn, ms)); }

async function health() {
  const el = $("#server-status");
  try {
    const res = await fetch("/healthz");
    const doc = await res.json();
    el.className = "server " + (doc.status === "ok" ? "ok" : "down");
    const running = (doc.jobs && doc.jobs.running) || 0;
    el.textContent = `chordd ${doc.version} · ${(doc.devices || []).join(", ")} · ${running} running`;
  } catch (e) {
    el.className = "server down";
    el.textContent = "server unreachable";
  }
}

function mount(...nodes) {
  const main = $("#main");
  fill(main, ...nodes);
  return main;
}

function showError(where, e) {
  fill(where, h("div", {class: "error"}, e.message || String(e)));
}

function route() {
  const hash = location.hash || "#/jobs";
  const [path, query] = hash.slice(1).split("?");
  const parts = path.split("/").filter(Boolean);
  const params = new URLSearchParams(query || "");
  newPage();
  $("#toast").hidden = true;
  const name = parts[0] || "jobs";
  document.querySelectorAll("#nav a").forEach((a) => {
    a.classList.toggle("active", a.dataset.page === name);
    if (a.dataset.page === name) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  });
  const pages = {jobs: parts[1] ? () => jobPage(decodeURIComponent(parts[1]), params) : jobsPage,
                 datasets: datasetsPage, models: modelsPage, playground: () => playgroundPage(params)};
  (pages[name] || jobsPage)();
}

/* ---- jobs ---------------------------------------------------------------------------------- */

function jobsPage() {
  document.title = "Jobs · chord";
  const tableBox = h("div", {class: "card flush", id: "jobs-table"}, h("div", {class: "empty"}, "Loading…"));
  const formBox = h("div", {id: "job-form-box"});
  const newBtn = h("button", {class: "primary", id: "new-job", onclick: () => {
    if (formBox.firstChild) fill(formBox); else formBox.append(jobForm());
  }}, "New job");
  const summary = h("div", {class: "summary", id: "jobs-summary"});
  mount(h("div", {class: "page-head"}, h("h1", {}, "Jobs"),
          h("span", {class: "sub grow", id: "jobs-count"}), newBtn),
        formBox, summary, tableBox);
  const load = async () => {
    try {
      const doc = await api("GET", "/v1/jobs?limit=200", undefined, page.controller.signal);
      $("#jobs-count").textContent = `${doc.total} job${doc.total === 1 ? "" : "s"}`;
      const count = (st) => doc.items.filter((j) => j.state === st).length;
      fill(summary, ["running", "queued", "succeeded", "failed", "cancelled"].map((st) =>
        h("div", {class: "tile " + st}, h("div", {class: "v"}, String(count(st))), h("div", {class: "k"}, st))));
      fill(tableBox, jobsTable(doc.items));
      health();
    } catch (e) { if (e.name !== "AbortError") showError(tableBox, e); }
  };
  load();
  every(2000, load);
}

function jobsTable(items) {
  if (!items.length)
    return h("div", {class: "empty"}, "No jobs yet. ", h("a", {href: "#/datasets"}, "Upload a dataset"),
             " of prompts (and one of expert demonstrations for CHORD), ", h("a", {href: "#/models"}, "register a model"),
             ", then start one with New job.");
  return h("table", {},
    h("thead", {}, h("tr", {}, ["Job", "State", "Progress", "ETA", "Algorithm", "Model", "Created"]
      .map((t) => h("th", {}, t)))),
    h("tbody", {}, items.map((j) => h("tr", {class: "link", "data-job": j.id,
                                             onclick: () => { location.hash = "#/jobs/" + j.id; }},
      h("td", {}, h("a", {href: "#/jobs/" + j.id}, j.name || j.id), h("div", {class: "sub mono"}, j.id)),
      h("td", {}, badge(j.state), j.cancel_requested && !TERMINAL.has(j.state) ? h("div", {class: "sub"}, "cancelling") : null,
        j.error ? h("div", {class: "sub clip", title: j.error}, j.error) : null),
      h("td", {style: "min-width:170px"}, progressBar(j)),
      h("td", {class: "eta"}, jobEta(j)),
      h("td", {}, (j.config && j.config.algorithm) || "—"),
      h("td", {class: "mono", title: modelLabel(j.config)}, modelLabel(j.config).split("/").slice(-2).join("/")),
      h("td", {class: "sub"}, fmtTime(j.created_at))))));
}

function jobForm() {
  const err = h("div");
  const sel = (id, label, opts) => h("label", {class: "field"}, label, h("select", {id}, opts));
  const num = (id, label, value, step) => h("label", {class: "field"}, label,
    h("input", {id, type: "number", value, step: step || "1", min: "0"}));
  const form = h("form", {class: "card stack", id: "job-form"},
    h("h2", {}, "New job"),
    h("div", {class: "form-grid"},
      h("label", {class: "field"}, "Name", h("input", {id: "jf-name", value: "my-run"})),
      sel("jf-algorithm", "Algorithm", ["chord", "grpo", "sft", "sft_then_grpo", "chord_mu", "chord_phi"]
        .map((a) => h("option", {value: a}, a))),
      sel("jf-model", "Model", [h("option", {value: ""}, "(loading)")]),
      sel("jf-prompts", "Prompts dataset", [h("option", {value: ""}, "(none)")]),
      sel("jf-expert", "Expert dataset", [h("option", {value: ""}, "(none)")]),
      num("jf-steps", "Steps", 200),
      num("jf-lr", "Learning rate", 1e-6, "any"),
      num("jf-group", "Group size", 8),
      num("jf-pps", "Prompts per step", 8),
      num("jf-tokens", "Max new tokens", 512)),
    h("label", {class: "field"}, "Job document (docs/job.md) — edit freely; this is what is sent",
      h("textarea", {id: "jf-json", rows: 14, spellcheck: "false"})),
    err,
    h("div", {class: "row end"},
      h("button", {type: "button", onclick: () => form.remove()}, "Close"),
      h("button", {type: "submit", class: "primary", id: "jf-submit"}, "Create job")));
  const val = (id) => $("#" + id, form).value;
  const regenerate = () => {
    const doc = {name: val("jf-name"), algorithm: val("jf-algorithm"), model: {path: val("jf-model")},
                 data: {}, steps: Number(val("jf-steps")), optimizer: {lr: Number(val("jf-lr"))},
                 grpo: {group_size: Number(val("jf-group")), prompts_per_step: Number(val("jf-pps"))},
                 sampling: {max_new_tokens: Number(val("jf-tokens"))}};
    if (val("jf-prompts")) doc.data.prompts = val("jf-prompts");
    if (val("jf-expert")) doc.data.expert = val("jf-expert");
    $("#jf-json", form).value = JSON.stringify(doc, null, 2);
  };
  form.addEventListener("input", (e) => { if (e.target.id !== "jf-json") regenerate(); });
  form.addEventListener("change", (e) => { if (e.target.id !== "jf-json") regenerate(); });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    fill(err);
    const text = $("#jf-json", form).value;
    try { JSON.parse(text); } catch (x) { showError(err, new Error("job document: " + x.message)); return; }
    try {
      const job = await api("POST", "/v1/jobs", text);
      toast(`created ${job.id}`);
      location.hash = "#/jobs/" + job.id;
    } catch (x) { showError(err, x); }
  });
  (async () => {
    try {
      const [models, datasets] = await Promise.all([api("GET", "/v1/models?limit=1000"),
                                                    api("GET", "/v1/datasets?limit=1000")]);
      const opts = (items, label) => items.map((it) => h("option", {value: it.id}, `${label(it)} (${it.id})`));
      $("#jf-model", form).replaceChildren(...(models.items.length ? opts(models.items, (m) => m.name)
        : [h("option", {value: ""}, "(no models registered)")]));
      const ds = (kinds) => datasets.items.filter((d) => kinds.includes(d.kind));
      $("#jf-prompts", form).append(...opts(ds(["prompts", "eval"]), (d) => d.name));
      $("#jf-expert", form).append(...opts(ds(["expert"]), (d) => d.name));
      const p = ds(["prompts", "eval"]), x = ds(["expert"]);
      if (p.length) $("#jf-prompts", form).value = p[0].id;
      if (x.length) $("#jf-expert", form).value = x[0].id;
    } catch (x) { showError(err, x); }
    regenerate();
  })();
  return form;
}

/* The curves of a job page: each chart one or more metrics, by the trainer's names. */
const CHARTS = [ /* y: the axis's usual range, widened by the data (Chart.js suggestedMin/Max) */
  {title: "Reward & accuracy", series: [["reward_mean", "reward"], ["accuracy", "accuracy"]], y: [0, 1]},
  {title: "μ (SFT weight)", series: [["mu", "μ"]], y: [0, 1]},
  {title: "Policy & SFT loss", series: [["pg_loss", "pg loss"], ["sft_loss", "SFT loss"]]},
  {title: "Entropy", series: [["entropy", "entropy"]], y: [0, 1]},
  {title: "Grad norm", series: [["grad_norm", "grad norm"]], y: [0]},
  {title: "Response length", series: [["response_len_mean", "tokens"]], y: [0]},
  {title: "Tokens / s", series: [["tokens_per_s/rollout", "rollout"], ["tokens_per_s/train", "train"]], y: [0]},
  {title: "Eval accuracy", series: [["eval/accuracy", "accuracy"], ["eval/pass_at_k", "pass@k"]], y: [0, 1]},
];
const COLORS = ["#4f46e5", "#f59e0b", "#10b981", "#ef4444"];

/* TensorBoard's smoothing: an exponential moving average, debiased so the first points are not
 * pulled towards 0. weight 0 = the raw points. */
function smoothed(points, weight) {
  if (!weight) return points;
  let ema = 0, norm = 0;
  return points.map((p) => {
    ema = ema * weight + (1 - weight) * p.y;
    norm = norm * weight + (1 - weight);
    return {x: p.x, y: ema / norm};
  });
}

function makeChart(spec, onPick) {
  const canvas = h("canvas");
  /* the points, kept here: with decimation on, a dataset's .data is the thinned copy */
  const arrays = spec.series.map(() => []);
  const box = h("div", {class: "chart empty-chart", "data-metric": spec.series[0][0], "data-points": "0"},
    h("div", {class: "title"}, h("span", {}, spec.title), h("span", {class: "last"})),
    h("div", {class: "box"}, canvas));
  const chart = new Chart(canvas, {
    type: "line",
    data: {datasets: spec.series.map(([, label], i) => ({
      label, data: arrays[i], borderColor: COLORS[i], backgroundColor: COLORS[i] + "22", borderWidth: 1.8,
      pointRadius: 0, pointHitRadius: 6, tension: 0.2, spanGaps: true}))},
    options: {
      animation: false, maintainAspectRatio: false, parsing: false, normalized: true,
      interaction: {mode: "nearest", axis: "x", intersect: false},
      scales: {x: {type: "linear", ticks: {precision: 0, maxTicksLimit: 6, font: {size: 10}},
                   grid: {display: false}},
               y: {suggestedMin: (spec.y || [])[0], suggestedMax: (spec.y || [])[1],
                   ticks: {maxTicksLimit: 5, font: {size: 10}}, grid: {color: "#eef0f5"}}},
      plugins: {decimation: {enabled: true, algorithm: "lttb", threshold: 600, samples: 300}, /* long runs stay light */
                legend: {display: spec.series.length > 1, position: "bottom",
                         labels: {boxWidth: 10, boxHeight: 2, font: {size: 10.5}}},
                tooltip: {callbacks: {title: (it) => "step " + it[0].parsed.x}}},
      onClick: (evt, els) => { if (els.length) onPick(chart.data.datasets[els[0].datasetIndex].data[els[0].index].x); },
    },
  });
  page.charts.push(chart);
  return {box, chart, spec, arrays};
}

function jobPage(id, params) {
  document.title = id + " · chord";
  let job = null, lastStep = 0, stepTimes = [];
  const head = h("div", {class: "page-head"});
  const stats = h("div", {class: "card", id: "job-stats"}, "Loading…");
  const samplesBox = h("div", {id: "samples"});
  const ckptBox = h("div", {class: "card flush", id: "checkpoints"}, h("h2", {}, "Checkpoints"));
  const configBox = h("div", {class: "card", id: "config"}, h("h2", {}, "Resolved config"));
  const charts = CHARTS.map((s) => makeChart(s, (step) => openSamples(step)));
  let smoothing = Number(localStorage.getItem("chord.smoothing") || 0);
  const smoothLabel = h("span", {class: "mono"}, smoothing.toFixed(2));
  const smoothInput = h("input", {type: "range", id: "smoothing", min: "0", max: "0.99", step: "0.01",
                                  value: String(smoothing)});
  smoothInput.addEventListener("input", () => {
    smoothing = Number(smoothInput.value);
    smoothLabel.textContent = smoothing.toFixed(2);
    localStorage.setItem("chord.smoothing", String(smoothing));
    redraw();
  });
  mount(head, stats,
        h("div", {class: "row curves-head"}, h("h2", {style: "margin:0"}, "Curves"),
          h("span", {class: "sub grow"}, "live from the job's event stream; click a point for that step's samples"),
          h("label", {class: "row sub"}, "Smoothing", smoothInput, smoothLabel)),
        h("div", {class: "charts", id: "charts"}, charts.map((c) => c.box)),
        h("div", {style: "height:18px"}), samplesBox, h("div", {class: "grid2"}, ckptBox, configBox));

  let dirty = false;
  const redraw = () => {
    dirty = false;
    for (const c of charts) {
      const n = Math.max(...c.arrays.map((a) => a.length)); /* steps drawn */
      c.box.dataset.points = String(n);
      c.box.classList.toggle("empty-chart", n === 0);
      c.chart.data.datasets.forEach((ds, i) => { ds.data = smoothed(c.arrays[i], smoothing); });
      const a0 = c.arrays.find((a) => a.length);
      $(".last", c.box).textContent = a0 ? fmt(a0[a0.length - 1].y) : "";
      c.chart.update("none");
    }
  };
  const addStep = (st) => {
    if (st.step <= lastStep) return;
    lastStep = st.step;
    for (const c of charts)
      c.spec.series.forEach(([name], i) => {
        const v = st.metrics[name];
        if (v !== undefined && v !== null) c.arrays[i].push({x: st.step, y: v});
      });
    if (st.metrics["time/step"]) stepTimes.push(st.metrics["time/step"]);
    if (job && st.step > job.current_step) job.current_step = st.step;
    if (!dirty) { dirty = true; requestAnimationFrame(() => { redraw(); renderStats(); }); }
  };

  const cancelBtn = h("button", {class: "danger", id: "cancel-job"}, "Cancel job");
  let armed = null;
  cancelBtn.addEventListener("click", async () => {
    if (!armed) { /* two clicks: no browser confirm() box */
      cancelBtn.textContent = "Click again to cancel";
      armed = setTimeout(() => { armed = null; cancelBtn.textContent = "Cancel job"; }, 4000);
      return;
    }
    clearTimeout(armed);
    armed = null;
    cancelBtn.disabled = true;
    try {
      const after = await api("POST", `/v1/jobs/${id}/cancel`);
      /* the stream may have brought the final state first: never go back from it */
      if (!TERMINAL.has(job.state)) job = after;
      toast(after.state === "cancelled" ? "cancelled" : "cancel requested: it stops after this step");
      renderHead(); renderStats();
    } catch (e) { toast(e.message, true); cancelBtn.disabled = false; }
  });

  const renderHead = () => {
    fill(head,
      h("a", {href: "#/jobs", class: "sub"}, "← Jobs"),
      h("h1", {}, job.name || job.id), badge(job.state),
      job.cancel_requested && !TERMINAL.has(job.state) ? badge("cancelling", "queued") : null,
      h("span", {class: "sub mono grow"}, job.id),
      TERMINAL.has(job.state) || job.cancel_requested ? null : cancelBtn);
  };
  const renderStats = () => {
    if (!job) return;
    const recent = stepTimes.slice(-20);
    const per = recent.length ? recent.reduce((a, b) => a + b, 0) / recent.length : 0;
    const elapsed = job.started_at ? ((job.finished_at ? Date.parse(job.finished_at) : Date.now()) -
                                      Date.parse(job.started_at)) / 1000 : null;
    const stat = (k, v, cls) => h("div", {class: "stat " + (cls || "")}, h("div", {class: "v"}, v), h("div", {class: "k"}, k));
    fill(stats,
      h("div", {class: "stats"},
        h("div", {style: "flex:1;min-width:260px"}, progressBar(job)),
        stat("step", `${fmt(Math.max(0, job.current_step))}`, "step-now"),
        stat("ETA", jobEta(job, per)),
        stat("elapsed", fmtDuration(elapsed)),
        stat("algorithm", (job.config && job.config.algorithm) || "—"),
        stat("model", modelLabel(job.config)),
        stat("device", job.device || "—")),
      job.error ? h("div", {class: "error", style: "margin-top:12px"}, job.error) : null);
  };

  const loadCheckpoints = async () => {
    try {
      const doc = await api("GET", `/v1/jobs/${id}/checkpoints`, undefined, page.controller.signal);
      fill(ckptBox, h("div", {class: "row", style: "padding:16px 20px 12px"}, h("h2", {style: "margin:0"}, "Checkpoints"),
        h("span", {class: "grow"}),
        doc.items.length ? h("a", {href: `#/playground?job=${id}`, id: "to-playground"}, "Sample in the playground →") : null),
        doc.items.length ? h("table", {},
        h("thead", {}, h("tr", {}, h("th", {}, "Step"), h("th", {}, "Files"), h("th", {class: "num"}, "Size"), h("th", {}, "Created"))),
        h("tbody", {}, doc.items.slice().reverse().map((c) => h("tr", {},
          h("td", {}, h("b", {}, String(c.step)), h("div", {class: "sub mono", title: "sha256 of SHA256SUMS"}, c.sha256.slice(0, 12))),
          h("td", {}, c.files.map((f) => h("div", {}, downloadLink(`/v1/jobs/${id}/checkpoints/${c.step}/files/${f.path.split("/").map(encodeURIComponent).join("/")}`, f.path),
                                              h("span", {class: "sub"}, " " + fmtBytes(f.bytes))))),
          h("td", {class: "num"}, fmtBytes(c.bytes)),
          h("td", {class: "sub"}, fmtTime(c.created_at))))))
        : h("div", {class: "empty"}, "No checkpoint yet."));
    } catch (e) { if (e.name !== "AbortError") showError(ckptBox, e); }
  };

  /* the samples of one step */
  let samplesStep = null;
  const openSamples = async (step) => {
    samplesStep = step;
    const input = h("input", {type: "number", id: "samples-step", min: "1", value: step, style: "width:90px"});
    const go = (s) => { if (s >= 1) openSamples(s); };
    const body = h("div", {}, h("div", {class: "empty"}, "Loading…"));
    fill(samplesBox, h("div", {class: "card flush", id: "samples-card"},
      h("div", {class: "row", style: "padding:14px 20px"}, h("h2", {style: "margin:0"}, "Samples of step"),
        input, h("button", {onclick: () => go(Number(input.value))}, "Show"),
        h("button", {onclick: () => go(step - 1)}, "‹ prev"), h("button", {onclick: () => go(step + 1)}, "next ›"),
        h("button", {onclick: () => go(lastStep)}, "latest"),
        h("span", {class: "grow"}), h("button", {onclick: () => fill(samplesBox, samplesButton())}, "Hide")),
      body));
    input.addEventListener("keydown", (e) => { if (e.key === "Enter") go(Number(input.value)); });
    try {
      const doc = await api("GET", `/v1/jobs/${id}/samples?step=${step}&limit=200`);
      if (samplesStep !== step) return;
      fill(body, doc.items.length ? h("table", {id: "samples-table"},
        h("thead", {}, h("tr", {}, ["#", "Kind", "Prompt", "Completion", "Answer", "Reward", "Reason"]
          .map((t, i) => h("th", {class: i === 5 ? "num" : ""}, t)))),
        h("tbody", {}, doc.items.map((s) => h("tr", {class: "sample"},
          h("td", {class: "sub"}, String(s.index)),
          h("td", {}, s.kind ? badge(s.kind, "kind") : "—"),
          h("td", {style: "width:28%"}, h("div", {class: "sample-text"}, s.prompt ?? "")),
          h("td", {style: "width:34%"}, h("div", {class: "sample-text"}, s.completion ?? "")),
          h("td", {class: "mono"}, s.answer ?? "—"),
          h("td", {class: "num"}, fmt(s.reward)),
          h("td", {}, s.reason ? badge(s.reason) : "—")))))
        : h("div", {class: "empty"}, `No samples stored for step ${step}.`));
    } catch (e) { showError(body, e); }
  };
  const samplesButton = () => h("div", {class: "card row"}, h("h2", {style: "margin:0"}, "Samples"),
    h("span", {class: "sub grow"}, "what the model wrote at a step, with its reward — or click a point on a curve"),
    h("button", {id: "open-samples", onclick: () => openSamples(Math.max(1, lastStep))}, "Show latest step"));
  samplesBox.append(samplesButton());

  const watch = async () => {
    const signal = page.controller.signal;
    while (!signal.aborted) {
      try {
        await readEvents(`/v1/jobs/${id}/events?since_step=${lastStep + 1}`, (event, data) => {
          if (event === "step") addStep(data);
          else if (event === "state") {
            job = data;
            renderHead(); renderStats(); health();
            if (TERMINAL.has(job.state)) loadCheckpoints();
          }
          else if (event === "checkpoint") loadCheckpoints();
        }, signal);
      } catch (e) {
        if (signal.aborted) return;
        if (e.status === 404 || e.status === 401 || e.status === 403) { showError(stats, e); return; }
      }
      if (job && TERMINAL.has(job.state)) return;
      await new Promise((r) => setTimeout(r, 2000)); /* the stream ended early: go on after the last step */
    }
  };

  (async () => {
    try {
      job = await api("GET", "/v1/jobs/" + id, undefined, page.controller.signal);
    } catch (e) { if (e.name !== "AbortError") showError(stats, e); return; }
    renderHead(); renderStats();
    configBox.append(h("pre", {class: "config"}, JSON.stringify(job.config, null, 2)));
    loadCheckpoints();
    if (params.get("step")) openSamples(Number(params.get("step")));
    watch();
    every(1000, renderStats);
  })();
}

/* A download: a plain link, or with a token a fetch into a blob (a link cannot send the header). */
function downloadLink(href, label) {
  const a = h("a", {href, download: label.split("/").pop(), class: "mono"}, label);
  a.addEventListener("click", async (e) => {
    if (!auth.token) return;
    e.preventDefault();
    try {
      const res = await fetch(href, {headers: auth.headers()});
      if (!res.ok) throw await errorOf(res);
      const url = URL.createObjectURL(await res.blob());
      const tmp = h("a", {href: url, download: label.split("/").pop()});
      document.body.append(tmp); tmp.click(); tmp.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (x) { toast(x.message, true); }
  });
  return a;
}

/* ---- datasets ------------------------------------------------------------------------------ */

function datasetsPage() {
  document.title = "Datasets · chord";
  const list = h("div", {class: "card flush", id: "datasets-table"}, h("div", {class: "empty"}, "Loading…"));
  const load = async () => {
    try {
      const doc = await api("GET", "/v1/datasets?limit=500", undefined, page.controller.signal);
      fill(list, doc.items.length ? h("table", {},
        h("thead", {}, h("tr", {}, ["Name", "Kind", "Lines", "Size", "SHA-256", "Uploaded"]
          .map((t, i) => h("th", {class: i === 2 || i === 3 ? "num" : ""}, t)))),
        h("tbody", {}, doc.items.map((d) => h("tr", {"data-dataset": d.id},
          h("td", {}, h("b", {}, d.name), h("div", {class: "sub mono"}, d.id)),
          h("td", {}, badge(d.kind, "kind")),
          h("td", {class: "num"}, fmt(d.lines)), h("td", {class: "num"}, fmtBytes(d.bytes)),
          h("td", {class: "mono sub", title: d.sha256}, d.sha256.slice(0, 16) + "…"),
          h("td", {class: "sub"}, fmtTime(d.created_at))))))
        : h("div", {class: "empty"}, "No datasets yet."));
    } catch (e) { if (e.name !== "AbortError") showError(list, e); }
  };
  mount(h("div", {class: "page-head"}, h("h1", {}, "Datasets"),
          h("span", {class: "sub"}, "JSON lines: prompts with answers, expert demonstrations, eval sets (docs/api.md, Records)")),
        uploadCard(load), list);
  load();
}

function uploadCard(onDone) {
  let file = null;
  const status = h("div", {id: "upload-status"});
  const fileLabel = h("div", {class: "sub", id: "upload-file"}, "");
  const input = h("input", {type: "file", id: "upload-input", accept: ".jsonl,.json,.ndjson,.txt"});
  const name = h("input", {id: "upload-name", placeholder: "name (default: the file's)"});
  const kind = h("select", {id: "upload-kind"}, ["prompts", "expert", "eval"].map((k) => h("option", {value: k}, k)));
  const button = h("button", {class: "primary", id: "upload-button", disabled: true}, "Upload");
  const choose = (f) => {
    file = f;
    fileLabel.textContent = f ? `${f.name} · ${fmtBytes(f.size)}` : "";
    button.disabled = !f;
    fill(status);
    if (f && !name.value) name.placeholder = f.name.replace(/\.[^.]*$/, "");
  };
  input.addEventListener("change", () => choose(input.files[0] || null));
  const zone = h("div", {class: "dropzone", id: "dropzone"},
    h("div", {}, h("b", {}, "Drop a .jsonl file here"), " or pick one: "), input, fileLabel);
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) choose(e.dataTransfer.files[0]);
  });
  button.addEventListener("click", () => {
    if (!file) return;
    const nm = name.value.trim() || file.name.replace(/\.[^.]*$/, "");
    const bar = h("span", {style: "width:0%"});
    const label = h("div", {class: "progress-label"}, "uploading…");
    fill(status, h("div", {class: "progress", id: "upload-progress"}, bar), label);
    button.disabled = true;
    const xhr = new XMLHttpRequest(); /* XHR, not fetch: it reports upload progress */
    xhr.open("POST", `/v1/datasets?kind=${encodeURIComponent(kind.value)}&name=${encodeURIComponent(nm)}`);
    for (const [k, v] of Object.entries(auth.headers({"Content-Type": "application/x-ndjson"}))) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => {
      if (!e.lengthComputable) return;
      bar.style.width = ((100 * e.loaded) / e.total).toFixed(1) + "%";
      label.textContent = `${fmtBytes(e.loaded)} of ${fmtBytes(e.total)} sent; the server checks every line`;
    };
    xhr.onerror = () => { fill(status, h("div", {class: "error"}, "the upload failed: connection lost")); button.disabled = false; };
    xhr.onload = async () => {
      button.disabled = false;
      let doc = null;
      try { doc = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
      if (xhr.status === 201) {
        choose(null); input.value = ""; name.value = "";
        fill(status, h("div", {class: "ok-note", id: "upload-ok"},
          `Stored ${doc.name} (${doc.id}): ${fmt(doc.lines)} lines, ${fmtBytes(doc.bytes)}.`));
        onDone();
        return;
      }
      const msg = doc && doc.error ? doc.error.message : `HTTP ${xhr.status}`;
      if (xhr.status === 401) askToken(msg);
      /* the server names the line ("line 7: ..."): show that line of the file too */
      const m = /^line (\d+)/.exec(msg);
      let excerpt = null;
      if (m) {
        const lines = (await file.text()).split("\n");
        const n = Number(m[1]);
        if (n >= 1 && n <= lines.length)
          excerpt = h("pre", {}, `${file.name}:${n}  ${lines[n - 1].slice(0, 400)}`);
      }
      fill(status, h("div", {class: "error", id: "upload-error"},
        h("span", {class: "where"}, `Refused (${doc && doc.error ? doc.error.code : xhr.status}): `), msg, excerpt));
    };
    xhr.send(file);
  });
  return h("div", {class: "card stack"}, h("h2", {}, "Upload"), zone,
    h("div", {class: "row"}, h("label", {class: "field"}, "Kind", kind), h("label", {class: "field", style: "flex:1"}, "Name", name),
      h("div", {style: "align-self:flex-end"}, button)),
    status);
}

/* ---- models -------------------------------------------------------------------------------- */

function modelsPage() {
  document.title = "Models · chord";
  const list = h("div", {class: "card flush", id: "models-table"}, h("div", {class: "empty"}, "Loading…"));
  const err = h("div", {id: "model-error"});
  const load = async () => {
    try {
      const doc = await api("GET", "/v1/models?limit=500", undefined, page.controller.signal);
      fill(list, doc.items.length ? h("table", {},
        h("thead", {}, h("tr", {}, ["Name", "Source", "Path", "Architecture", "Layers", "Hidden", "Vocab", "Registered"]
          .map((t) => h("th", {}, t)))),
        h("tbody", {}, doc.items.map((m) => {
          const c = m.config || {};
          return h("tr", {"data-model": m.id},
            h("td", {}, h("b", {}, m.name), h("div", {class: "sub mono"}, m.id)),
            h("td", {}, badge(m.source, "kind")), h("td", {class: "mono"}, m.path || "—"),
            h("td", {}, c.model_type || (c.architectures || [])[0] || "—"),
            h("td", {}, fmt(c.num_hidden_layers)), h("td", {}, fmt(c.hidden_size)),
            h("td", {}, fmt(c.vocab_size)), h("td", {class: "sub"}, fmtTime(m.created_at)));
        })))
        : h("div", {class: "empty"}, "No models registered."));
    } catch (e) { if (e.name !== "AbortError") showError(list, e); }
  };
  const name = h("input", {id: "model-name", placeholder: "name"});
  const path = h("input", {id: "model-path", placeholder: "directory under --models-root", style: "min-width:320px"});
  const register = async () => {
    fill(err);
    try {
      const m = await api("POST", "/v1/models", {name: name.value || undefined, path: path.value});
      toast(`registered ${m.id}`);
      name.value = path.value = "";
      load();
    } catch (e) { showError(err, e); }
  };
  mount(h("div", {class: "page-head"}, h("h1", {}, "Models")),
        h("div", {class: "card stack"}, h("h2", {}, "Register a Hugging Face model directory"),
          h("div", {class: "row"}, name, path, h("button", {class: "primary", id: "model-register", onclick: register}, "Register")), err),
        list);
  load();
}

/* ---- the rollout playground ---------------------------------------------------------------- */

function playgroundPage(params) {
  document.title = "Playground · chord";
  const source = h("select", {id: "pg-source"}, h("option", {value: "checkpoint"}, "a job's checkpoint"),
                   h("option", {value: "model"}, "a registered model"));
  const model = h("select", {id: "pg-model"});
  const job = h("select", {id: "pg-job"});
  const step = h("select", {id: "pg-step"}, h("option", {value: ""}, "latest"));
  const prompt = h("textarea", {id: "pg-prompt", rows: 4, placeholder: "Compute 12+30."}, "Compute 12+30.");
  const system = h("input", {id: "pg-system", placeholder: "optional: sends a chat (system + user turn)"});
  const answer = h("input", {id: "pg-answer", placeholder: "optional: scored by math_boxed"});
  const num = (id, value, attrs) => h("input", Object.assign({id, type: "number", value, style: "width:110px"}, attrs));
  const n = num("pg-n", 4, {min: 1, max: 64});
  const temp = num("pg-temperature", 1.0, {min: 0, max: 100, step: "0.1"});
  const maxTok = num("pg-max-tokens", 64, {min: 1, max: 32768});
  const seed = num("pg-seed", 0, {min: 0});
  const run = h("button", {class: "primary", id: "pg-run"}, "Run");
  const out = h("div", {id: "pg-out"});
  const field = (label, el) => h("label", {class: "field"}, label, el);
  const modelField = field("Model", model), jobField = field("Job", job), stepField = field("Step", step);
  const syncSource = () => {
    const ck = source.value === "checkpoint";
    modelField.hidden = ck; jobField.hidden = !ck; stepField.hidden = !ck;
  };
  source.addEventListener("change", syncSource);
  const loadSteps = async () => {
    fill(step, h("option", {value: ""}, "latest"));
    if (!job.value) return;
    try {
      const doc = await api("GET", `/v1/jobs/${job.value}/checkpoints`);
      step.append(...doc.items.slice().reverse().map((c) => h("option", {value: c.step}, "step " + c.step)));
    } catch (e) { /* shown when run */ }
  };
  job.addEventListener("change", loadSteps);
  mount(h("div", {class: "page-head"}, h("h1", {}, "Playground"),
          h("span", {class: "sub"}, "sample completions from a model or a checkpoint, with each token's log-probability")),
    h("div", {class: "card stack"},
      h("div", {class: "row"}, field("Sample from", source), modelField, jobField, stepField),
      field("System prompt", system),
      field("Prompt", prompt),
      h("div", {class: "row"}, h("label", {class: "field", style: "flex:1"}, "Answer", answer),
        field("n", n), field("Temperature", temp), field("Max tokens", maxTok), field("Seed", seed),
        h("div", {style: "align-self:flex-end"}, run))),
    out);
  syncSource();
  (async () => {
    try {
      const [models, jobs] = await Promise.all([api("GET", "/v1/models?limit=1000"), api("GET", "/v1/jobs?limit=200")]);
      fill(model, ...models.items.map((m) => h("option", {value: m.id}, `${m.name} (${m.id})`)));
      fill(job, ...jobs.items.map((j) => h("option", {value: j.id}, `${j.name} · ${j.state} (${j.id})`)));
      if (params.get("job")) job.value = params.get("job");
      if (!jobs.items.length && models.items.length) { source.value = "model"; syncSource(); }
      loadSteps();
    } catch (e) { showError(out, e); }
  })();
  run.addEventListener("click", async () => {
    const req = {n: Number(n.value), temperature: Number(temp.value), max_tokens: Number(maxTok.value),
                 seed: Number(seed.value)};
    if (system.value.trim())
      req.messages = [[{role: "system", content: system.value.trim()}, {role: "user", content: prompt.value}]];
    else req.prompts = [prompt.value];
    if (source.value === "model") req.model = model.value;
    else req.checkpoint = step.value ? {job_id: job.value, step: Number(step.value)} : {job_id: job.value};
    if (answer.value.trim()) req.answers = [answer.value.trim()];
    run.disabled = true;
    fill(out, h("div", {class: "card muted", id: "pg-pending"}, "Queued: it runs on a worker between training steps…"));
    try {
      let ro = await api("POST", "/v1/rollouts", req);
      const signal = page.controller.signal;
      while (ro.state === "pending" && !signal.aborted) {
        await new Promise((r) => setTimeout(r, 300));
        ro = await api("GET", "/v1/rollouts/" + ro.id, undefined, signal);
      }
      fill(out, rolloutView(ro));
    } catch (e) { if (e.name !== "AbortError") showError(out, e); }
    run.disabled = false;
  });
}

/* Colour of a log-probability on a log scale (HEAT_FLOOR and below: red; 0, certain: green), so
 * that a 1-in-10 token and a 1-in-1000 one look different. */
const HEAT_FLOOR = -8;
function heatColour(lp) {
  const t = 1 - Math.max(HEAT_FLOOR, Math.min(0, lp)) / HEAT_FLOOR;
  return `hsl(${(t * 130).toFixed(0)} ${(85 - t * 25).toFixed(0)}% ${(80 + t * 2).toFixed(0)}%)`;
}

function rolloutView(ro) {
  if (ro.state === "failed") return h("div", {class: "error", id: "pg-error"}, ro.error || "the rollout failed");
  const cs = (ro.result && ro.result.completions) || [];
  const res = ro.result || {};
  return h("div", {id: "pg-result"},
    h("div", {class: "row", style: "margin-bottom:12px"}, h("h2", {style: "margin:0"}, `${cs.length} completion${cs.length === 1 ? "" : "s"}`),
      h("span", {class: "sub mono"}, ro.id),
      h("span", {class: "sub"}, `${fmt(res.tokens)} tokens in ${fmt(res.seconds, 3)} s`), h("span", {class: "grow"}),
      h("div", {class: "legend"}, `log p: ≤ ${HEAT_FLOOR}`, h("span", {class: "scale"}), "0")),
    cs.map((c, i) => {
      const prompts = (ro.request && ro.request.prompts) || [];
      const newPrompt = i === 0 || cs[i - 1].prompt_index !== c.prompt_index;
      const lps = c.logprobs || [];
      const mean = lps.length ? lps.reduce((a, b) => a + b, 0) / lps.length : null;
      const pieces = c.tokens || (c.token_ids || []).map((t) => `⟨${t}⟩`);
      return h("div", {}, newPrompt && prompts.length > 1 ? h("h3", {}, `prompt ${c.prompt_index}: ${prompts[c.prompt_index]}`) : null,
        h("div", {class: "completion"},
        h("div", {class: "head"}, h("b", {}, `#${c.index}`),
          c.reward !== undefined ? h("span", {class: "badge kind"}, "reward " + fmt(c.reward)) : null,
          c.reason ? badge(c.reason) : null, badge(c.finish_reason, "plain"),
          h("span", {class: "sub"}, `${lps.length} tokens · mean log-prob ${fmt(mean, 3)}`)),
        h("div", {class: "heat"}, pieces.map((t, i) => h("span", {
          style: lps[i] !== undefined ? `background:${heatColour(lps[i])}` : null,
          title: `token ${c.token_ids ? c.token_ids[i] : "?"} · log p ${fmt(lps[i], 3)} · p ${fmt(Math.exp(lps[i] ?? NaN), 3)}`}, t))),
        c.tokens ? null : h("details", {}, h("summary", {class: "sub"}, "text"), h("div", {class: "sample-text"}, c.text))));
    }));
}

/* ---- start --------------------------------------------------------------------------------- */

document.addEventListener("DOMContentLoaded", () => {
  setupToken();
  health();
  setInterval(health, 10000);
  window.addEventListener("hashchange", route);
  route();
});
