// Nested Attention: front-end helpers.
//  * Nested Text Encode shows its prompt with the words bound to subjects highlighted.
//  * Apply Nested Attention shows a status line under its widgets: which prompt holds its word, or,
//    in red, that the word is in no prompt reaching the sampler (before the prompt is queued).
//  * Nested Attention Maps shows the generated image beside each subject's reference photo: click a
//    point of the image to see which region of the photo it draws from.
//
// Every visual is a DOM widget (node.addDOMWidget): the classic canvas renderer places it over the
// canvas and "Nodes 2.0" (Comfy.VueNodes.Enabled) renders it inside the Vue node, so both show the
// same elements. Canvas drawing hooks such as onDrawForeground are not called for Vue nodes.
//
// The graph is read from the prompt the front end would queue (app.graphToPrompt): it flattens
// subgraphs (inner nodes get ids like "12:5"), drops bypassed and muted nodes and resolves primitive
// widgets exactly as execution will, so nodes inside subgraphs are covered and no link structure has
// to be walked here. It is re-read when the graph changes: the front end's own change event
// ("graphChanged", sent after every user edit), widget callbacks of the watched widgets, connections,
// nodes added or removed, and a workflow loaded. Nothing polls.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const APPLY = "ApplyNestedAttention";
const TEXT = "NestedTextEncode";
const MAPS = "NestedAttentionMaps";
const VIEW_SIZE = 200;
const REFRESH_DELAY_MS = 50; // coalesces the bursts of events one edit sends

// Latest maps per node key (see mapsKey). The front end may rebuild a workflow's nodes (same ids, new
// objects), e.g. when switching workflow tabs; a rebuilt node's view is redrawn from here on refresh.
const latestMaps = new Map();

const escapeRegExp = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
const wordPattern = (word) => new RegExp(`(^|[^\\p{L}\\p{N}_])(${escapeRegExp(word)})(?=$|[^\\p{L}\\p{N}_])`, "giu");
const escapeHtml = (text) => text.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
const widgetValue = (node, name) => node.widgets?.find((w) => w.name === name)?.value;

// ---------------------------------------------------------------- reading the queued prompt
/** A link in an API-format prompt: [source node id, output slot]. */
const isLink = (value) => Array.isArray(value) && value.length === 2 && Number.isInteger(value[1]) &&
  (typeof value[0] === "string" || typeof value[0] === "number");

/** The node object of an execution id ("7", or "12:5" for node 5 inside subgraph node 12). */
function nodeOfExecutionId(root, executionId) {
  const byId = (graph, id) => graph?.getNodeById(id) ?? graph?.getNodeById(Number(id)) ?? null;
  const parts = String(executionId).split(":");
  let graph = root;
  for (const part of parts.slice(0, -1)) graph = byId(graph, part)?.subgraph;
  return byId(graph, parts.at(-1));
}

/** Every node of the root graph and of every subgraph definition. */
function allNodes(root) {
  const nodes = [...(root?.nodes ?? [])];
  for (const subgraph of root?.subgraphs?.values?.() ?? []) nodes.push(...(subgraph.nodes ?? []));
  return nodes;
}

/**
 * What to show, from the API prompt: for each Apply node (by execution id) a status, for each Nested
 * Text Encode node the subject words bound in it. A prompt "reaches" an Apply node when it feeds the
 * positive input of a node downstream of the Apply node's model (a sampler or guider); with no such
 * node yet, every Nested Text Encode prompt counts.
 */
function analysePrompt(prompt) {
  const consumers = new Map();
  for (const [id, node] of Object.entries(prompt)) {
    for (const value of Object.values(node.inputs ?? {})) {
      if (!isLink(value)) continue;
      const source = String(value[0]);
      if (!consumers.has(source)) consumers.set(source, []);
      consumers.get(source).push(id);
    }
  }
  const textIds = Object.keys(prompt).filter((id) => prompt[id].class_type === TEXT);
  const textOf = (id) => {
    const text = prompt[id].inputs?.text;
    if (typeof text === "string") return text;
    // A prompt from another node (a string primitive): read its one string input, if it has one.
    const source = isLink(text) ? prompt[String(text[0])] : null;
    const strings = Object.values(source?.inputs ?? {}).filter((v) => typeof v === "string");
    return strings.length === 1 ? strings[0] : null; // null: unknown, never warned about
  };
  const promptsOf = (applyId) => {
    const samplers = [];
    const seen = new Set([applyId]);
    const queue = [...(consumers.get(applyId) ?? [])];
    while (queue.length) {
      const id = queue.shift();
      if (seen.has(id)) continue;
      seen.add(id);
      if ("positive" in (prompt[id].inputs ?? {})) samplers.push(id);
      else queue.push(...(consumers.get(id) ?? []));
    }
    if (!samplers.length) return textIds;
    const found = new Set();
    const stack = samplers.map((id) => prompt[id].inputs.positive);
    const visited = new Set();
    while (stack.length) {
      const value = stack.pop();
      if (!isLink(value)) continue;
      const id = String(value[0]);
      if (visited.has(id) || !prompt[id]) continue;
      visited.add(id);
      if (prompt[id].class_type === TEXT) found.add(id);
      else stack.push(...Object.values(prompt[id].inputs ?? {}));
    }
    return [...found];
  };

  const statuses = new Map();
  const words = new Map(textIds.map((id) => [id, new Set()]));
  for (const [id, node] of Object.entries(prompt)) {
    if (node.class_type !== APPLY) continue;
    const token = node.inputs?.token;
    if (typeof token !== "string") {
      statuses.set(id, { warning: false, text: "the word comes from another node" });
      continue;
    }
    const word = token.trim();
    if (!word) {
      statuses.set(id, { warning: true, text: "⚠ token is empty: write the subject's word" });
      continue;
    }
    const reaching = promptsOf(id);
    for (const textId of reaching) words.get(textId)?.add(word.toLowerCase());
    const holding = reaching.filter((textId) => {
      const text = textOf(textId);
      return text === null || wordPattern(word).test(text);
    });
    statuses.set(id, holding.length
      ? { warning: false, text: `✓ '${word}' is in ${holding.map((t) => `'${prompt[t]._meta?.title ?? TEXT}'`).join(", ")}` }
      : { warning: true, text: `⚠ '${word}' is in no Nested Text Encode prompt of the sampler` });
  }
  return { statuses, words };
}

// ---------------------------------------------------------------- refreshing on graph changes
let timer = null;
let running = false;
let again = false;
let reading = false; // while graphToPrompt runs: it may call widget callbacks itself (primitives)

function schedule() {
  if (timer !== null) return;
  timer = setTimeout(() => {
    timer = null;
    refresh();
  }, REFRESH_DELAY_MS);
}

async function refresh() {
  if (running) {
    again = true;
    return;
  }
  running = true;
  try {
    const root = app.rootGraph;
    if (!root) return;
    let prompt;
    reading = true;
    try {
      prompt = (await app.graphToPrompt(root)).output;
    } finally {
      reading = false;
    }
    show(root, analysePrompt(prompt));
  } catch (error) {
    console.warn("Nested Attention: could not read the graph", error);
  } finally {
    running = false;
    if (again) {
      again = false;
      schedule();
    }
  }
}

function show(root, { statuses, words }) {
  // Several execution ids may share one node object (a subgraph used twice): warn if any warns.
  const statusOf = new Map();
  for (const [id, status] of statuses) {
    const node = nodeOfExecutionId(root, id);
    if (node && (!statusOf.has(node) || (status.warning && !statusOf.get(node).warning))) statusOf.set(node, status);
  }
  const wordsOf = new Map();
  for (const [id, set] of words) {
    const node = nodeOfExecutionId(root, id);
    if (!node) continue;
    if (!wordsOf.has(node)) wordsOf.set(node, new Set());
    for (const word of set) wordsOf.get(node).add(word);
  }
  for (const node of allNodes(root)) {
    if (node.nestedStatusView) renderStatus(node.nestedStatusView, statusOf.get(node) ?? null);
    if (node.nestedTokenView) renderHighlights(node, [...(wordsOf.get(node) ?? [])]);
    if (node.nestedSourceView) restoreMaps(node);
  }
}

/** Calls schedule() after the widget's own callback, for edits in either renderer. */
function watchWidget(node, name) {
  const widget = node.widgets?.find((w) => w.name === name);
  if (!widget || widget.nestedWatched) return;
  widget.nestedWatched = true;
  const callback = widget.callback;
  widget.callback = function () {
    const result = callback?.apply(this, arguments);
    if (!reading) schedule();
    return result;
  };
}

/** Chain a handler after a node type's own prototype method. */
function chain(prototype, name, handler) {
  const original = prototype[name];
  prototype[name] = function () {
    const result = original?.apply(this, arguments);
    handler.apply(this, arguments);
    return result;
  };
}

/** A DOM widget that is not saved with the workflow; heights in pixels, or functions giving them. */
function domWidget(node, name, element, minHeight, maxHeight) {
  const widget = node.addDOMWidget(name, name, element, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: typeof minHeight === "function" ? minHeight : () => minHeight,
    getMaxHeight: typeof maxHeight === "function" ? maxHeight : () => maxHeight,
  });
  widget.serialize = false; // not in widgets_values: saved workflows keep their layout
  return widget;
}

// ---------------------------------------------------------------- Apply: status and warning
function addStatusView(node) {
  if (node.nestedStatusView) return; // the front end may announce a node more than once
  const view = document.createElement("div");
  view.className = "nested-status";
  Object.assign(view.style, {
    font: "12px sans-serif", lineHeight: "1.35", padding: "3px 6px", borderRadius: "4px", overflow: "hidden",
    whiteSpace: "normal", wordBreak: "break-word", boxSizing: "border-box",
  });
  node.nestedStatusView = view;
  renderStatus(view, null);
  domWidget(node, "nested_status", view, 40, 64);
}

function renderStatus(view, status) {
  const text = status?.text ?? "";
  if (view.textContent === text && view.dataset.state === (status ? (status.warning ? "warning" : "ok") : "")) return;
  view.textContent = text;
  view.dataset.state = status ? (status.warning ? "warning" : "ok") : "";
  view.setAttribute("role", status?.warning ? "alert" : "status");
  Object.assign(view.style, status?.warning
    ? { background: "#b3261e", color: "#fff", fontWeight: "600" }
    : { background: "transparent", color: "var(--descrip-text, #999)", fontWeight: "400" });
}

// ---------------------------------------------------------------- Nested Text Encode: highlights
function addHighlightView(node) {
  if (node.nestedTokenView) return;
  const view = document.createElement("div");
  view.className = "nested-token-view";
  Object.assign(view.style, {
    font: "12px sans-serif", lineHeight: "1.4", padding: "4px 6px", background: "rgba(0,0,0,0.25)",
    borderRadius: "4px", overflow: "auto", whiteSpace: "pre-wrap", color: "var(--input-text, #ddd)",
    boxSizing: "border-box",
  });
  node.nestedTokenView = view;
  domWidget(node, "nested_token_view", view, 44, 90);
}

function renderHighlights(node, words) {
  const view = node.nestedTokenView;
  const text = String(widgetValue(node, "text") ?? "");
  const key = JSON.stringify([text, words]);
  if (view.dataset.key === key) return;
  view.dataset.key = key;
  let html = escapeHtml(text);
  for (const word of words) {
    html = html.replace(wordPattern(escapeHtml(word)),
      (_, before, found) => `${before}<mark class="nested-token" data-token="${escapeHtml(word)}" ` +
        `style="background:#f0b429;color:#111;border-radius:3px;padding:0 2px">${found}</mark>`);
  }
  view.innerHTML = html || "<i style='opacity:.6'>(empty prompt)</i>";
  view.title = words.length ? `subject words: ${words.join(", ")}` : "no Apply Nested Attention node uses this prompt";
}

// ---------------------------------------------------------------- Maps: interactive source view
function viewUrl(ref) {
  const params = new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder ?? "", type: ref.type ?? "temp" });
  return api.apiURL(`/view?${params}`);
}

const imageCache = new Map();
function loadImage(ref) {
  const url = viewUrl(ref);
  if (!imageCache.has(url)) {
    imageCache.set(url, new Promise((resolve, reject) => {
      const image = new Image();
      image.onload = () => resolve(image);
      image.onerror = () => {
        imageCache.delete(url);
        reject(new Error(`could not load ${url}`));
      };
      image.src = url;
    }));
  }
  return imageCache.get(url);
}

const RAMP = [[0, 0, 5], [82, 18, 120], [184, 54, 120], [250, 140, 89], [252, 252, 191]];
function ramp(value) {
  const scaled = Math.min(Math.max(value, 0), 1) * (RAMP.length - 1);
  const low = Math.min(Math.floor(scaled), RAMP.length - 2);
  const t = scaled - low;
  return RAMP[low].map((c, i) => Math.round(c * (1 - t) + RAMP[low + 1][i] * t));
}

/** Heat over the subject's reference photos for the cell at (x, y); mirrors the Python node. */
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
  const { genCanvas, refCanvas } = view;
  const g = genCanvas.getContext("2d");
  g.clearRect(0, 0, VIEW_SIZE, VIEW_SIZE);
  if (view.generated) g.drawImage(view.generated, 0, 0, VIEW_SIZE, VIEW_SIZE);
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
  const photos = view.reference;
  const shown = Math.min(photo, photos.length - 1);
  if (shown >= 0) r.drawImage(photos[shown], 0, 0, VIEW_SIZE, VIEW_SIZE);
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
  // Which input photo is shown: its 1-based place in the node's `reference` batch.
  const place = entry.reference_index?.[shown];
  const which = place != null ? `reference photo ${place + 1}` : "the photo (no reference photo connected)";
  view.caption.textContent = `${entry.subject}: point (${x.toFixed(2)}, ${y.toFixed(2)}) draws on these regions of ${which}`;
}

function addSourceView(node) {
  if (node.nestedSourceView) return;
  const container = document.createElement("div");
  container.className = "nested-source-view";
  Object.assign(container.style, { display: "flex", flexDirection: "column", gap: "4px", font: "12px sans-serif",
                                   color: "var(--input-text, #ddd)", pointerEvents: "auto" });
  const row = document.createElement("div");
  Object.assign(row.style, { display: "flex", gap: "6px" });
  const genCanvas = document.createElement("canvas");
  const refCanvas = document.createElement("canvas");
  for (const [canvas, cls] of [[genCanvas, "nested-generated"], [refCanvas, "nested-reference"]]) {
    canvas.width = canvas.height = VIEW_SIZE;
    canvas.className = cls;
    // Two squares sharing the node's width, at most VIEW_SIZE each: the node's width is set by the
    // renderer (and by saved workflows), so the view fits it rather than the other way round.
    Object.assign(canvas.style, { flex: "1 1 0", minWidth: "0", maxWidth: `${VIEW_SIZE}px`, aspectRatio: "1",
                                  background: "#222", borderRadius: "4px" });
    row.appendChild(canvas);
  }
  genCanvas.style.cursor = "crosshair";
  const select = document.createElement("select");
  select.className = "nested-subject-select";
  const caption = document.createElement("div");
  caption.className = "nested-source-caption";
  caption.textContent = "Run the graph, then click the generated image.";
  container.append(select, row, caption);
  const view = { container, genCanvas, refCanvas, select, caption, entries: [], generated: null, reference: [],
                 point: null };
  node.nestedSourceView = view;

  genCanvas.addEventListener("pointerdown", (event) => {
    event.stopPropagation(); // a click on the image picks a point; it does not drag the node
    const entry = view.entries[Number(select.value) || 0];
    if (!entry?.weights) return;
    const box = genCanvas.getBoundingClientRect();
    const x = Math.min(Math.max((event.clientX - box.left) / box.width, 0), 0.999);
    const y = Math.min(Math.max((event.clientY - box.top) / box.height, 0), 0.999);
    view.point = [x, y];
    drawSource(view, entry, x, y);
    for (const [name, value] of [["point_x", x], ["point_y", y]]) {
      const widget = node.widgets?.find((w) => w.name === name);
      if (widget) {
        widget.value = Math.round(value * 100) / 100;
        widget.callback?.(widget.value);
      }
    }
  });
  select.addEventListener("change", () => {
    showSubject(view, Number(select.value) || 0).catch((error) => console.error("Nested Attention Maps:", error));
  });
  // Tall enough for the select, the two squares at the node's current width and the caption.
  const height = () => Math.min(VIEW_SIZE, Math.max(60, ((node.size?.[0] ?? 2 * VIEW_SIZE) - 36) / 2)) + 64;
  domWidget(node, "nested_source_view", container, height, () => height() + 30);
}

/** Draw subject `index` of the view's entries: its own reference photos beside the generated image. */
async function showSubject(view, index) {
  const entry = view.entries[index];
  if (!entry) return;
  view.generated = entry.generated ? await loadImage(entry.generated) : null;
  view.reference = await Promise.all((entry.reference ?? []).map(loadImage));
  const [x, y] = view.point ?? [0.5, 0.5];
  if (entry.weights) drawSource(view, entry, x, y);
  else view.caption.textContent = `${entry.subject}: encoded without Q-Former maps (re-encode it to see the source view)`;
}

async function showMaps(node, entries) {
  const view = node.nestedSourceView;
  if (!view || !entries?.length || view.entries === entries) return;
  view.entries = entries;
  view.select.innerHTML = entries.map((e, i) => `<option value="${i}">${escapeHtml(e.subject)}</option>`).join("");
  view.select.style.display = entries.length > 1 ? "" : "none";
  view.point = [Number(widgetValue(node, "point_x") ?? 0.5), Number(widgetValue(node, "point_y") ?? 0.5)];
  await showSubject(view, 0);
}

/** The key of a maps node across rebuilds: its id, prefixed by its subgraph's id inside a subgraph. */
function mapsKey(node) {
  const graph = node.graph;
  return graph && graph.rootGraph && graph.rootGraph !== graph ? `${graph.id}:${node.id}` : String(node.id);
}

function restoreMaps(node) {
  const entries = latestMaps.get(mapsKey(node));
  if (entries && node.nestedSourceView.entries !== entries) {
    showMaps(node, entries).catch((error) => console.error("Nested Attention Maps:", error));
  }
}

// ---------------------------------------------------------------- registration
app.registerExtension({
  name: "nested_attention.ui",
  async setup() {
    api.addEventListener("graphChanged", schedule);
    schedule();
  },
  async afterConfigureGraph() {
    schedule();
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (![APPLY, TEXT, MAPS].includes(nodeData.name)) return;
    for (const name of ["onConnectionsChange", "onAdded", "onRemoved"]) chain(nodeType.prototype, name, schedule);
    if (nodeData.name === MAPS) {
      chain(nodeType.prototype, "onExecuted", function (message) {
        if (!message?.nested_maps) return;
        latestMaps.set(mapsKey(this), message.nested_maps);
        showMaps(this, message.nested_maps).catch((error) => console.error("Nested Attention Maps:", error));
      });
    }
  },
  nodeCreated(node) {
    if (node.comfyClass === TEXT) {
      addHighlightView(node);
      watchWidget(node, "text");
    }
    if (node.comfyClass === APPLY) {
      addStatusView(node);
      watchWidget(node, "token");
    }
    if (node.comfyClass === MAPS) addSourceView(node);
    schedule();
  },
});
