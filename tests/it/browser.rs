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
