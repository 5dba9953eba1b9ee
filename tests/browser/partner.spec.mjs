// The partner dashboard (/dashboard) end to end, against a running `palmgate demo`.
//
// The runner launches Chromium, starts the demo and calls run(); each step() is one reported
// check. The demo partner has EMP-001..EMP-003 enrolled and the demo serves a webhook receiver
// at /demo/receiver that answers 204.

const WAIT = 10_000;

function check(cond, message) {
  if (!cond) throw new Error(message);
}

// A value as PG.t substitutes it: direction-isolated (U+2068 … U+2069).
const iso = (v) => "\u2068" + v + "\u2069";

async function text(page, selector) {
  return ((await page.locator(selector).first().textContent()) || "").trim();
}

// Opens a tab by its button and waits for its panel.
async function openTab(page, id) {
  await page.click(`#tab-${id}`);
  await page.locator(`#panel-${id}`).waitFor({ state: "visible" });
}

// Polls fn (async, truthy when done) every interval ms until timeout.
async function until(fn, timeout, interval, what) {
  const end = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

export async function run({ browser, baseUrl, adminToken, apiKey, shots, step }) {
  void adminToken;
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, locale: "en-US" });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  const scriptErrors = [];
  page.on("pageerror", (e) => scriptErrors.push(String(e)));
  // HTTP errors the dashboard expects (401 of the wrong key, 404 of "no webhook yet") are
  // logged by Chromium as "Failed to load resource"; anything else is a script problem.
  page.on("console", (m) => {
    if (m.type() === "error" && !/Failed to load resource/.test(m.text())) scriptErrors.push(m.text());
  });
  const shot = (name, p = page) => p.screenshot({ path: `${shots}/partner-${name}.png`, fullPage: true });
  let firstSecret = null;

  try {
    await step("partner: a wrong API key is refused with an error", async () => {
      await page.goto(`${baseUrl}/dashboard?lang=en`);
      await page.fill("#credential", "pgk_not-a-real-key");
      await page.click("main.login button[type=submit]");
      await page.locator("#login-error").waitFor({ state: "visible" });
      check((await text(page, "#login-error")).length > 0, "the login error is empty");
      check((await page.locator("#app").count()) === 0, "the dashboard opened with a wrong key");
    });

    await step("partner: sign in with the API key", async () => {
      await page.fill("#credential", apiKey);
      await page.click("main.login button[type=submit]");
      await page.locator("#tab-webhook").waitFor({ state: "visible" });
      check((await page.getAttribute("#tab-webhook", "aria-selected")) === "true", "webhook tab not selected first");
      await page.locator("#webhook-url").waitFor({ state: "visible" });
    });

    await step("partner: set the webhook URL; the secret is shown once", async () => {
      await page.fill("#webhook-url", `${baseUrl}/demo/receiver`);
      check(await page.isChecked("#webhook-event-session"), "session events not checked by default");
      await page.click("#webhook-save");
      await page.locator("#webhook-secret").waitFor({ state: "visible" });
      firstSecret = await text(page, "#webhook-secret-value");
      check(/^whsec_[A-Za-z0-9+/=]{40,}$/.test(firstSecret), `secret looks wrong: ${firstSecret}`);
      check((await text(page, "#webhook-current-url")) === `${baseUrl}/demo/receiver`, "current URL not shown");
      await page.locator("#webhook-status .badge.ok").waitFor();
      await shot("webhook-en");
      await page.reload();
      await page.locator("#webhook-current-url").waitFor();
      check((await page.locator("#webhook-secret").count()) === 0, "the secret box is back after a reload");
      check(!(await page.content()).includes(firstSecret), "the secret is still in the page after a reload");
    });

    await step("partner: tabs are reachable with the arrow keys", async () => {
      await page.focus("#tab-webhook");
      await page.keyboard.press("ArrowRight");
      check((await page.getAttribute("#tab-deliveries", "aria-selected")) === "true", "ArrowRight did not move to Deliveries");
      check(await page.evaluate(() => document.activeElement.id === "tab-deliveries"), "focus did not follow");
      await page.keyboard.press("ArrowLeft");
      check((await page.getAttribute("#tab-webhook", "aria-selected")) === "true", "ArrowLeft did not come back");
    });

    await step("partner: a test ping is delivered (webhook tab says so)", async () => {
      await page.click("#webhook-test");
      await page.waitForFunction(() => {
        const m = document.querySelector("#webhook-message");
        // Values are direction-isolated (U+2068 … U+2069): read the text without the marks.
        return m && !m.hidden && /HTTP 2\d\d/.test(m.textContent.replace(/[\u2068\u2069]/g, ""));
      }, null, { timeout: 15_000 });
    });

    await step("partner: the deliveries tab shows the ping answered 2xx", async () => {
      await openTab(page, "deliveries");
      const row = page.locator('#deliveries tr.delivery[data-status="delivered"]', { hasText: "ping" }).first();
      await until(async () => {
        if (await row.count()) return true;
        await page.click("#deliveries-refresh");
        return false;
      }, 10_000, 1000, "a delivered ping in the table");
      check(/^[1-9]\d*$/.test(await row.locator(".attempt-count").innerText()), "no attempt counted");
      check(/HTTP 2\d\d/.test(await row.locator(".last-answer").innerText()), "last answer is not 2xx");
      await row.locator("button.toggle").click();
      check((await row.locator("button.toggle").getAttribute("aria-expanded")) === "true", "row did not expand");
      const attempts = page.locator("tr.attempts tr[data-attempt]");
      await attempts.first().waitFor();
      const code = await attempts.first().locator(".badge").innerText();
      check(/^2\d\d$/.test(code.trim()), `attempt status code ${code}`);
      check((await page.locator("#deliveries-refresh").count()) === 1, "no refresh button");
      check(await page.isChecked("#deliveries-auto"), "auto-refresh is off by default");
      await shot("deliveries-en");
    });

    await step("partner: rotate the secret (confirmed) and see the new one once", async () => {
      await openTab(page, "webhook");
      await page.click("#webhook-rotate");
      await page.locator("dialog #confirm-yes").waitFor({ state: "visible" });
      await page.click("#confirm-yes");
      await page.locator("#webhook-secret").waitFor({ state: "visible" });
      const second = await text(page, "#webhook-secret-value");
      check(second.startsWith("whsec_") && second !== firstSecret, "rotation did not show a new secret");
      await page.waitForFunction(() => /\d/.test(document.querySelector("#webhook-current")?.textContent || "")
        && document.querySelectorAll("#webhook-current dt").length >= 5, null, { timeout: WAIT });
    });

    await step("partner: recover since a time reports how many were queued again", async () => {
      check(/^\d{4}-\d\d-\d\dT\d\d:\d\d$/.test(await page.inputValue("#recover-since")), "no default time");
      await page.click("#recover-start");
      await page.waitForFunction(() => /queued again: \d+/.test((document.querySelector("#webhook-message")?.textContent || "")
        .replace(/[\u2068\u2069]/g, ""))
        && !document.querySelector("#webhook-message").hidden, null, { timeout: WAIT });
    });

    await step("partner: a disabled webhook offers Re-enable (answer simulated)", async () => {
      const real = await (await page.request.get(`${baseUrl}/v1/webhook`, { headers: { "X-API-Key": apiKey } })).json();
      await page.route("**/v1/webhook", (route) => route.request().method() === "GET"
        ? route.fulfill({ json: { ...real, status: "disabled", last_failure: new Date().toISOString(),
          last_failure_reason: "HTTP 503" } })
        : route.continue());
      try {
        await openTab(page, "users");
        await openTab(page, "webhook");
        await page.locator("#webhook-enable").waitFor({ state: "visible" });
        await page.locator("#webhook-status .badge.bad").waitFor();
        await page.locator("#webhook-disabled-note").waitFor();
        check((await text(page, "#webhook-last-failure-reason")) === "HTTP 503", "last failure's reason not shown");
        await shot("webhook-disabled-en");
        await page.click("#webhook-enable");
        await page.locator("#webhook-status .badge.ok").waitFor();
        check((await page.locator("#webhook-enable").count()) === 0, "Re-enable still offered");
      } finally {
        await page.unroute("**/v1/webhook");
      }
    });

    await step("partner: start an enrollment; the link is shown and the session listed", async () => {
      await openTab(page, "sessions");
      await page.selectOption("#session-type", "enroll");
      await page.fill("#enroll-external-id", "EMP-900");
      await page.fill("#enroll-username", "Test Person");
      await page.selectOption("#enroll-language", "kk");
      await page.click("#enroll-start");
      const link = page.locator("#enroll-url");
      await link.waitFor({ state: "visible" });
      const href = await link.getAttribute("href");
      check(/\/enroll\/[A-Za-z0-9_-]{20,}$/.test(href || ""), `enroll URL: ${href}`);
      const row = page.locator("#sessions tbody tr", { hasText: "EMP-900" }).first();
      await row.waitFor();
      check((await row.getAttribute("data-state")) === "pending", "new session not pending");
      check((await page.locator("#sessions tbody tr[data-session]").first().getAttribute("data-session"))
        === (await page.locator("#sessions tbody tr", { hasText: "EMP-900" }).first().getAttribute("data-session")),
        "the new session is not listed first (newest first)");
      await shot("sessions-en");
    });

    await step("partner: cancel a pending session; its reason is shown", async () => {
      const row = page.locator("#sessions tbody tr", { hasText: "EMP-900" }).first();
      await row.locator("button.cancel").click();
      await page.click("#confirm-yes");
      await page.waitForFunction(() => {
        const r = [...document.querySelectorAll("#sessions tbody tr")].find((x) => x.textContent.includes("EMP-900"));
        return r && r.dataset.state === "failed" && r.textContent.includes("Cancelled");
      }, null, { timeout: WAIT });
    });

    await step("partner: identify session gives an /identify/ link", async () => {
      await page.selectOption("#session-type", "identify");
      check(await page.locator("#enroll-external-id").isHidden(), "external id shown for identify");
      await page.click("#enroll-start");
      await page.waitForFunction(() => /\/identify\//.test(document.querySelector("#enroll-url")?.href || ""));
    });

    await step("partner: the users tab lists the demo users", async () => {
      await openTab(page, "users");
      for (const id of ["EMP-001", "EMP-002", "EMP-003"]) {
        await page.locator(`#users tr[data-external-id="${id}"]`).waitFor();
      }
      await shot("users-en");
    });

    await step("partner: the users tab pages with Previous/Next and a total", async () => {
      // Pages of one (the page asks for 100) over the demo's three users, in the server's order.
      const asked = [];
      const onePerPage = (route) => {
        const u = new URL(route.request().url());
        asked.push(u.search);
        if (u.searchParams.get("limit") === "100") u.searchParams.set("limit", "1");
        return route.continue({ url: u.toString() });
      };
      await page.route("**/v1/users?*", onePerPage);
      try {
        const all = await (await page.request.get(`${baseUrl}/v1/users?limit=500`,
          { headers: { "X-API-Key": apiKey } })).json();
        check(all.length === 3, `demo users: ${all.length}`);
        const catalog = JSON.parse(await page.locator("#messages").textContent());
        const countText = (from, to, total) => catalog["partner.page.count"]
          .replace("{from}", iso(from)).replace("{to}", iso(to)).replace("{total}", iso(total));
        const shows = async (n) => {
          await page.waitForFunction((t) => document.getElementById("users-count").textContent === t,
            countText(n, n, 3)).catch(async (e) => {
            throw new Error(`page ${n}: the count reads ${JSON.stringify(await page.locator("#users-count").textContent({ timeout: 1000 }).catch(() => null))}, ` +
              `not ${JSON.stringify(countText(n, n, 3))} (asked ${asked.join(" ")}): ${e.message}`);
          });
          const ids = await page.locator("#users tbody tr").evaluateAll((rs) => rs.map((r) => r.dataset.externalId));
          check(ids.length === 1 && ids[0] === all[n - 1].external_id, `page ${n}: ${ids}`);
        };
        await page.click("#users-refresh");
        await shows(1);
        check(await page.locator("#users-prev").isDisabled(), "Previous on the first page");
        await page.click("#users-next");
        await shows(2);
        await page.click("#users-next");
        await shows(3);
        check(await page.locator("#users-next").isDisabled(), "Next on the last page");
        await page.click("#users-prev");
        await shows(2);
      } finally {
        await page.unroute("**/v1/users?*", onePerPage);
      }
      // Back on the first page, with pages of 100 again: all three.
      if (!(await page.locator("#users-prev").isDisabled())) await page.click("#users-prev");
      await page.click("#users-refresh");
      await page.waitForFunction(() => document.querySelectorAll("#users tbody tr").length === 3);
    });

    await step("partner: a double click on Next moves one page, and the count labels the rows shown", async () => {
      // 133 sessions, 50 a page; every page answers 400 ms late, so the second click of a
      // double click lands while the first page is still on its way.
      const all = Array.from({ length: 133 }, (_, i) => ({
        session_id: "00000000-0000-4000-8000-" + String(i + 1).padStart(12, "0"),
        type: "identify", state: "completed", external_id: null, fail_reason: null,
        created_at: "2026-11-26T09:00:00Z", expires_at: "2026-11-26T09:15:00Z",
      }));
      const asked = [];
      const slow = async (route) => {
        const u = new URL(route.request().url());
        asked.push(u.search);
        const offset = Number(u.searchParams.get("offset") || 0);
        const limit = Number(u.searchParams.get("limit") || 50);
        await new Promise((r) => setTimeout(r, 400));
        return route.fulfill({ json: all.slice(offset, offset + limit), headers: { "X-Total-Count": "133" } });
      };
      await page.route("**/v1/sessions?*", slow);
      try {
        await openTab(page, "sessions");
        await page.click("#sessions-refresh");
        const catalog = JSON.parse(await page.locator("#messages").textContent());
        const countText = (from, to) => catalog["partner.page.count"]
          .replace("{from}", iso(from)).replace("{to}", iso(to)).replace("{total}", iso(133));
        const shows = async (from, to) => {
          await page.waitForFunction((t) => document.getElementById("sessions-count").textContent === t,
            countText(from, to)).catch(async (e) => {
            throw new Error(`the count reads ${JSON.stringify(await text(page, "#sessions-count"))}, not ` +
              `${JSON.stringify(countText(from, to))} (asked ${asked.join(" ")}): ${e.message}`);
          });
          const ids = await page.locator("#sessions tbody tr[data-session]")
            .evaluateAll((rs) => rs.map((r) => r.dataset.session));
          check(ids.length === to - from + 1 && ids[0] === all[from - 1].session_id && ids.at(-1) === all[to - 1].session_id,
            `rows under ${from}–${to}: ${ids[0]} … ${ids.at(-1)} (${ids.length})`);
        };
        await shows(1, 50);
        await page.dblclick("#sessions-next");
        await page.waitForTimeout(1200); // both clicks' answers, had both been asked
        await shows(51, 100);
        // Enter twice on Next: one page on.
        await page.focus("#sessions-next");
        await page.keyboard.press("Enter");
        await page.keyboard.press("Enter");
        await page.waitForTimeout(1200);
        await shows(101, 133);
        check(await page.locator("#sessions-next").isDisabled(), "Next on the last page");
        await page.click("#sessions-prev");
        await shows(51, 100);
        await page.click("#sessions-prev");
        await shows(1, 50);
      } finally {
        await page.unroute("**/v1/sessions?*", slow);
      }
      await page.click("#sessions-refresh");
      await page.waitForFunction(() => !document.querySelector("#sessions-pager[aria-busy]"));
    });

    await step("partner: values inserted into texts and id cells are direction-isolated", async () => {
      // An RTL override inside a partner's value ends with the value: PG.t isolates it.
      const said = await page.evaluate(() => PG.t("partner.users.erase_confirm", { id: "\u202eRTL-id" }));
      check(said.includes("\u2068\u202eRTL-id\u2069"), `t() does not isolate the value: ${JSON.stringify(said)}`);
      await openTab(page, "users");
      await page.locator('#users tr[data-external-id="EMP-003"]').waitFor();
      const styles = await page.evaluate(() => {
        const of = (sel) => getComputedStyle(document.querySelector(sel)).unicodeBidi;
        return { td: of("#users tbody td"), code: of('#users tr[data-external-id="EMP-003"] code') };
      });
      check(styles.td === "isolate" && styles.code === "isolate", `unicode-bidi: ${JSON.stringify(styles)}`);
    });

    await step("partner: erase a user after confirming; it disappears", async () => {
      await page.locator('#users tr[data-external-id="EMP-003"] button.erase').click();
      const dialog = page.locator("dialog[open]");
      await dialog.waitFor();
      const warning = await dialog.innerText();
      check(warning.includes(iso("EMP-003")) && /cannot be undone/i.test(warning), `dialog text: ${warning}`);
      // Cancelling keeps the user.
      await page.click("#confirm-no");
      await dialog.waitFor({ state: "detached" });
      check((await page.locator('#users tr[data-external-id="EMP-003"]').count()) === 1, "cancel erased the user");
      await page.locator('#users tr[data-external-id="EMP-003"] button.erase').click();
      await page.click("#confirm-yes");
      await page.locator('#users tr[data-external-id="EMP-003"]').waitFor({ state: "detached" });
      check((await page.locator('#users tr[data-external-id="EMP-001"]').count()) === 1, "other users vanished");
      const r = await page.request.get(`${baseUrl}/v1/users/EMP-003`, { headers: { "X-API-Key": apiKey } });
      check(r.status() === 404, `erased user answers ${r.status()}`);
    });

    await step("partner: Kazakh page", async () => {
      await page.goto(`${baseUrl}/dashboard?lang=kk`);
      await page.locator("#tab-webhook").waitFor();
      check((await page.getAttribute("html", "lang")) === "kk", "html lang is not kk");
      check((await text(page, "#tab-users")) === "Пайдаланушылар", "users tab not in Kazakh");
      check((await text(page, "#webhook-save")) === "Вебхукты сақтау", "save button not in Kazakh");
      await page.locator("#webhook-current-url").waitFor();
      await shot("webhook-kk");
    });

    await step("partner: Russian page", async () => {
      await page.goto(`${baseUrl}/dashboard?lang=ru`);
      await page.locator("#tab-webhook").waitFor();
      check((await page.getAttribute("html", "lang")) === "ru", "html lang is not ru");
      check((await text(page, "#tab-users")) === "Пользователи", "users tab not in Russian");
      check((await text(page, "#webhook-save")) === "Сохранить вебхук", "save button not in Russian");
      await page.locator("#webhook-current-url").waitFor();
      await shot("webhook-ru");
      await openTab(page, "sessions");
      const cancelled = page.locator("#sessions tbody tr", { hasText: "EMP-900" }).first();
      check((await cancelled.innerText()).includes("Отменена"), "fail reason not localized in Russian");
      // A refusal of the API (409: EMP-001 is enrolled) in Russian, the server's words as a detail.
      await page.selectOption("#session-type", "enroll");
      await page.fill("#enroll-external-id", "EMP-001");
      await page.click("#enroll-start");
      await page.locator("#error").waitFor({ state: "visible" });
      const said = await text(page, "#error");
      check(said.includes("Пользователь с этим внешним ID уже зарегистрирован.") && !said.startsWith("Что-то пошло не так"),
        `the 409 reads: ${said}`);
      check(said.includes("user with this external_id already enrolled"), `the server's text is not kept: ${said}`);
    });

    await step("partner: phone width 390x844 fits without sideways scrolling", async () => {
      const phone = await context.newPage();
      phone.setDefaultTimeout(WAIT);
      phone.on("pageerror", (e) => scriptErrors.push(String(e)));
      await phone.setViewportSize({ width: 390, height: 844 });
      await phone.goto(`${baseUrl}/dashboard?lang=en`);
      await phone.locator("#webhook-current-url").waitFor();
      const wide = () => phone.evaluate(() => document.documentElement.scrollWidth);
      check((await wide()) <= 390, `webhook tab is ${await wide()} px wide`);
      await shot("phone-webhook", phone);
      await openTab(phone, "deliveries");
      await phone.locator("#deliveries tr.delivery").first().waitFor();
      await phone.locator("#deliveries tr.delivery button.toggle").first().click();
      await phone.locator("tr.attempts").first().waitFor();
      check((await wide()) <= 390, `deliveries tab is ${await wide()} px wide`);
      await shot("phone-deliveries", phone);
      await openTab(phone, "sessions");
      await phone.locator("#sessions tr[data-session]").first().waitFor();
      check((await wide()) <= 390, `sessions tab is ${await wide()} px wide`);
      await phone.close();
    });

    await step("partner: no script errors", async () => {
      check(scriptErrors.length === 0, scriptErrors.join("\n"));
    });
  } finally {
    await context.close();
  }
}
