// Nested Attention: front-end helpers.
//  * Nested Text Encode shows its prompt with the words bound to subjects highlighted.
//  * Apply Nested Attention shows a red warning when its word is in no prompt that reaches the
//    sampler, before the prompt is queued.
//  * Nested Attention Maps shows the generated image and the reference photo side by side: click a
//    point of the image to see which region of the photo it draws from.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const APPLY = "ApplyNestedAttention";
const TEXT = "NestedTextEncode";
const MAPS = "NestedAttentionMaps";
const REFRESH_MS = 400;
const VIEW_SIZE = 200;
// Latest maps per node id. The front end may rebuild a workflow's nodes (same ids, new objects)
// after a run; the refresh loop redraws a rebuilt node's view from here.
const latestMaps = new Map();

const widgetValue = (node, name) => node.widgets?.find((w) => w.name === name)?.value;
const escapeRegExp = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
const wordPattern = (word) => new RegExp(`(^|[^\\p{L}\\p{N}_])(${escapeRegExp(word)})(?=$|[^\\p{L}\\p{N}_])`, "giu");
const escapeHtml = (text) => text.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);

// ---------------------------------------------------------------- graph helpers
function linkedNode(graph, linkId, upstream) {
  const link = graph.links instanceof Map ? graph.links.get(linkId) : graph.links?.[linkId];
  if (!link) return null;
  return graph.getNodeById(upstream ? link.origin_id : link.target_id);
}

function downstream(graph, node) {
  const out = [];
  for (const output of node.outputs ?? []) {
    for (const id of output.links ?? []) {
      const next = linkedNode(graph, id, false);
      if (next) out.push(next);
    }
  }
  return out;
}

function upstreamOf(graph, node, inputName) {
  const input = node.inputs?.find((i) => i.name === inputName);
  return input?.link != null ? linkedNode(graph, input.link, true) : null;
}

/** The Nested Text Encode prompts that feed the positive input of a sampler using this model. */
function promptsReaching(graph, apply) {
  const samplers = [];
  const seen = new Set();
  const queue = [apply];
  while (queue.length) {
    const node = queue.shift();
    if (seen.has(node.id)) continue;
    seen.add(node.id);
    if (node !== apply && node.inputs?.some((i) => i.name === "positive")) samplers.push(node);
    else queue.push(...downstream(graph, node));
  }
  const prompts = new Set();
  for (const sampler of samplers) {
    const stack = [upstreamOf(graph, sampler, "positive")];
    const visited = new Set();
    while (stack.length) {
      const node = stack.pop();
      if (!node || visited.has(node.id)) continue;
      visited.add(node.id);
      if (node.type === TEXT) prompts.add(node);
      for (const input of node.inputs ?? []) if (input.link != null) stack.push(linkedNode(graph, input.link, true));
    }
  }
  return samplers.length ? [...prompts] : graph._nodes.filter((n) => n.type === TEXT);
}

function subjectWords(graph) {
  return graph._nodes
    .filter((n) => n.type === APPLY && n.mode === 0)
    .map((n) => String(widgetValue(n, "token") ?? "").trim())
    .filter(Boolean);
}

// ---------------------------------------------------------------- Apply: warnings
function refreshWarnings(graph) {
  for (const node of graph._nodes.filter((n) => n.type === APPLY)) {
    const word = String(widgetValue(node, "token") ?? "").trim();
    let warning = null;
    if (!word) warning = "token is empty";
    else if (!promptsReaching(graph, node).some((p) => wordPattern(word).test(String(widgetValue(p, "text") ?? ""))))
      warning = `'${word}' is in no Nested Text Encode prompt of the sampler`;
    if (warning !== node.nestedWarning) {
      node.nestedWarning = warning;
      node.setDirtyCanvas?.(true, true);
    }
  }
}

function drawWarning(node, ctx) {
  if (!node.nestedWarning || node.flags?.collapsed) return;
  const title = globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  ctx.save();
  ctx.fillStyle = "#b3261e";
  ctx.beginPath();
  if (ctx.roundRect) ctx.roundRect(0, -title - 24, node.size[0], 20, 4);
  else ctx.rect(0, -title - 24, node.size[0], 20);
  ctx.fill();
  ctx.fillStyle = "#fff";
  ctx.font = "12px sans-serif";
  ctx.fillText(`⚠ ${node.nestedWarning}`, 6, -title - 10);
  ctx.restore();
}

// ---------------------------------------------------------------- Nested Text Encode: highlights
function addHighlightView(node) {
  if (node.nestedTokenView) return;             // the front end may announce a node more than once
  const view = document.createElement("div");
  view.className = "nested-token-view";
  Object.assign(view.style, {
    font: "12px sans-serif", lineHeight: "1.4", padding: "4px 6px", background: "rgba(0,0,0,0.25)",
    borderRadius: "4px", overflow: "auto", whiteSpace: "pre-wrap", color: "var(--input-text, #ddd)",
  });
  const widget = node.addDOMWidget("nested_token_view", "nested_token_view", view, { serialize: false, hideOnZoom: false });
  widget.serialize = false;
  widget.computeLayoutSize = () => ({ minHeight: 44, maxHeight: 90, minWidth: 200 });
  node.nestedTokenView = view;
}

function refreshHighlights(graph) {
  const words = [...new Set(subjectWords(graph).map((w) => w.toLowerCase()))];
  for (const node of graph._nodes.filter((n) => n.type === TEXT)) {
    const view = node.nestedTokenView;
    if (!view) continue;
    const text = String(widgetValue(node, "text") ?? "");
    const key = JSON.stringify([text, words]);
    if (view.dataset.key === key) continue;
    view.dataset.key = key;
    let html = escapeHtml(text);
    for (const word of words) {
      html = html.replace(wordPattern(escapeHtml(word)),
        (_, before, found) => `${before}<mark class="nested-token" data-token="${escapeHtml(word)}" ` +
          `style="background:#f0b429;color:#111;border-radius:3px;padding:0 2px">${found}</mark>`);
    }
    view.innerHTML = html || "<i style='opacity:.6'>(empty prompt)</i>";
    view.title = words.length ? `subject words: ${words.join(", ")}` : "no Apply Nested Attention node in the graph";
  }
}

// ---------------------------------------------------------------- Maps: interactive source view
function viewUrl(ref) {
  const params = new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder ?? "", type: ref.type ?? "temp" });
  return api.apiURL(`/view?${params}`);
}

function loadImage(ref) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = reject;
    image.src = viewUrl(ref);
  });
}

const RAMP = [[0, 0, 5], [82, 18, 120], [184, 54, 120], [250, 140, 89], [252, 252, 191]];
function ramp(value) {
  const scaled = Math.min(Math.max(value, 0), 1) * (RAMP.length - 1);
  const low = Math.min(Math.floor(scaled), RAMP.length - 2);
  const t = scaled - low;
  return RAMP[low].map((c, i) => Math.round(c * (1 - t) + RAMP[low + 1][i] * t));
}

/** Heat over the reference photo for the cell at (x, y); mirrors the Python node. */
function sourceHeat(entry, x, y) {
  const [gh, gw] = entry.grid;
  const tokens = entry.tokens;
  const cell = Math.min(Math.floor(y * gh), gh - 1) * gw + Math.min(Math.floor(x * gw), gw - 1);
  let weights = entry.weights.slice(cell * tokens, (cell + 1) * tokens);
  let photo = 0;
  if (entry.token_photo && Math.max(...entry.token_photo) >= 0) {
    const mass = [];
    entry.token_photo.forEach((p, t) => { mass[p] = (mass[p] ?? 0) + weights[t]; });
    photo = mass.indexOf(Math.max(...mass.map((m) => m ?? 0)));
    weights = weights.map((w, t) => (entry.token_photo[t] === photo ? w : 0));
  }
  const total = weights.reduce((a, b) => a + b, 0) || 1;
  const [ph, pw] = entry.patch_grid;
  const heat = new Float32Array(ph * pw);
  weights.forEach((w, t) => {
    if (!w) return;
    for (let i = 0; i < ph * pw; i++) heat[i] += (w / total) * entry.patch_maps[t * ph * pw + i];
  });
  return { heat, photo, size: [ph, pw] };
}

function drawSource(view, entry, x, y) {
  const { generated, reference, genCanvas, refCanvas } = view;
  const g = genCanvas.getContext("2d");
  g.clearRect(0, 0, VIEW_SIZE, VIEW_SIZE);
  if (generated) g.drawImage(generated, 0, 0, VIEW_SIZE, VIEW_SIZE);
  g.strokeStyle = "#fff";
  g.lineWidth = 3;
  g.beginPath();
  g.arc(x * VIEW_SIZE, y * VIEW_SIZE, 6, 0, 2 * Math.PI);
  g.stroke();
  g.fillStyle = "#1ec8ff";
  g.fill();

  const r = refCanvas.getContext("2d");
  r.clearRect(0, 0, VIEW_SIZE, VIEW_SIZE);
  const { heat, photo, size } = sourceHeat(entry, x, y);
  const image = reference[Math.min(photo, reference.length - 1)];
  if (image) r.drawImage(image, 0, 0, VIEW_SIZE, VIEW_SIZE);
  const peak = Math.max(...heat) || 1;
  const [ph, pw] = size;
  const cellW = VIEW_SIZE / pw;
  const cellH = VIEW_SIZE / ph;
  for (let i = 0; i < ph; i++) {
    for (let j = 0; j < pw; j++) {
      const value = heat[i * pw + j] / peak;
      const [cr, cg, cb] = ramp(value);
      r.fillStyle = `rgba(${cr},${cg},${cb},${0.15 + 0.55 * value})`;
      r.fillRect(j * cellW, i * cellH, Math.ceil(cellW), Math.ceil(cellH));
    }
  }
  view.container.dataset.point = `${x.toFixed(3)},${y.toFixed(3)}`;
  view.container.dataset.heat = JSON.stringify(Array.from(heat)); // the map shown, unscaled (tests read it)
  view.container.dataset.photo = String(photo);
  view.caption.textContent = `${entry.subject}: point (${x.toFixed(2)}, ${y.toFixed(2)}) draws on these regions of the photo`;
}

function addSourceView(node) {
  if (node.nestedSourceView) return;
  const container = document.createElement("div");
  container.className = "nested-source-view";
  Object.assign(container.style, { display: "flex", flexDirection: "column", gap: "4px", font: "12px sans-serif",
                                   color: "#ddd", pointerEvents: "auto" });
  const row = document.createElement("div");
  Object.assign(row.style, { display: "flex", gap: "6px" });
  const genCanvas = document.createElement("canvas");
  const refCanvas = document.createElement("canvas");
  for (const [canvas, cls] of [[genCanvas, "nested-generated"], [refCanvas, "nested-reference"]]) {
    canvas.width = canvas.height = VIEW_SIZE;
    canvas.className = cls;
    Object.assign(canvas.style, { width: `${VIEW_SIZE}px`, height: `${VIEW_SIZE}px`, background: "#222", borderRadius: "4px" });
    row.appendChild(canvas);
  }
  genCanvas.style.cursor = "crosshair";
  const select = document.createElement("select");
  select.className = "nested-subject-select";
  const caption = document.createElement("div");
  caption.textContent = "Run the graph, then click the generated image.";
  container.append(select, row, caption);
  const view = { container, genCanvas, refCanvas, select, caption, entries: [], generated: null, reference: [] };
  node.nestedSourceView = view;

  genCanvas.addEventListener("pointerdown", (event) => {
    event.stopPropagation();
    const entry = view.entries[Number(select.value) || 0];
    if (!entry?.weights) return;
    const box = genCanvas.getBoundingClientRect();
    const x = Math.min(Math.max((event.clientX - box.left) / box.width, 0), 0.999);
    const y = Math.min(Math.max((event.clientY - box.top) / box.height, 0), 0.999);
    drawSource(view, entry, x, y);
    for (const [name, value] of [["point_x", x], ["point_y", y]]) {
      const widget = node.widgets?.find((w) => w.name === name);
      if (widget) widget.value = Math.round(value * 100) / 100;
    }
    node.nestedSelection = { x, y, subject: entry.subject };
  });
  select.addEventListener("change", () => {
    const entry = view.entries[Number(select.value) || 0];
    if (entry?.weights) drawSource(view, entry, 0.5, 0.5);
  });
  const widget = node.addDOMWidget("nested_source_view", "nested_source_view", container, { serialize: false, hideOnZoom: false });
  widget.serialize = false;
  widget.computeLayoutSize = () => ({ minHeight: VIEW_SIZE + 60, minWidth: 2 * VIEW_SIZE + 20 });
}

async function showMaps(node, entries) {
  const view = node.nestedSourceView;
  if (!view || !entries?.length || node.nestedMaps === entries) return;
  node.nestedMaps = entries;
  view.container.dataset.nodeId = String(node.id);
  view.entries = entries;
  view.select.innerHTML = entries.map((e, i) => `<option value="${i}">${escapeHtml(e.subject)}</option>`).join("");
  view.select.style.display = entries.length > 1 ? "" : "none";
  const first = entries[0];
  view.generated = first.generated ? await loadImage(first.generated) : null;
  view.reference = await Promise.all((first.reference ?? []).map(loadImage));
  const x = Number(widgetValue(node, "point_x") ?? 0.5);
  const y = Number(widgetValue(node, "point_y") ?? 0.5);
  if (first.weights) drawSource(view, first, x, y);
  else view.caption.textContent = `${first.subject}: encoded without Q-Former maps (re-encode it to see the source view)`;
}

function refreshMaps(graph) {
  for (const node of graph._nodes.filter((n) => n.type === MAPS)) {
    const entries = latestMaps.get(String(node.id));
    if (entries && node.nestedMaps !== entries) {
      showMaps(node, entries).catch((error) => console.error("Nested Attention Maps:", error));
    }
  }
}

// ---------------------------------------------------------------- registration
app.registerExtension({
  name: "nested_attention.ui",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name === APPLY) {
      const draw = nodeType.prototype.onDrawForeground;
      nodeType.prototype.onDrawForeground = function (ctx) {
        draw?.apply(this, arguments);
        drawWarning(this, ctx);
      };
    }
    if (nodeData.name === MAPS) {
      const executed = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        executed?.apply(this, arguments);
        if (message?.nested_maps) latestMaps.set(String(this.id), message.nested_maps);
        showMaps(this, message?.nested_maps).catch((error) => console.error("Nested Attention Maps:", error));
      };
    }
  },
  nodeCreated(node) {
    if (node.comfyClass === TEXT) addHighlightView(node);
    if (node.comfyClass === MAPS) addSourceView(node);
  },
  setup() {
    setInterval(() => {
      const graph = app.graph;
      if (!graph?._nodes) return;
      refreshWarnings(graph);
      refreshHighlights(graph);
      refreshMaps(graph);
    }, REFRESH_MS);
  },
});
