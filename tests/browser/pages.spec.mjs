// The hosted page (/identify/{token}) end to end, against a running `palmgate demo`: it follows
// its session over server-sent events, and when its stream is refused (a session may have 4
// open at once) it polls the page as JSON instead. Either way, once the session ends, the page
// shows how it ended.

const WAIT = 15_000;

function check(cond, message) {
  if (!cond) throw new Error(message);
}

async function identify(baseUrl, apiKey) {
  const r = await fetch(`${baseUrl}/v1/identify?language=en`, {
    method: "POST",
    headers: { "X-API-Key": apiKey },
  });
  check(r.status === 201, `POST /v1/identify answered ${r.status}`);
  const body = await r.json();
  return { path: new URL(body.url).pathname, id: body.session_id };
}

async function cancel(baseUrl, apiKey, id) {
  const r = await fetch(`${baseUrl}/v1/sessions/${id}/cancel`, {
    method: "POST",
    headers: { "X-API-Key": apiKey },
  });
  check(r.status === 200, `cancel answered ${r.status}`);
}

async function showsCancelled(page) {
  await page.waitForFunction(
    () => document.body && document.body.innerText.includes("Verification cancelled"),
    null,
    { timeout: WAIT },
  );
}

export async function run({ browser, baseUrl, apiKey, shots, step }) {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, locale: "en-US" });
  const errors = [];

  await step("the page follows its session live and shows how it ended", async () => {
    const s = await identify(baseUrl, apiKey);
    const page = await context.newPage();
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(`${baseUrl}${s.path}`);
    await page.locator("#status").waitFor();
    // Let the stream open before the session ends.
    await page.waitForTimeout(500);
    await cancel(baseUrl, apiKey, s.id);
    await showsCancelled(page);
    await page.screenshot({ path: `${shots}/page-live-cancelled.png` });
    await page.close();
  });

  await step("a page whose event stream is refused polls, and shows how the session ended", async () => {
    const s = await identify(baseUrl, apiKey);
    const events = `${baseUrl}${s.path}/events`;
    // Four streams held elsewhere: the page's own is the fifth, and is refused.
    const held = new AbortController();
    for (let i = 0; i < 4; i++) {
      const r = await fetch(events, { signal: held.signal, headers: { Accept: "text/event-stream" } });
      check(r.status === 200, `stream ${i + 1} answered ${r.status}`);
      await r.body.getReader().read();
    }
    const page = await context.newPage();
    page.on("pageerror", (e) => errors.push(String(e)));
    const refused = page.waitForResponse((r) => r.url().endsWith("/events"), { timeout: WAIT });
    await page.goto(`${baseUrl}${s.path}`);
    const answer = await refused;
    check(answer.status() === 429, `the page's stream answered ${answer.status()}, not 429`);
    await page.waitForTimeout(500);
    await cancel(baseUrl, apiKey, s.id);
    await showsCancelled(page);
    await page.screenshot({ path: `${shots}/page-polled-cancelled.png` });
    held.abort();
    await page.close();
  });

  await step("a reader chosen on the page keeps the focus, and a reload does not arm it again", async () => {
    const s = await identify(baseUrl, apiKey);
    const page = await context.newPage();
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(`${baseUrl}${s.path}`);
    const first = page.locator("a.reader").first();
    const reader = (await first.textContent()).trim();
    await first.focus();
    await Promise.all([page.waitForNavigation(), page.keyboard.press("Enter")]);
    await page.locator("a.reader.current").waitFor({ timeout: WAIT });
    await page.waitForFunction(() => document.activeElement && document.activeElement.matches("a.reader.current"),
      null, { timeout: 2000 }).catch(() => {});
    const focused = await page.evaluate(() => {
      const a = document.activeElement;
      return a && a.matches("a.reader.current") ? a.textContent.trim() : String(a && a.outerHTML).slice(0, 120);
    });
    check(focused === reader, `focus after choosing ${reader}: ${focused}`);
    check(new URL(page.url()).search === "", `the address kept its query: ${page.url()}`);
    await cancel(baseUrl, apiKey, s.id);
    await showsCancelled(page);
    await page.close();
  });

  await step("no script error on the hosted pages", async () => {
    check(errors.length === 0, `script errors: ${errors.join("; ")}`);
  });
  await context.close();
}
