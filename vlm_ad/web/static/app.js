// vlm-ad serve: the page. Everything the server sends is put in with textContent (never as HTML).
"use strict";
const $ = (id) => document.getElementById(id);
const state = { session: null, offset: 0, limit: 50, maxUploadMb: Infinity };
// time from an upload to its overlay on screen, read by eval/bench_serve.py
window.vlmAd = { timings: [] };

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function showMessage(text) { const m = $("message"); m.textContent = text; m.hidden = !text; }

async function api(url, options) {
  let resp;
  try { resp = await fetch(url, options); } catch (err) { throw new Error("the server cannot be reached: " + err); }
  let body = null;
  try { body = await resp.json(); } catch (err) { body = null; }
  if (!resp.ok) {
    const why = body && body.error ? body.error : resp.status + " " + resp.statusText;
    throw new Error(why);
  }
  return body;
}

// ------------------------------------------------------------------------------------------------ inspect tab
async function analyze(request, label) {
  showMessage("");
  $("busy").hidden = false;
  const t0 = performance.now();
  try {
    const res = await api(request.url, request.options);
    render(res, t0);
  } catch (err) {
    showMessage("Could not analyse " + label + ": " + err.message);
  } finally {
    $("busy").hidden = true;
  }
}

function render(res, t0) {
  state.session = res.session;
  $("result").hidden = false;
  const overlayShown = new Promise((resolve) => {
    $("overlay").onload = () => { window.vlmAd.timings.push(performance.now() - t0); resolve(); };
  });
  $("image").src = res.image;
  $("overlay").src = res.overlay;
  $("overlay").dataset.imageId = res.image_id;
  $("image-caption").textContent = res.image_id + " (" + res.width + " x " + res.height + " px)";
  const v = $("verdict");
  v.textContent = res.verdict.toUpperCase();
  v.className = "verdict " + res.verdict;
  $("confidence").textContent = "confidence " + res.confidence.toFixed(2);
  $("score").textContent = "score " + res.score.toFixed(4) +
    (res.threshold === null ? " (no threshold)" : " vs threshold " + res.threshold.toFixed(4)) +
    " - reasoner " + res.reasoner;
  $("summary").textContent = res.summary;
  fillFlags($("flags"), res.flags);
  fillSteps($("steps"), res.steps);
  const notes = $("notes"); notes.replaceChildren();
  res.notes.forEach((n) => notes.appendChild(el("li", "note: " + n)));
  renderRegions(res.regions);
  $("chat-log").replaceChildren();
  return overlayShown;
}

function fillFlags(list, flags) {
  list.replaceChildren();
  (flags || []).forEach((f) => list.appendChild(el("li", "flag: " + f)));
}

function fillSteps(list, steps) {
  list.replaceChildren();
  (steps || []).forEach((s) => {
    const li = el("li", s.text);
    (s.evidence || []).forEach((id) => li.appendChild(el("span", id, "chip")));
    list.appendChild(li);
  });
}

function picture(src, alt) {
  const img = el("img");
  img.alt = alt;
  if (src) img.src = src;
  return img;
}

function renderRegions(regions) {
  const box = $("regions");
  box.replaceChildren();
  if (!regions.length) { box.appendChild(el("p", "No region exceeds the threshold.", "dim")); return; }
  regions.forEach((r) => {
    const card = el("div", null, "region");
    card.dataset.region = r.id;
    const head = el("div");
    head.appendChild(el("span", r.id, "rid"));
    head.appendChild(document.createTextNode(" " + r.location + ", " + r.area_pct + "% of the image, " + r.shape +
      ", " + r.contrast + (r.defect ? ", like " + r.defect : "")));
    card.appendChild(head);
    const pair = el("div", null, "pair");
    const left = el("figure"); left.appendChild(picture(r.picture, r.id));
    left.appendChild(el("figcaption", r.id + " in this image"));
    const right = el("figure");
    const ex = r.exemplar;
    right.appendChild(picture(ex.picture, ex.id || "no exemplar"));
    right.appendChild(el("figcaption", ex.picture ? ex.id + ": nearest normal, " + ex.image_id + " (distance " +
      ex.distance + ")" : (ex.id ? ex.id + ": " : "") + ex.reason));
    pair.appendChild(left); pair.appendChild(right);
    card.appendChild(pair);
    box.appendChild(card);
  });
}

async function ask(event) {
  event.preventDefault();
  const q = $("question").value.trim();
  if (!q || !state.session) return;
  showMessage("");
  const log = $("chat-log");
  log.appendChild(el("div", "You: " + q, "q"));
  const pending = el("div", "...", "a");
  log.appendChild(pending);
  $("question").value = "";
  try {
    const res = await api("/api/chat", { method: "POST", headers: { "Content-Type": "application/json" },
                                          body: JSON.stringify({ session: state.session, question: q }) });
    pending.textContent = res.answer;
  } catch (err) {
    pending.remove();
    showMessage("Could not answer: " + err.message);
  }
}

// ------------------------------------------------------------------------------------------------- report tab
async function loadReport() {
  const params = new URLSearchParams({ verdict: $("filter").value, sort: $("sort").value,
                                       offset: state.offset, limit: state.limit });
  try {
    const res = await api("/api/report?" + params);
    const rows = $("report-rows");
    rows.replaceChildren();
    res.rows.forEach((r) => {
      const tr = el("tr");
      tr.dataset.index = r.index;
      tr.appendChild(el("td", r.image_id));
      tr.appendChild(el("td", r.score === null ? "-" : r.score.toFixed(4)));
      tr.appendChild(el("td", r.verdict + (r.confidence === null ? "" : " (" + r.confidence.toFixed(2) + ")")));
      tr.appendChild(el("td", r.flags ? String(r.flags) : ""));
      tr.appendChild(el("td", r.summary));
      tr.onclick = () => {
        rows.querySelectorAll("tr.selected").forEach((x) => x.classList.remove("selected"));
        tr.classList.add("selected");
        openRecord(r.index);
      };
      rows.appendChild(tr);
    });
    const end = Math.min(res.offset + res.rows.length, res.matched);
    $("report-count").textContent = (res.matched ? (res.offset + 1) + "-" + end : "0") + " of " + res.matched +
      " shown (" + res.total + " records: " + res.counts.anomalous + " anomalous, " + res.counts.normal +
      " normal, " + res.counts.failed + " failed)";
    $("prev").disabled = res.offset === 0;
    $("next").disabled = end >= res.matched;
    const p = res.provenance || {};
    $("provenance").textContent = p.model ? "model " + p.model + " (sha256 " + String(p.model_sha256).slice(0, 12) +
      "), detector " + p.detector + ", backbone " + p.backbone + ", reasoner " + p.reasoner + ", vlm-ad " +
      p.vlm_ad + ", " + p.date : "";
  } catch (err) {
    showMessage("Could not load the report: " + err.message);
  }
}

async function openRecord(index) {
  try {
    const r = await api("/api/report/" + index);
    $("record").hidden = false;
    $("record-title").textContent = r.image_id;
    const img = $("record-overlay");
    if (r.overlay_url) { img.src = r.overlay_url; img.hidden = false; } else { img.hidden = true; }
    const e = r.explanation;
    const v = $("record-verdict");
    v.textContent = e ? e.verdict.toUpperCase() + " (" + e.confidence.toFixed(2) + ")" : "FAILED";
    v.className = "verdict " + (e ? e.verdict : "anomalous");
    $("record-summary").textContent = e ? e.summary : r.error;
    fillSteps($("record-steps"), e ? e.steps : []);
    fillFlags($("record-flags"), e ? e.flags : []);
  } catch (err) {
    showMessage("Could not open the record: " + err.message);
  }
}

// ------------------------------------------------------------------------------------------------------- setup
function showTab(name) {
  document.querySelectorAll(".tab").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  $("inspect").hidden = name !== "inspect";
  $("report").hidden = name !== "report";
  showMessage("");
  if (name === "report") loadReport();
}

async function init() {
  document.querySelectorAll(".tab").forEach((b) => { b.onclick = () => showTab(b.dataset.tab); });
  $("file").onchange = () => {
    const f = $("file").files[0];
    if (!f) return;
    $("file").value = "";
    if (f.size > state.maxUploadMb * 1e6) {  // the server would refuse it too (413); say so without sending it
      showMessage("Could not analyse " + f.name + ": it is " + (f.size / 1e6).toFixed(1) + " MB, above this " +
                  "server's " + state.maxUploadMb + " MB upload limit (vlm-ad serve --max-upload-mb)");
      return;
    }
    const form = new FormData();
    form.append("file", f, f.name);
    analyze({ url: "/api/analyze", options: { method: "POST", body: form } }, f.name);
  };
  $("example").onchange = () => {
    const name = $("example").value;
    if (name) analyze({ url: "/api/analyze/example", options: { method: "POST",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name: name }) } }, name);
  };
  $("chat-form").onsubmit = ask;
  $("filter").onchange = () => { state.offset = 0; loadReport(); };
  $("sort").onchange = () => { state.offset = 0; loadReport(); };
  $("prev").onclick = () => { state.offset = Math.max(0, state.offset - state.limit); loadReport(); };
  $("next").onclick = () => { state.offset += state.limit; loadReport(); };
  try {
    const info = await api("/api/info");
    state.maxUploadMb = info.max_upload_mb;
    $("model-info").textContent = "model " + (info.model || "?") + " - reasoner " + (info.reasoner || "?");
    if (info.examples.length) {
      $("example-box").hidden = false;
      info.examples.forEach((n) => { const o = el("option", n); o.value = n; $("example").appendChild(o); });
    }
    $("tab-report").hidden = !info.reports;
  } catch (err) {
    showMessage("The server does not answer: " + err.message);
  }
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", init);
