// The page in a real browser: Debian's Chromium, headless and offline, driven by playwright-core.
//   node browser-test.mjs EXPECTED.json [--screenshot FILE.png] [--chromium /usr/bin/chromium]
// EXPECTED.json: [{"file": path, "label": name, "probability": p}, ...] as fmnist-predict answers them.
// Uploads every image through the file input and compares label and probability (1e-5); uploads a
// text file and expects a readable error on the page. One JSON line per check; exit 1 on any mismatch.
import { readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { startServer } from "./serve.mjs";

const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run"];
const TOLERANCE = 1e-5;
const args = process.argv.slice(2);
const option = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const expected = JSON.parse(readFileSync(args[0], "utf8"));
const screenshot = option("--screenshot", null);
const executablePath = option("--chromium", "/usr/bin/chromium");

const server = await startServer();
const deadline = setTimeout(() => { console.error("browser test: over 120 s, stopping"); process.exit(1); }, 120_000);
const browser = await chromium.launch({ executablePath, args: FLAGS, headless: true });
let failures = 0;
try {
  const page = await browser.newPage({ viewport: { width: 820, height: 560 } });
  const external = [];
  page.on("request", (request) => {
    if (!request.url().startsWith(`http://127.0.0.1:${server.address().port}/`) && !request.url().startsWith("blob:")
        && !request.url().startsWith("data:")) external.push(request.url());
  });
  await page.goto(`http://127.0.0.1:${server.address().port}/examples/web/`);
  await page.waitForFunction(() => document.body.dataset.ready, null, { timeout: 60_000 });
  const ready = await page.evaluate(() => document.body.dataset.ready);
  if (ready !== "true") throw new Error(`model did not load: ${await page.textContent("#message")}`);
  for (const item of expected) {
    const name = item.file.split("/").pop();
    await page.setInputFiles("#file", item.file);
    await page.waitForFunction((n) => document.getElementById("results").dataset.input === n, name);
    const got = await page.evaluate(() => ({ ...document.getElementById("results").dataset }));
    const ok = got.label === item.label && Math.abs(Number(got.probability) - item.probability) <= TOLERANCE;
    failures += !ok;
    console.log(JSON.stringify({ check: "image", file: name, label: got.label, probability: Number(got.probability), ok }));
    if (screenshot && item === expected[0]) await page.screenshot({ path: screenshot });
  }
  const text = join(tmpdir(), `not-an-image-${process.pid}.txt`);
  writeFileSync(text, "this is not an image\n");
  await page.setInputFiles("#file", text);
  await page.waitForFunction(() => document.getElementById("message").className === "error");
  const message = await page.textContent("#message");
  const ok = message.startsWith("Cannot read not-an-image-") && message.endsWith(" as an image");
  failures += !ok;
  console.log(JSON.stringify({ check: "text file", message, ok }));
  failures += external.length > 0;
  console.log(JSON.stringify({ check: "offline", external, ok: external.length === 0 }));
  // An image picked before the model has arrived (a slow connection: the model's response held back 2 s)
  // is answered once the model is ready, not dropped.
  const slow = await browser.newPage();
  await slow.route("**/fmnist_mlp.onnx", async (route) => {
    await new Promise((resolve) => setTimeout(resolve, 2000));
    await route.continue();
  });
  await slow.goto(`http://127.0.0.1:${server.address().port}/examples/web/`);
  await slow.waitForSelector("#file");
  const first = expected[0];
  await slow.setInputFiles("#file", first.file);
  const early = await slow.evaluate(() => document.body.dataset.ready ?? "loading");
  const waiting = await slow.textContent("#message");
  await slow.waitForFunction((n) => document.getElementById("results").dataset.input === n, first.file.split("/").pop(),
    { timeout: 60_000 });
  const queued = await slow.evaluate(() => document.getElementById("results").dataset.label);
  const queuedOk = early === "loading" && waiting.startsWith("The model is still loading") && queued === first.label;
  failures += !queuedOk;
  console.log(JSON.stringify({ check: "queued", early, message: waiting, label: queued, ok: queuedOk }));
} catch (error) {
  failures++;
  console.log(JSON.stringify({ check: "page", error: error.message.split("\n")[0], ok: false }));
} finally {
  await browser.close();
  server.close();
  clearTimeout(deadline);
}
process.exit(failures ? 1 : 0);
