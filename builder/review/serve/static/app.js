// ttspo serve: the page. Every stored value reaches the DOM as a text node
// (textContent, createTextNode), never as HTML, so text holding <script> or an ESC
// character shows as the characters it is and runs nothing.
"use strict";

const state = { tables: [], page: 0, size: 20, total: 0, trial: null, labelled: 0 };
const SHOWN = ["cer", "wer", "ssim", "pesq", "squim", "utmos", "duration", "reward",
               "advantage", "step"];
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options));
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function fmt(v) {
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)));
  return v === null || v === undefined ? "–" : String(v);
}

function audio(table, id, preload) {
  const url = "/api/audio?" + new URLSearchParams({ table, id });
  return el("audio", { controls: "", preload: preload || "metadata", src: url });
}

function diff(d) {
  const side = (label, segments, cls) => {
    const p = el("div", { class: "diff" }, el("span", { class: "label" }, label));
    for (const [text, changed] of segments) {
      p.append(changed ? el("mark", { class: cls }, text) : document.createTextNode(text));
      p.append(" ");
    }
    return p;
  };
  return el("div", {}, side("text", d.text, "del"), side("heard", d.transcript, "ins"));
}

function metrics(row, extra) {
  const keys = SHOWN.filter((k) => k in row && row[k] !== null);
  if (extra && !keys.includes(extra) && extra in row) keys.push(extra);
  return el("div", { class: "metrics" }, keys.map((k) => `${k} ${fmt(row[k])}`).join(" · "));
}

// ---------------------------------------------------------------- browse
function info() { return state.tables.find((t) => t.name === $("table").value); }

function fillSort() {
  const t = info();
  const sort = $("sort");
  sort.replaceChildren(el("option", { value: "" }, t ? t.id_column : ""));
  for (const c of t ? t.numeric : []) sort.append(el("option", { value: c }, c));
}

async function loadRows() {
  const t = info();
  if (!t) return;
  $("browse-error").textContent = "";
  const params = new URLSearchParams({ table: t.name, where: $("where").value,
    sort: $("sort").value, desc: $("desc").checked ? "1" : "0", page: state.page, size: state.size });
  try {
    const data = await api("/api/rows?" + params);
    state.total = data.total;
    const first = data.total ? data.page * data.size + 1 : 0;
    $("range").textContent = `${first}–${data.page * data.size + data.rows.length} of ${data.total}` +
      ` (${t.name} v${data.version})`;
    $("rows").replaceChildren(data.kind === "set" ? pairTable(data, t) : sampleTable(data, t));
  } catch (e) {
    $("browse-error").textContent = e.message;
  }
}

function sampleTable(data, t) {
  const table = el("table", { id: "rows-table" },
    el("tr", {}, el("th", {}, "id"), el("th", {}, "metrics"), el("th", {}, "audio"),
       el("th", {}, "text / transcript")));
  for (const row of data.rows) {
    table.append(el("tr", { class: "row" },
      el("td", { class: "id" }, row[data.id_column]),
      el("td", { class: "num" }, metrics(row, $("sort").value)),
      el("td", {}, audio(t.name, row[data.id_column])),
      el("td", {}, diff(row._diff))));
  }
  return table;
}

function sample(kind, gen) {
  if (!gen) return el("div", { class: "sample " + kind }, `${kind}: not in generations`);
  return el("div", { class: "sample " + kind },
    el("div", {}, el("strong", {}, kind + " "), el("span", { class: "id" }, gen.generation_id)),
    audio("generations", gen.generation_id), metrics(gen), diff(gen._diff));
}

function pairTable(data, t) {
  const table = el("table", { id: "rows-table" },
    el("tr", {}, el("th", {}, "pair"), el("th", {}, "chosen / rejected")));
  for (const row of data.rows) {
    const dyn = el("div", { class: "dyn" });
    const button = el("button", { type: "button", class: "dyn-button" }, "dynamics");
    button.addEventListener("click", () => showDynamics(t.name, row.pair_id, dyn));
    const keys = ["split", "chosen_reward", "rejected_reward", "cer_delta", "sim_delta",
                  $("sort").value].filter((k, i, a) => k && k in row && a.indexOf(k) === i);
    table.append(el("tr", { class: "row" },
      el("td", { class: "id" }, row.pair_id,
         el("div", { class: "metrics" }, keys.map((k) => `${k} ${fmt(row[k])}`).join(" · ")),
         button, dyn),
      el("td", {}, sample("chosen", row._chosen), sample("rejected", row._rejected))));
  }
  return table;
}

async function showDynamics(set, pairId, box) {
  try {
    const data = await api("/api/dynamics?" + new URLSearchParams({ set, pair_id: pairId }));
    if (!data.rows.length) { box.replaceChildren(data.note || "no dynamics rows for this pair"); return; }
    box.replaceChildren(grid(data.summary, ["run", "split", "reads", "mean_margin",
                                            "variability", "share_correct"]),
                        grid(data.rows, ["run", "split", "epoch", "step", "margin", "correct", "loss"]));
  } catch (e) { box.replaceChildren(e.message); }
}

function grid(rows, cols) {
  const table = el("table", {}, el("tr", {}, ...cols.map((c) => el("th", {}, c))));
  for (const r of rows) table.append(el("tr", {}, ...cols.map((c) => el("td", { class: "num" }, fmt(r[c])))));
  return table;
}

// ---------------------------------------------------------------- listen
function labeler() { return $("labeler").value.trim(); }

async function drawPair() {
  $("listen-error").textContent = "";
  try {
    const t = await api("/api/pair?" + new URLSearchParams({ set: $("listen-set").value,
      where: $("listen-where").value, labeler: labeler() }));
    state.trial = t;
    $("trial-text").textContent = t.text === null ? "" : t.text;
    $("audio-a").src = "/api/audio?" + new URLSearchParams({ table: "generations", id: t.first_id });
    $("audio-b").src = "/api/audio?" + new URLSearchParams({ table: "generations", id: t.second_id });
    $("trial").hidden = false;
  } catch (e) {
    $("listen-error").textContent = e.message;
    $("trial").hidden = true;
  }
}

async function judge(choice) {
  const t = state.trial;
  if (!t) return;
  if (!labeler()) { $("listen-error").textContent = "type your name in the labeler box first"; return; }
  state.trial = null;  // one judgement per pair shown
  const body = { labeler: labeler(), first_id: t.first_id, second_id: t.second_id, choice,
                 pair_id: t.pair_id, set_name: t.set_name, set_version: t.set_version };
  try {
    const done = await api("/api/labels", { method: "POST", body: JSON.stringify(body),
      headers: { "content-type": "application/json" } });
    state.labelled += 1;
    await drawPair();  // the status changes once the next pair is in place
    $("listen-status").textContent =
      `saved ${choice} (${state.labelled} this session, labels v${done.labels_version})`;
  } catch (e) {
    $("listen-error").textContent = e.message;
    state.trial = t;
  }
}

function onKey(event) {
  if ($("listen").hidden || event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  if (target && (target.tagName === "INPUT" || target.tagName === "SELECT")) return;
  const choice = { a: "a", b: "b", t: "tie", s: "skip" }[event.key.toLowerCase()];
  if (choice) { event.preventDefault(); judge(choice); }
}

// ------------------------------------------------------------- agreement
async function loadAgreement() {
  $("agreement-error").textContent = "";
  const set = $("agreement-set").value;
  try {
    const data = await api("/api/agreement" + (set ? "?" + new URLSearchParams({ set }) : ""));
    if (!data.rows.length) { $("agreement-rows").replaceChildren(data.note || "no labels"); return; }
    const table = grid(data.rows, ["metric", "judged", "agree", "disagree", "metric_ties", "agreement"]);
    table.id = "agreement-table";
    $("agreement-rows").replaceChildren(table);
  } catch (e) { $("agreement-error").textContent = e.message; }
}

// ------------------------------------------------------------------ start
function show(panel) {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.classList.toggle("active", tab.dataset.panel === panel);
    $(tab.dataset.panel).hidden = tab.dataset.panel !== panel;
  }
}

async function start() {
  $("labeler").value = localStorage.getItem("ttspo-labeler") || "";
  $("labeler").addEventListener("change", () => localStorage.setItem("ttspo-labeler", labeler()));
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => show(tab.dataset.panel));
  for (const b of document.querySelectorAll(".choices button")) b.addEventListener("click", () => judge(b.dataset.choice));
  document.addEventListener("keydown", onKey);
  $("browse-form").addEventListener("submit", (e) => { e.preventDefault(); state.page = 0; loadRows(); });
  $("table").addEventListener("change", () => { state.page = 0; fillSort(); loadRows(); });
  $("prev").addEventListener("click", () => { if (state.page > 0) { state.page -= 1; loadRows(); } });
  $("next").addEventListener("click", () => {
    if ((state.page + 1) * state.size < state.total) { state.page += 1; loadRows(); } });
  $("listen-form").addEventListener("submit", (e) => { e.preventDefault(); drawPair(); });
  $("agreement-form").addEventListener("submit", (e) => { e.preventDefault(); loadAgreement(); });
  try {
    const data = await api("/api/tables");
    state.tables = data.tables;
    for (const t of data.tables) $("table").append(el("option", { value: t.name }, `${t.name} (${t.kind})`));
    const sets = data.tables.filter((t) => t.kind === "set");
    $("agreement-set").append(el("option", { value: "" }, "all labels"));
    for (const t of sets) {
      $("listen-set").append(el("option", { value: t.name }, t.name));
      $("agreement-set").append(el("option", { value: t.name }, t.name));
    }
    const params = new URLSearchParams(location.search);
    if (params.get("table")) $("table").value = params.get("table");
    if (params.get("labeler")) $("labeler").value = params.get("labeler");
    fillSort();
    await loadRows();
    if (params.get("panel")) show(params.get("panel"));
    document.body.dataset.ready = "1";
  } catch (e) {
    $("browse-error").textContent = e.message;
  }
}

start();
