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
  // Two points: the source heat shown for each is a distribution over the photo's patches, and
  // it moves with the point (a redraw that ignored the point, or an empty map, would fail).
  const clickAt = async (fx, fy) => {
    await page.mouse.click(box.x + box.width * fx, box.y + box.height * fy);
    await page.waitForFunction(`${viewOf}?.dataset.point?.startsWith("${fx.toFixed(3)}")`, null, { timeout: 5000 });
    const heat = JSON.parse(await page.evaluate(`${viewOf}.dataset.heat`));
    const sum = heat.reduce((a, b) => a + b, 0);
    if (Math.abs(sum - 1) > 1e-3 || Math.min(...heat) < 0) throw new Error(`source heat is not a distribution (sum ${sum})`);
    return heat;
  };
  const other = await clickAt(0.75, 0.2);
  const heat = await clickAt(0.25, 0.5);
  const moved = Math.max(...heat.map((h, i) => Math.abs(h - other[i])));
  if (!(moved > 1e-6)) throw new Error("the source heat did not change with the clicked point");
  const point = await page.evaluate(`${viewOf}.dataset.point`);
  const peak = Math.max(...heat);
  const pointWidget = await page.evaluate(`${nodeOf("NestedAttentionMaps")}.widgets.find((w) => w.name === "point_x").value`);
  await page.screenshot({ path: screenshotPath.replace(/\.png$/, "_source.png") });

  step = "see the warning of a word no prompt contains";
  const before = await page.evaluate(`${nodeOf("ApplyNestedAttention")}.nestedWarning ?? null`);
  await page.evaluate(`${nodeOf("ApplyNestedAttention")}.widgets.find((w) => w.name === "token").value = "giraffe"`);
  await page.waitForFunction(`${nodeOf("ApplyNestedAttention")}.nestedWarning?.includes("giraffe")`, null, { timeout: 5000 });
  const warning = await page.evaluate(`${nodeOf("ApplyNestedAttention")}.nestedWarning`);
  await centre("ApplyNestedAttention");
  await page.screenshot({ path: screenshotPath });
  console.log(JSON.stringify({ ok: true, point, peak, moved, pointWidget, before, warning }));
  await browser.close();
} catch (error) {
  await page.screenshot({ path: screenshotPath }).catch(() => {});
  console.log(JSON.stringify({ ok: false, step, error: String(error), console: messages.slice(-10) }));
  await browser.close();
  process.exit(1);
}
