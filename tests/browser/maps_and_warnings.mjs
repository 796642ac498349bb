// Usage: node maps_and_warnings.mjs <server url> <workflow.json> <screenshot.png>
// Loads the workflow into ComfyUI's front end, runs it, clicks the generated image of the
// Nested Attention Maps node, checks the source overlay, the prompt highlights and the Apply
// node warning, and saves a screenshot. Prints a JSON summary; exits 1 on failure.
// Nodes are looked up afresh at every step: the front end may rebuild them (same ids) after a run.
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const [url, workflowPath, screenshotPath] = process.argv.slice(2);
const workflow = JSON.parse(readFileSync(workflowPath, "utf8"));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
const messages = [];
page.on("console", (m) => { if (m.type() === "error" && !m.text().includes("api.comfy.org")) messages.push(m.text()); });
const nodeOf = (type) => `window.app.canvas.graph._nodes.find((n) => n.type === ${JSON.stringify(type)})`;
const viewOf = `${nodeOf("NestedAttentionMaps")}?.nestedSourceView?.container`;
let step = "start";

async function centre(type) {
  // Put the node near the top left of the view, at scale 1.
  await page.evaluate(`(() => {
    const n = ${nodeOf(type)};
    const ds = window.app.canvas.ds;
    ds.scale = 1;
    ds.offset[0] = 150 - n.pos[0];
    ds.offset[1] = 150 - n.pos[1];
    window.app.canvas.setDirty(true, true);
  })()`);
  await page.waitForTimeout(800);
}

try {
  step = "open ComfyUI";
  // A first visit opens the templates browser over the canvas; mark the tutorial as seen.
  await fetch(`${url}/settings/Comfy.TutorialCompleted`, { method: "POST", body: "true" });
  await page.goto(url);
  await page.waitForFunction(() => window.app?.graph && window.app.extensionManager, null, { timeout: 90000 });
  await page.waitForTimeout(3000);                       // let the front end finish restoring its tabs
  step = "load the workflow";
  await page.evaluate(async (wf) => { await window.app.loadGraphData(wf, true, true, "attention_maps"); }, workflow);
  step = "see subject words highlighted in the prompt";
  await page.waitForSelector("mark.nested-token[data-token='person']", { state: "attached", timeout: 15000 });
  step = "run the workflow";
  await page.evaluate(() => window.app.queuePrompt(0, 1));
  await page.waitForFunction(`${viewOf}?.dataset.point`, null, { timeout: 180000, polling: 500 });
  await page.waitForTimeout(1500);                       // a rebuilt node is redrawn by the refresh loop
  await page.waitForFunction(`${viewOf}?.dataset.point && ${viewOf}?.isConnected`, null, { timeout: 10000 });

  step = "click the generated image";
  await centre("NestedAttentionMaps");
  const canvas = await page.evaluateHandle(`${viewOf}.querySelector("canvas.nested-generated")`);
  const box = await canvas.asElement().boundingBox();
  if (!box || box.width === 0) throw new Error("the maps view is not visible");
  await page.mouse.click(box.x + box.width * 0.25, box.y + box.height * 0.5);
  await page.waitForFunction(`${viewOf}?.dataset.point?.startsWith("0.250")`, null, { timeout: 5000 });
  const point = await page.evaluate(`${viewOf}.dataset.point`);
  const peak = Number(await page.evaluate(`${viewOf}.dataset.peak`));
  const overlay = await page.evaluate(`(() => {
    const canvas = ${viewOf}.querySelector("canvas.nested-reference");
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let coloured = 0;
    for (let i = 0; i < data.length; i += 4) if (data[i + 3] > 0 && (data[i] !== data[i + 1] || data[i + 1] !== data[i + 2])) coloured++;
    return coloured / (data.length / 4);
  })()`);
  if (!(peak > 0) || overlay < 0.5) throw new Error(`no source overlay drawn (peak ${peak}, coloured fraction ${overlay})`);
  const pointWidget = await page.evaluate(`${nodeOf("NestedAttentionMaps")}.widgets.find((w) => w.name === "point_x").value`);
  await page.screenshot({ path: screenshotPath.replace(/\.png$/, "_source.png") });

  step = "see the warning of a word no prompt contains";
  const before = await page.evaluate(`${nodeOf("ApplyNestedAttention")}.nestedWarning ?? null`);
  await page.evaluate(`${nodeOf("ApplyNestedAttention")}.widgets.find((w) => w.name === "token").value = "giraffe"`);
  await page.waitForFunction(`${nodeOf("ApplyNestedAttention")}.nestedWarning?.includes("giraffe")`, null, { timeout: 5000 });
  const warning = await page.evaluate(`${nodeOf("ApplyNestedAttention")}.nestedWarning`);
  await centre("ApplyNestedAttention");
  await page.screenshot({ path: screenshotPath });
  console.log(JSON.stringify({ ok: true, point, peak, overlay, pointWidget, before, warning }));
  await browser.close();
} catch (error) {
  await page.screenshot({ path: screenshotPath }).catch(() => {});
  console.log(JSON.stringify({ ok: false, step, error: String(error), console: messages.slice(-10) }));
  await browser.close();
  process.exit(1);
}
