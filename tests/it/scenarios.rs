//! Every scenario in `scenarios/` runs here too (SPEC 9: `cargo test` runs every scenario).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_passes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let files = palmgate::replay::runner::collect(&[dir]);
    assert!(!files.is_empty(), "no scenarios found");
    let mut failed = vec![];
    for f in &files {
        let o = palmgate::replay::runner::run_file(f).await;
        if o.failures.is_empty() {
            println!("ok    {}", o.name);
        } else {
            println!("FAIL  {}", o.name);
            for l in &o.failures {
                println!("      {l}");
            }
            failed.push(o.name);
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} scenarios failed: {failed:?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn scenario_errors_name_the_step_and_key() {
    let e = palmgate::replay::scenario::parse(
        "name = \"x\"\nstart = \"2026-01-01T00:00:00Z\"\n[[steps]]\nat = \"+1s\"\n[[steps]]\ncapture = { reader = \"r\", palm = \"p\", quality = \"high\" }\n",
    )
    .unwrap_err();
    assert!(e.contains("steps[1].capture.quality"), "{e}");
    let e = palmgate::replay::scenario::parse(
        "name = \"x\"\nstart = \"2026-01-01T00:00:00Z\"\n[[steps]]\nbogus = 1\n",
    )
    .unwrap_err();
    assert!(e.contains("steps[0]") && e.contains("bogus"), "{e}");
    let e = palmgate::replay::scenario::parse("name = \"x\"\n[[steps]]\n").unwrap_err();
    assert!(e.contains("start"), "{e}");
}
