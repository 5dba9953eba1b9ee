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

#[tokio::test(flavor = "multi_thread")]
async fn dashboards_in_headless_chromium() {
    if let Some(why) = missing_peer() {
        if std::env::var("PALMGATE_PEERS").as_deref() == Ok("required") {
            panic!("browser peer missing and PALMGATE_PEERS=required: {why}");
        }
        println!("skipping the browser tests: {why}");
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
    assert!(
        out.status.success(),
        "browser checks failed (screenshots in {}):\n{stdout}",
        shots.display()
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
    if let Some(why) = missing_peer() {
        if std::env::var("PALMGATE_PEERS").as_deref() == Ok("required") {
            panic!("browser peer missing and PALMGATE_PEERS=required: {why}");
        }
        println!("skipping the browser check: {why}");
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
