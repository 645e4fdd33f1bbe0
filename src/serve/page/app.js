// The page of `sknet serve`: one image in, its top-5 and each SK unit's large-kernel weight out.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let units = [];

function setState(state) {
  document.body.dataset.state = state;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  setState("error");
}

async function loadModel() {
  try {
    const response = await fetch("v1/model");
    const model = await response.json();
    units = model.units;
    const [h, w] = model.preprocess.size;
    $("model").textContent =
      `${model.name}: ${model.num_classes} classes, ${h}x${w} input, ${units.length} SK units`;
    setState("ready");
  } catch (e) {
    showError(`Cannot reach the server: ${e}`);
  }
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// Bars of each unit's large-kernel weight on a 0..1 axis.
function drawChart(weights) {
  const width = 640, height = 260;
  const left = 40, right = 10, top = 10, bottom = 56;
  const plotW = width - left - right, plotH = height - top - bottom;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "Large-kernel weight per SK unit" });
  for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
    const y = top + plotH * (1 - tick);
    chart.append(svg("line", { x1: left, x2: width - right, y1: y, y2: y, class: "grid" }));
    chart.append(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, tick.toFixed(2)));
  }
  const slot = plotW / weights.length;
  const barW = Math.max(2, Math.min(36, slot * 0.7));
  weights.forEach((w, i) => {
    const x = left + slot * i + (slot - barW) / 2;
    const h = plotH * Math.max(0, Math.min(1, w.weight));
    const bar = svg("rect", { x, y: top + plotH - h, width: barW, height: h, class: "bar" });
    bar.append(svg("title", {}, `${w.unit} (${w.kernel}): ${w.weight.toFixed(3)}`));
    chart.append(bar);
    const cx = x + barW / 2, cy = top + plotH + 10;
    chart.append(svg("text", { x: cx, y: cy, "text-anchor": "end",
      transform: `rotate(-45 ${cx} ${cy})` }, w.unit));
  });
  chart.append(svg("line", { x1: left, x2: width - right, y1: top + plotH, y2: top + plotH,
    class: "axis" }));
  $("chart").replaceChildren(chart);
}

function showTop(top) {
  const rows = top.map((t, i) => {
    const row = document.createElement("li");
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = t.label;
    label.title = `class ${t.index}`;
    if (i === 0) label.id = "top1-label";
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(t.probability * 100).toFixed(1)}%`;
    bar.append(fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = `${(t.probability * 100).toFixed(1)}%`;
    row.append(label, bar, pct);
    return row;
  });
  $("top").replaceChildren(...rows);
}

async function classify(file) {
  $("error").hidden = true;
  $("preview").src = URL.createObjectURL(file);
  $("preview").hidden = false;
  $("hint").textContent = file.name;
  setState("busy");
  const start = performance.now();
  try {
    const response = await fetch("v1/predict?topk=5&attention=1", { method: "POST", body: file });
    const answer = await response.json();
    if (!response.ok) {
      showError(answer.error || `HTTP ${response.status}`);
      return;
    }
    showTop(answer.top);
    drawChart(answer.attention || []);
    $("timing").textContent = `Answered in ${Math.round(performance.now() - start)} ms.`;
    $("results").hidden = false;
    setState("done");
  } catch (e) {
    showError(`The request failed: ${e}`);
  }
}

$("file").addEventListener("change", (e) => {
  if (e.target.files.length) classify(e.target.files[0]);
});
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) classify(e.dataTransfer.files[0]);
});
loadModel();
