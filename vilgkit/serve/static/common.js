// Helpers shared by the vilgkit pages (no dependencies, nothing loaded from elsewhere).
"use strict";

function $(id) { return document.getElementById(id); }

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

// fetch JSON; a refusal's {"error": "..."} becomes the thrown message
async function api(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    throw new Error((body && body.error) || (response.status + " " + response.statusText));
  }
  return body;
}

function fillTable(table, rows) {
  const body = table.tBodies[0] || table.appendChild(document.createElement("tbody"));
  body.replaceChildren();
  for (const [key, value] of rows) {
    const tr = body.insertRow();
    tr.insertCell().textContent = key;
    tr.insertCell().textContent = value;
  }
}

function formatNumber(value) {
  if (typeof value !== "number") return value === null || value === undefined ? "—" : String(value);
  return Math.abs(value) < 1 && value !== 0 ? value.toFixed(3) : String(Math.round(value * 1000) / 1000);
}

function preview(fileInput, img) {
  const file = fileInput.files[0];
  if (!file) return;
  img.src = URL.createObjectURL(file);
  img.hidden = false;
}
