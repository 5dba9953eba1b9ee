// Runs the dashboard specs in headless Chromium against a running palmgate demo.
//
//   PALMGATE_URL=http://127.0.0.1:PORT PALMGATE_ADMIN_TOKEN=... PALMGATE_API_KEY=... \
//   SHOTS=target/browser-shots node tests/browser/run.mjs [admin.spec.mjs partner.spec.mjs]
//
// Each spec exports `run({ browser, baseUrl, adminToken, apiKey, shots, step })`; `step(name, fn)`
// runs one named check and records it. Prints one line per check and a summary; exit 1 on any
// failure. tests/it/browser.rs starts the demo and runs this.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const baseUrl = process.env.PALMGATE_URL;
const adminToken = process.env.PALMGATE_ADMIN_TOKEN;
const apiKey = process.env.PALMGATE_API_KEY;
const shots = process.env.SHOTS || join(here, "..", "..", "target", "browser-shots");
if (!baseUrl || !adminToken || !apiKey) {
  console.error("set PALMGATE_URL, PALMGATE_ADMIN_TOKEN and PALMGATE_API_KEY");
  process.exit(2);
}
mkdirSync(shots, { recursive: true });
const specs = process.argv.slice(2).length ? process.argv.slice(2) : ["admin.spec.mjs", "partner.spec.mjs", "pages.spec.mjs"];

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run"],
});
let passed = 0;
let failed = 0;
try {
  for (const spec of specs) {
    const mod = await import(join(here, spec));
    const step = async (name, fn) => {
      const started = Date.now();
      try {
        await fn();
        passed++;
        console.log(`ok   ${spec} :: ${name} (${Date.now() - started} ms)`);
      } catch (e) {
        failed++;
        console.log(`FAIL ${spec} :: ${name}: ${e && e.stack ? e.stack : e}`);
      }
    };
    try {
      await mod.run({ browser, baseUrl, adminToken, apiKey, shots, step });
    } catch (e) {
      failed++;
      console.log(`FAIL ${spec}: ${e && e.stack ? e.stack : e}`);
    }
  }
} finally {
  await browser.close();
}
console.log(`${passed} passed, ${failed} failed; screenshots in ${shots}`);
process.exit(failed ? 1 : 0);
