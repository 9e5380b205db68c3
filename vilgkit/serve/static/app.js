// The model page: run info, text → image with progress, captioning, VQA.
"use strict";

const SETTINGS = ["num_candidates", "top_k", "top_p", "temperature", "cfg_scale", "reranker", "seed"];

async function loadInfo() {
  const info = await api("/api/info");
  document.title = "vilgkit · " + info.name;
  $("run-name").textContent = info.name;
  $("run-stage").textContent = info.stage || "—";
  $("run-size").textContent = info.image_size + " px, " + info.grid.join("×") + " codes, text budget " + info.max_text_len;
  if (info.evaluation) {
    const rows = Object.entries(info.evaluation.metrics).map(([k, v]) => [k, formatNumber(v)]);
    rows.push(["samples", info.evaluation.num_samples]);
    fillTable($("eval-table"), rows);
  } else {
    fillTable($("eval-table"), [["—", "this run has not been evaluated"]]);
    $("report-link").hidden = true;
  }
  const s = info.settings;
  $("settings-source").textContent = info.settings_saved
    ? "saved by the run's " + s.evaluated_by + " stage (the defaults of every request)"
    : "the run saved none: plain defaults";
  fillTable($("settings-table"), Object.entries(s)
    .filter(([k]) => k !== "evaluated_by" && k !== "report")
    .map(([k, v]) => [k, v === null ? "off" : String(v)]));
  for (const name of SETTINGS) {
    if (name in s && $(name)) $(name).placeholder = s[name] === null ? "off" : String(s[name]);
  }
}

function generateRequest() {
  const body = { prompt: $("prompt").value };
  for (const name of SETTINGS) {
    const raw = $(name).value.trim();
    if (raw === "") continue;
    body[name] = name === "reranker" ? raw : Number(raw);
  }
  return body;
}

function showProgress(job) {
  $("progress").hidden = false;
  $("progress-bar").style.width = Math.round(100 * job.progress) + "%";
  $("progress-text").textContent = job.phase + (job.batch_size > 1 ? " (batched with " + (job.batch_size - 1) + " more)" : "");
}

function showCandidates(result) {
  $("used-settings").textContent = "settings used: " + Object.entries(result.settings)
    .map(([k, v]) => k + " " + (v === null ? "off" : v)).join(", ");
  const grid = $("candidates");
  grid.replaceChildren();
  for (const cand of result.candidates) {
    const figure = document.createElement("figure");
    figure.className = "candidate" + (cand.rank === 0 ? " best" : "");
    const img = document.createElement("img");
    img.src = cand.image;
    img.alt = result.prompt + " (candidate " + cand.index + ")";
    const caption = document.createElement("figcaption");
    caption.textContent = "#" + (cand.rank + 1) + (cand.score === null ? "" : " · " + cand.score.toFixed(2));
    figure.append(img, caption);
    grid.append(figure);
  }
}

async function generate(event) {
  event.preventDefault();
  showError("");
  $("generate-btn").disabled = true;
  try {
    let job = await api("/api/jobs/generate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(generateRequest()),
    });
    while (job.status === "queued" || job.status === "running") {
      showProgress(job);
      await new Promise((resolve) => setTimeout(resolve, 150));
      job = await api("/api/jobs/" + job.id);
    }
    showProgress(job);
    if (job.status !== "done") throw new Error(job.error || "generation failed");
    showCandidates(job.result);
  } catch (err) {
    showError(err.message);
  } finally {
    $("generate-btn").disabled = false;
  }
}

// An image → text request: post `fields` (in order) to `url`, show the result's `key` text in the
// element `output` and keep it raw in its `data-<key>` attribute (what the browser test waits for).
async function imageToText(event, url, fields, output, key) {
  event.preventDefault();
  showError("");
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) form.append(name, value);
  try {
    const result = await api(url, { method: "POST", body: form });
    $(output).textContent = result[key] || "(the model gave an empty " + key + ")";
    $(output).dataset[key] = result[key];
  } catch (err) {
    showError(err.message);
  }
}

function caption(event) {
  return imageToText(event, "/api/caption", { image: $("caption-file").files[0] }, "caption-result", "caption");
}

function ask(event) {
  const fields = { image: $("vqa-file").files[0], question: $("vqa-question").value };
  return imageToText(event, "/api/vqa", fields, "vqa-answer", "answer");
}

$("generate-form").addEventListener("submit", generate);
$("caption-form").addEventListener("submit", caption);
$("vqa-form").addEventListener("submit", ask);
$("caption-file").addEventListener("change", () => preview($("caption-file"), $("caption-preview")));
$("vqa-file").addEventListener("change", () => preview($("vqa-file"), $("vqa-preview")));
loadInfo().catch((err) => showError("cannot load the run's info: " + err.message));
