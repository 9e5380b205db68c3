// The rating page: a rater's next item, the protocol's criteria as scale buttons, the report.
"use strict";

let campaign = null;
let current = null;

function rater() { return $("rater").value.trim(); }

function itemText(item) {
  if (campaign.protocol === "text2image") return "Text: " + item.text;
  if (campaign.protocol === "caption") return "Caption: " + item.output;
  return "Q: " + item.question + " — A: " + item.output;
}

function renderCriteria() {
  const box = $("criteria");
  box.replaceChildren();
  for (const c of campaign.criteria) {
    const row = document.createElement("div");
    row.className = "scale";
    const name = document.createElement("span");
    name.className = "criterion";
    name.textContent = c.label;
    name.title = c.question;
    row.append(name);
    c.scores.forEach((score, i) => {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "radio";
      input.name = c.key;
      input.value = String(score);
      input.required = true;
      input.id = "score-" + c.key + "-" + score;
      label.append(input, " " + (c.labels.length ? score + " (" + c.labels[i] + ")" : score));
      row.append(label);
    });
    box.append(row);
  }
}

function showCounts(counts) {
  $("campaign-counts").textContent = counts.given + " of " + counts.needed + " ratings given";
  if (counts.mine !== undefined) $("mine").textContent = counts.mine;
}

async function nextItem() {
  const data = await api("/api/next?rater=" + encodeURIComponent(rater()));
  showCounts(data.counts);
  current = data.item;
  $("login").hidden = true;
  $("rating").hidden = !current;
  $("finished").hidden = !!current;
  if (!current) return;
  $("scores-form").reset();
  $("item-image").src = current.image;
  $("item-text").textContent = itemText(current);
  $("item").dataset.item = current.id;
}

async function submitScores(event) {
  event.preventDefault();
  showError("");
  const scores = {};
  for (const c of campaign.criteria) {
    const picked = document.querySelector("input[name='" + c.key + "']:checked");
    if (!picked) { showError("score every criterion (" + c.label + " is missing)"); return; }
    scores[c.key] = Number(picked.value);
  }
  try {
    await api("/api/ratings", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ rater: rater(), item: current.id, scores: scores }),
    });
    await nextItem();
  } catch (err) {
    showError(err.message);
  }
}

function statText(stat, digits) {
  if (!stat || stat.mean === null) return "—";
  const ci = stat.ci ? " [" + stat.ci[0].toFixed(digits) + ", " + stat.ci[1].toFixed(digits) + "]" : "";
  return stat.mean.toFixed(digits) + ci;
}

async function showReport() {
  showError("");
  try {
    const data = await api("/api/report");
    const report = data.report;
    const table = document.createElement("table");
    table.id = "report-table";
    const keys = Object.keys(Object.values(report.results)[0] || {});
    const head = table.createTHead().insertRow();
    ["system"].concat(keys).forEach((k) => { head.insertCell().textContent = k; });
    for (const [system, row] of Object.entries(report.results)) {
      const tr = table.insertRow();
      tr.insertCell().textContent = system + ": " + (report.systems[system].name || system);
      for (const k of keys) {
        const cell = tr.insertCell();
        cell.textContent = statText(row[k], k === "turing_pass_rate" ? 1 : 2);
        cell.dataset.key = k;
      }
    }
    const summary = document.createElement("p");
    summary.className = "muted";
    summary.textContent = report.items + " items, " + report.raters + " raters, " + report.ratings_given + " of " +
      report.ratings_needed + " ratings; agreement (Krippendorff's alpha): " +
      Object.entries(report.agreement).map(([k, a]) => k + " " + (a.ordinal ?? a.nominal ?? "—")).join(", ");
    const markdown = document.createElement("pre");
    markdown.textContent = data.markdown;
    $("report").replaceChildren(table, summary, markdown);
  } catch (err) {
    showError(err.message);
  }
}

async function start(event) {
  event.preventDefault();
  showError("");
  try { await nextItem(); } catch (err) { showError(err.message); }
}

async function init() {
  campaign = await api("/api/campaign");
  $("campaign-title").textContent = campaign.title;
  $("campaign-name").textContent = campaign.name;
  document.title = "vilgkit humaneval · " + campaign.name;
  showCounts(campaign.counts);
  renderCriteria();
}

$("rater-form").addEventListener("submit", start);
$("scores-form").addEventListener("submit", submitScores);
$("report-btn").addEventListener("click", showReport);
init().catch((err) => showError("cannot load the campaign: " + err.message));
