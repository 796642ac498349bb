// Usage: node maps_and_warnings.mjs <config.json>, the config holding
//   url: the server; workflow: the maps workflow (UI format); prefix: where screenshots go (path prefix);
//   modes: ["classic" (the canvas renderer) and/or "vue" (Nodes 2.0, Comfy.VueNodes.Enabled)];
//   modelsWorkflow, models (optional): a workflow whose model files are all missing on the server, and
//     the [file name, folder] the missing-models dialog must offer to download.
// First, if modelsWorkflow is given: loads it and reads the missing-models dialog (front end 1.32) or
// the Issues panel behind its "View details" (1.58): each file, its folder, a Download button.
// Then for each mode: sets the renderer through the server's settings API, opens ComfyUI's front end in a
// fresh browser context, loads the two-subject maps workflow and checks, as a user sees them (text
// shown in the page, and canvas pixels):
//   * the subject words highlighted in the prompt, and each Apply node's status line;
//   * after a run, the maps view: clicking the generated image moves the source heat over the
//     reference photo, and the second subject's view shows the second reference photo;
//   * the red warning of an Apply node whose word is in no prompt, after typing another word into
//     its token widget (the canvas widget's dialog, or the Vue input), and of the other Apply node
//     once the prompt node is deleted, gone again when the workflow is loaded again;
//   * the same inside a subgraph: the Apply node converted to a subgraph still finds its word in the
//     root graph's prompt, and is warned once its word is changed.
// Screenshots: <prefix>_missing_models.png, <prefix>_<mode>_{maps,warning,subgraph}.png. Prints one
// JSON line; exits 1 on failure.
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const { url, prefix, modes } = config;
const workflow = JSON.parse(readFileSync(config.workflow, "utf8"));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});

async function setting(id, value) {
  const response = await fetch(`${url}/settings/${id}`, { method: "POST", body: JSON.stringify(value) });
  if (!response.ok) throw new Error(`setting ${id}: HTTP ${response.status}`);
}

// Console output of the page that concerns this pack: errors from its script, and deprecation
// warnings whose stack passes through it (the front end warns about deprecated accessors).
const PACK_SCRIPT = "/extensions/nested-attention/";
function watchConsole(page, problems) {
  page.on("pageerror", (error) => { if (String(error.stack).includes(PACK_SCRIPT)) problems.push(`page error: ${error.stack}`); });
  page.on("console", (message) => {
    const text = message.text();
    if (message.type() === "error" && text.includes(PACK_SCRIPT)) problems.push(`console error: ${text}`);
    if (text.startsWith("NESTED-DEPRECATION ")) problems.push(text);
  });
  return page.addInitScript((script) => {
    const warn = console.warn;
    console.warn = function (...args) {
      const stack = new Error().stack ?? "";
      if (/deprecat/i.test(String(args[0])) && stack.includes(script)) warn.call(console, `NESTED-DEPRECATION ${args[0]}\n${stack}`);
      return warn.apply(console, args);
    };
  }, PACK_SCRIPT);
}

async function openFrontEnd(mode, problems) {
  await setting("Comfy.TutorialCompleted", true); // a first visit would open the templates browser
  await setting("Comfy.VueNodes.Enabled", mode === "vue");
  const context = await browser.newContext({ viewport: { width: 1600, height: 1000 } });
  const page = await context.newPage();
  await watchConsole(page, problems);
  await page.goto(url);
  await page.waitForFunction(() => window.app?.graph && window.app.extensionManager, null, { timeout: 90000 });
  await page.waitForTimeout(2500); // let the front end finish restoring its tabs
  return { context, page };
}

async function missingModels() {
  const result = { mode: "missing models" };
  const problems = [];
  const { context, page } = await openFrontEnd("classic", problems);
  try {
    const models = JSON.parse(readFileSync(config.modelsWorkflow, "utf8"));
    await page.evaluate(async (wf) => { await window.app.loadGraphData(wf, true, true, "missing_models"); }, models);
    // 1.32 opens a dialog; 1.58 shows a toast whose "View details" opens the Issues panel.
    await page.waitForFunction(() => /Missing Models|View details/.test(document.body.innerText), null, { timeout: 20000 });
    const details = page.getByRole("button", { name: "View details" });
    if (await details.count()) await details.first().click();
    await page.getByText("Missing Models").first().waitFor({ state: "visible", timeout: 10000 });
    await page.waitForTimeout(1500); // the panel fills in as the files are checked
    const lines = (await page.evaluate(() => document.body.innerText)).split("\n").map((l) => l.trim());
    result.rows = [];
    for (const [name, folder] of config.models) {
      // 1.32: "folder / name"; 1.58: the name, then the folder on the next line.
      const at = lines.findIndex((l) => l === `${folder} / ${name}` || l === name);
      if (at < 0) throw new Error(`${name} is not listed`);
      const shown = lines[at] === name ? lines[at + 1] : folder;
      if (shown !== folder) throw new Error(`${name} is shown in folder '${shown}', not '${folder}'`);
      result.rows.push(`${shown} / ${name}`);
    }
    // One Download button per file ("Download (size)" in 1.32, "Download" in 1.58), besides "Download all".
    result.downloads = await page.locator("button").filter({ hasText: /^\s*Download(\s*\(.*\))?\s*$/ }).count();
    if (result.downloads < config.models.length) throw new Error(`${result.downloads} Download buttons`);
    const text = lines.join("\n");
    for (const bad of ["Invalid workflow", "Invalid directory", "Unknown"])
      if (text.includes(bad)) throw new Error(`the page says '${bad}'`);
    await page.screenshot({ path: `${prefix}_missing_models.png` });
    if (problems.length) throw new Error(problems.join("\n"));
    result.ok = true;
  } catch (error) {
    await page.screenshot({ path: `${prefix}_missing_models_failed.png` }).catch(() => {});
    Object.assign(result, { ok: false, error: String(error), problems });
  }
  await context.close();
  return result;
}

async function runMode(mode) {
  const result = { mode };
  const problems = [];
  let step = "open ComfyUI";
  const { context, page } = await openFrontEnd(mode, problems);
  const shot = (name) => page.screenshot({ path: `${prefix}_${mode}_${name}.png` });

  // Put a node of the graph on screen (top left, scale 1) and let the renderer follow.
  async function centre(title, x = 200, y = 160) {
    const found = await page.evaluate(([title, x, y]) => {
      const canvas = window.app.canvas;
      const node = canvas.graph.nodes.find((n) => n.title === title);
      if (!node) return null;
      canvas.ds.scale = 1;
      canvas.ds.offset[0] = x - node.pos[0];
      canvas.ds.offset[1] = y - node.pos[1];
      canvas.setDirty(true, true);
      return String(node.id);
    }, [title, x, y]);
    if (found === null) throw new Error(`no node '${title}' in the graph shown`);
    await page.waitForTimeout(700);
    return found;
  }
  const visibleText = (selector, text) => page.locator(selector).filter({ hasText: text }).first();

  // Type a word into an Apply node's token widget the way a user does in each renderer.
  async function typeToken(title, value) {
    const id = await centre(title);
    if (mode === "vue") {
      const input = page.locator(`[data-node-id="${id}"] input[aria-label="token"]`);
      await input.fill(value);
      await input.press("Enter");
    } else {
      const [x, y] = await page.evaluate((title) => {
        const canvas = window.app.canvas;
        const node = canvas.graph.nodes.find((n) => n.title === title);
        const widget = node.widgets.find((w) => w.name === "token");
        const [cx, cy] = canvas.ds.convertOffsetToCanvas([node.pos[0] + node.size[0] / 2, node.pos[1] + widget.y + 10]);
        const box = canvas.canvas.getBoundingClientRect();
        return [box.left + cx, box.top + cy];
      }, title);
      await page.mouse.click(x, y); // litegraph opens its value dialog
      const input = page.locator(".graphdialog input").first();
      await input.fill(value);
      await input.press("Enter");
    }
  }

  try {
    const vueNodes = await page.evaluate(() => document.querySelectorAll("[data-node-id]").length);
    step = "load the workflow";
    await page.evaluate(async (wf) => { await window.app.loadGraphData(wf, true, true, "nested_maps"); }, workflow);
    await page.waitForTimeout(1000);
    result.vueNodes = await page.evaluate(() => document.querySelectorAll("[data-node-id]").length);
    if ((mode === "vue") !== result.vueNodes > 0 || vueNodes > result.vueNodes) throw new Error(`renderer is not ${mode}`);

    step = "see the subject words highlighted in the prompt";
    await centre("Positive prompt");
    for (const word of ["person", "dog"]) {
      const mark = page.locator(`mark.nested-token[data-token='${word}']`).first();
      await mark.waitFor({ state: "visible", timeout: 15000 });
      if ((await mark.textContent()) !== word) throw new Error(`highlight shows '${await mark.textContent()}'`);
    }
    step = "see the Apply node's status";
    await centre("Bind the person");
    await visibleText(".nested-status", "✓ 'person' is in 'Positive prompt'").waitFor({ state: "visible", timeout: 10000 });

    step = "run the workflow";
    await page.getByRole("button", { name: "Run", exact: true }).first().click();
    const caption = page.locator(".nested-source-caption").first();
    await page.waitForFunction(() => document.querySelector(".nested-source-caption")?.textContent.includes("reference photo"),
                               null, { timeout: 180000, polling: 500 });

    step = "click the generated image";
    await centre("Nested Attention Maps");
    const generated = page.locator("canvas.nested-generated").first();
    const reference = page.locator("canvas.nested-reference").first();
    await generated.waitFor({ state: "visible", timeout: 10000 });
    const clickAt = async (fx, fy) => {
      // Measured before each click: selecting the node may open a side panel and resize the view.
      await page.waitForTimeout(500);
      const box = await generated.boundingBox();
      await page.mouse.click(box.x + box.width * fx, box.y + box.height * fy);
      const point = `point (${fx.toFixed(2)}, ${fy.toFixed(2)})`;
      await page.waitForFunction((p) => document.querySelector(".nested-source-caption")?.textContent.includes(p), point, { timeout: 5000 });
      return reference.screenshot(); // the pixels of the source heat over the photo
    };
    const far = await clickAt(0.75, 0.2);
    const near = await clickAt(0.25, 0.5);
    if (far.equals(near)) throw new Error("the source heat over the photo did not change with the clicked point");
    result.personCaption = await caption.textContent();
    if (!result.personCaption.includes("'person'") || !result.personCaption.includes("reference photo 1"))
      throw new Error(`caption: ${result.personCaption}`);
    await shot("maps");
    step = "show the second subject";
    await page.locator("select.nested-subject-select").first().selectOption({ index: 1 });
    await page.waitForFunction(() => document.querySelector(".nested-source-caption")?.textContent.includes("'dog'"), null, { timeout: 5000 });
    result.dogCaption = await caption.textContent();
    if (!result.dogCaption.includes("reference photo 2")) throw new Error(`caption: ${result.dogCaption}`);
    if ((await reference.screenshot()).equals(near)) throw new Error("the dog's view shows the person's picture");

    step = "see the warning of a word no prompt contains";
    await typeToken("Bind the person", "giraffe");
    const warning = visibleText(".nested-status", "'giraffe' is in no Nested Text Encode prompt of the sampler");
    await warning.waitFor({ state: "visible", timeout: 10000 });
    result.warning = await warning.textContent();
    await shot("warning");
    await centre("Positive prompt");
    if (await page.locator("mark.nested-token[data-token='person']").count()) throw new Error("'person' is still highlighted");

    step = "remove the prompt node: the other subject's word is then in no prompt either";
    await page.evaluate(async () => {
      const canvas = window.app.canvas;
      canvas.deselectAll?.();
      canvas.select(canvas.graph.nodes.find((n) => n.title === "Positive prompt"));
      // What the Delete key runs (the key itself depends on where the keyboard focus is).
      await window.app.extensionManager.command.execute("Comfy.Canvas.DeleteSelectedItems");
    });
    await centre("Bind the dog");
    await visibleText(".nested-status", "'dog' is in no Nested Text Encode prompt of the sampler")
      .waitFor({ state: "visible", timeout: 10000 });
    step = "load the workflow again: the prompt node is back";
    await page.evaluate(async (wf) => { await window.app.loadGraphData(wf, true, true, "nested_maps"); }, workflow);
    await centre("Bind the dog");
    await visibleText(".nested-status", "✓ 'dog' is in 'Positive prompt'").waitFor({ state: "visible", timeout: 10000 });
    result.removedAndRestored = true;

    step = "convert the dog's Apply node to a subgraph";
    await page.evaluate(async () => {
      const canvas = window.app.canvas;
      canvas.deselectAll?.();
      canvas.select(canvas.graph.nodes.find((n) => n.title === "Bind the dog"));
      await window.app.extensionManager.command.execute("Comfy.Graph.ConvertToSubgraph");
      const host = canvas.graph.nodes.find((n) => n.isSubgraphNode?.());
      canvas.openSubgraph(host.subgraph, host);
    });
    await page.waitForTimeout(1000);
    step = "see the inner Apply node find its word in the root graph's prompt";
    await centre("Bind the dog");
    await visibleText(".nested-status", "✓ 'dog' is in 'Positive prompt'").waitFor({ state: "visible", timeout: 10000 });
    step = "see the warning of the inner Apply node";
    await typeToken("Bind the dog", "zebra");
    const inner = visibleText(".nested-status", "'zebra' is in no Nested Text Encode prompt of the sampler");
    await inner.waitFor({ state: "visible", timeout: 10000 });
    result.subgraphWarning = await inner.textContent();
    await shot("subgraph");
    if (problems.length) throw new Error(problems.join("\n"));
    result.ok = true;
  } catch (error) {
    await shot("failed").catch(() => {});
    result.ok = false;
    result.step = step;
    result.error = String(error);
    result.problems = problems;
  }
  await context.close();
  return result;
}

// A failure to open the page at all still gives a result (the browser is closed below).
const guarded = (name, run) => run().catch((error) => ({ mode: name, ok: false, step: "open ComfyUI", error: String(error) }));
const results = [];
if (config.modelsWorkflow) results.push(await guarded("missing models", missingModels));
for (const mode of modes) results.push(await guarded(mode, () => runMode(mode)));
await browser.close();
console.log(JSON.stringify({ ok: results.every((r) => r.ok), results }));
process.exit(results.every((r) => r.ok) ? 0 : 1);
