//! The dashboards and the hosted page in a real browser: headless Debian Chromium driven by playwright-core
//! (tests/browser/*.spec.mjs) against a running `palmgate demo`. Screenshots of every page are
//! kept under `target/tmp/browser-shots/`.
//!
//! Peers: node, `tests/browser/node_modules` (`npm ci` there) and /usr/bin/chromium. Missing
//! one, the test says so and returns — or fails under `PALMGATE_PEERS=required` (CI).

use crate::dashboards::Demo;
use std::path::Path;
use std::process::Command;

fn missing_peer() -> Option<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("{chromium} not found (apt-get install chromium)"));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node not found".into());
    }
    if !root
        .join("tests/browser/node_modules/playwright-core")
        .exists()
    {
        return Some("playwright-core not installed (cd tests/browser && npm ci)".into());
    }
    None
}

/// The last `n` lines of `text`, in order.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether the browser peer is here; without it, says so and (under `PALMGATE_PEERS=required`)
/// fails.
fn browser_present() -> bool {
    let Some(why) = missing_peer() else {
        return true;
    };
    if std::env::var("PALMGATE_PEERS").as_deref() == Ok("required") {
        panic!("browser peer missing and PALMGATE_PEERS=required: {why}");
    }
    println!("skipping the browser test: {why}");
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboards_in_headless_chromium() {
    if !browser_present() {
        return;
    }
    let demo = Demo::start();
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-shots");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tokio::task::spawn_blocking({
        let (url, token, key) = (
            demo.url.clone(),
            demo.admin_token.clone(),
            demo.api_key.clone(),
        );
        let shots = shots.clone();
        let root = root.to_path_buf();
        move || {
            Command::new("node")
                .arg(root.join("tests/browser/run.mjs"))
                .env("PALMGATE_URL", url)
                .env("PALMGATE_ADMIN_TOKEN", token)
                .env("PALMGATE_API_KEY", key)
                .env("SHOTS", shots)
                .output()
                .expect("run node")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    // The failed checks alone, each cut short, so a CI log that keeps only the end of a
    // failure's output still says which check failed and why.
    let failed: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with("FAIL"))
        .map(|l| l.chars().take(1200).collect())
        .collect();
    assert!(
        out.status.success(),
        "browser checks failed (screenshots in {}; the whole output above):\n{}\n{}",
        shots.display(),
        failed.join("\n"),
        last_lines(&String::from_utf8_lossy(&out.stderr), 5)
    );
    assert!(
        stdout.contains(" passed, 0 failed"),
        "the runner did not report its checks:\n{stdout}"
    );
}

/// A reader id of 128 characters without a space (`_ . :`) does not scroll a 360 px phone
/// sideways: a hosted page of a real server in headless Chromium at a 360 px viewport, its
/// picker and status line carrying such an id (the page's own markup, filled in the browser:
/// no reader of that name needs to be online), is no wider than the viewport.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_reader_id_fits_a_360_px_phone() {
    if !browser_present() {
        return;
    }
    let s = crate::fixtures::TestServer::start().await;
    let (_, key) = s.create_partner("Phone").await;
    let c = s.identify(&key, "?language=kk").await.created();
    let url = s.url(&c.path());
    let id = format!("{}_reader.{}:{}", "site", "a".repeat(100), "b".repeat(15));
    assert_eq!(id.len(), 128);
    let script = r##"
import { chromium } from "playwright-core";
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu"],
});
try {
  const page = await browser.newPage({ viewport: { width: 360, height: 740 } });
  await page.goto(process.env.PAGE_URL);
  const width = await page.evaluate((id) => {
    const card = document.querySelector(".card");
    const list = document.createElement("div");
    list.innerHTML = '<p>Choose</p><ul class="readers"><li><a class="reader current" href="#">' + id +
      '</a></li><li><a class="reader" href="#">' + id + '</a></li></ul>';
    card.insertBefore(list, card.firstChild);
    document.getElementById("status").textContent = id + " сканері дайын — алақаныңызды соған қойыңыз.";
    return document.documentElement.scrollWidth;
  }, process.env.READER_ID);
  console.log("scrollWidth " + width);
} finally {
  await browser.close();
}
"##;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(["--input-type=module", "-e", script])
            .current_dir(root)
            .env("PAGE_URL", url)
            .env("READER_ID", id)
            .output()
            .expect("run node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "node failed: {stdout}\n{stderr}");
    let width: u32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("scrollWidth "))
        .and_then(|w| w.trim().parse().ok())
        .unwrap_or_else(|| panic!("no width measured: {stdout}\n{stderr}"));
    assert!(
        width <= 360,
        "a 128-character reader id makes the page {width} px wide on a 360 px phone"
    );
}

/// The operator dashboard says when the gateway has lost its MQTT broker, on every tab, and
/// stops saying it when the link is back, without a reload: the gateway on a real Mosquitto
/// with one reader online, signed in through the login form in headless Chromium. No banner;
/// the broker is killed: the banner shows (on the doors tab and the readers tab, where the
/// reader's presence reads "Unknown"); Mosquitto again on the same port: the banner goes and
/// the reader is no longer "Unknown". No script error and no Content-Security-Policy refusal.
///
/// The page script (node) and this test take turns over the script's stdin/stdout: the script
/// prints a line when it has seen a state, and waits for a line saying the broker moved.
#[tokio::test(flavor = "multi_thread")]
async fn the_operator_dashboard_shows_a_lost_broker_and_its_return() {
    use crate::readers::{Mosquitto, free_port, mosquitto_or_skip};
    use std::io::{BufRead, BufReader, Write};
    if !browser_present() {
        return;
    }
    let Some(bin) = mosquitto_or_skip() else {
        return;
    };
    let port = free_port();
    let broker = Mosquitto::start(&bin, port);
    let mqtt = format!("mqtt://127.0.0.1:{port}");
    let s = crate::fixtures::TestServer::start_with(
        crate::fixtures::Options::default().extra_toml(&format!("[mqtt]\nurl = \"{mqtt}\"\n")),
    )
    .await;
    let reader =
        palmgate::mqtt::simulate::SimReader::connect(palmgate::mqtt::simulate::SimOptions {
            mqtt_url: mqtt.clone(),
            topic_prefix: "palmgate".into(),
            reader: palmgate::core::ReaderId("desk-1".into()),
            palm: "alice".into(),
            dim: 128,
            quality: 0.95,
            liveness: true,
            seed: 1,
        })
        .await
        .expect("the simulated reader connects to Mosquitto");
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let v = crate::fixtures::send(
            s.get("/admin/v1/readers")
                .bearer_auth(crate::fixtures::ADMIN_TOKEN),
        )
        .await
        .json();
        if v.as_array().is_some_and(|l| {
            l.iter()
                .any(|r| r["id"] == "desk-1" && r["presence"] == "online")
        }) {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "desk-1 never listed online: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let script = r##"
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const wait = async (what) => {
  const { value } = await lines.next();
  if (value !== what) throw new Error(`expected "${what}" from the test, got ${JSON.stringify(value)}`);
};
const errors = [];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu"],
});
let page;
try {
  page = await browser.newPage({ viewport: { width: 1280, height: 900 }, locale: "en-US" });
  page.on("pageerror", (e) => errors.push(String(e)));
  // A 404 is an answer (GET /admin/v1/demo/people outside demo mode), not a script error.
  page.on("console", (m) => {
    if (m.type() === "error" && !/Failed to load resource.*404/.test(m.text())) errors.push(m.text());
  });
  const banner = page.locator("#broker-banner");
  const presence = () => page.getAttribute("#reader-desk-1", "data-presence");
  await page.goto(new URL("/admin?lang=en", process.env.PAGE_URL).toString());
  await page.fill("#credential", process.env.ADMIN_TOKEN);
  await page.click("main.login button[type=submit]");
  await page.locator("#tab-doors").waitFor({ state: "visible" });
  // The dashboard has read the link state (the reader list) and shows no banner.
  await page.locator("#broker-banner[data-broker-up=true]").waitFor({ state: "attached", timeout: 15000 });
  if (await banner.isVisible()) throw new Error("a banner with the broker up");
  await page.click("#tab-readers");
  await page.locator("#reader-desk-1[data-presence=online]").waitFor({ timeout: 15000 });
  await page.click("#tab-doors");
  console.log("NO_BANNER");

  await wait("STOPPED");
  await banner.waitFor({ state: "visible", timeout: 40000 });
  const text = await banner.textContent();
  for (const part of ["cannot reach its MQTT broker", "status is unknown", "will not open doors", "emergency unlock"]) {
    if (!text.includes(part)) throw new Error(`the banner lacks "${part}": ${text}`);
  }
  if ((await banner.getAttribute("role")) !== "alert") throw new Error("the banner is no alert");
  await page.screenshot({ path: process.env.SHOT, fullPage: true });
  await page.click("#tab-readers");
  if (!(await banner.isVisible())) throw new Error("no banner on the readers tab");
  await page.locator("#reader-desk-1[data-presence=unknown]").waitFor({ timeout: 10000 });
  const status = await page.locator("#reader-desk-1 td").nth(1).textContent();
  if (status.trim() !== "Unknown") throw new Error(`desk-1's status reads ${JSON.stringify(status)}`);
  await page.click("#tab-site");
  if (!(await banner.isVisible())) throw new Error("no banner on the site tab");
  console.log("BANNER");

  await wait("RESTARTED");
  await page.locator("#broker-banner[hidden]").waitFor({ state: "attached", timeout: 40000 });
  await page.click("#tab-readers");
  await page.locator("#reader-desk-1:not([data-presence=unknown])").waitFor({ timeout: 10000 });
  if (errors.length) throw new Error("script errors or CSP refusals: " + errors.join(" | "));
  console.log("GONE");
} catch (e) {
  console.log("FAIL " + (e && e.stack ? e.stack : e));
  if (page) await page.screenshot({ path: process.env.SHOT + ".fail.png", fullPage: true }).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
  lines.return && lines.return();
  process.stdin.destroy();
}
"##;
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-shots");
    std::fs::create_dir_all(&shots).expect("screenshot directory");
    let shot = shots.join("admin-broker-down.png");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let (url, script) = (s.base_url.clone(), script.to_string());
    let (seen, status) = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("node")
            .args(["--input-type=module", "-e", &script])
            .current_dir(root)
            .env("PAGE_URL", url)
            .env("ADMIN_TOKEN", crate::fixtures::ADMIN_TOKEN)
            .env("SHOT", shot)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run node");
        let mut stdin = child.stdin.take().expect("node stdin");
        let out = BufReader::new(child.stdout.take().expect("node stdout"));
        let mut broker = Some(broker);
        let mut seen = Vec::new();
        for line in out.lines() {
            let line = line.expect("node stdout line");
            println!("{line}");
            match line.as_str() {
                "NO_BANNER" => {
                    broker.take().expect("the broker runs").stop();
                    writeln!(stdin, "STOPPED").expect("tell node");
                }
                "BANNER" => {
                    broker = Some(Mosquitto::start(&bin, port));
                    writeln!(stdin, "RESTARTED").expect("tell node");
                }
                _ => {}
            }
            seen.push(line);
        }
        drop(stdin);
        (seen, child.wait().expect("node exits"))
    })
    .await
    .unwrap();
    drop(reader);
    let said = seen.join("\n");
    assert!(
        status.success() && said.contains("GONE"),
        "the dashboard did not show the lost broker and its return ({status}; screenshots in \
         {}):\n{said}",
        shots.display()
    );
}

/// An operator dashboard whose login has ended elsewhere (signed out in another tab; the same
/// for expiry or a new admin token) stops polling at the first refusal: every refused poll
/// spends the address's budget for calls without a credential, and a few forgotten tabs
/// would lock the operator's own sign-in out with 429. Before, each tab kept asking for the
/// doors and the readers every 4 seconds, forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_dashboard_whose_login_ended_stops_polling() {
    if !browser_present() {
        return;
    }
    let s = crate::fixtures::TestServer::start().await;
    let script = r##"
import { chromium } from "playwright-core";
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu"],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, locale: "en-US" });
  const page = await context.newPage();
  await page.goto(new URL("/admin?lang=en", process.env.PAGE_URL).toString());
  await page.fill("#credential", process.env.ADMIN_TOKEN);
  await page.click("main.login button[type=submit]");
  await page.locator("#tab-doors").waitFor({ state: "visible" });
  const polls = [];
  page.on("request", (r) => {
    const p = new URL(r.url()).pathname;
    if (p === "/admin/v1/readers" || p === "/admin/v1/doors") polls.push(Date.now());
  });
  // Polling runs while signed in.
  const t0 = Date.now();
  while (polls.length < 2 && Date.now() - t0 < 15000) await page.waitForTimeout(200);
  if (polls.length < 2) throw new Error("the dashboard does not poll");
  // Signed out in a second tab of the same browser (the same cookie).
  const other = await context.newPage();
  await other.goto(new URL("/admin?lang=en", process.env.PAGE_URL).toString());
  await other.click("form.logout button[type=submit]");
  await other.locator("main.login").waitFor({ state: "visible" });
  const out = Date.now();
  await page.waitForTimeout(13000);
  const after = polls.filter((t) => t > out);
  // At most the one round of two refused polls; three rounds run in 13 s without the stop.
  console.log(`POLLS_AFTER ${after.length}`);
  if (after.length > 2) throw new Error(`${after.length} polls after the login ended`);
  console.log("STOPPED");
} catch (e) {
  console.log("FAIL " + (e && e.stack ? e.stack : e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
"##;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let (url, script) = (s.base_url.clone(), script.to_string());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(["--input-type=module", "-e", &script])
            .current_dir(root)
            .env("PAGE_URL", url)
            .env("ADMIN_TOKEN", crate::fixtures::ADMIN_TOKEN)
            .output()
            .expect("run node")
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    println!("{said}");
    assert!(
        out.status.success() && said.contains("STOPPED"),
        "the dashboard kept polling after its login ended ({}):\n{said}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
