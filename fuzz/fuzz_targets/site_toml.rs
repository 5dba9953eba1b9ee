//! Site policy documents (`config/site.toml`, admin uploads, scenario `site`). Never a panic;
//! parsing is deterministic, and an accepted policy answers its time and holiday questions.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palmgate::core::policy::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::parse(text) {
        Ok(p) => {
            let t = chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap();
            let _ = p.local(t);
            let _ = p.is_holiday(t);
        }
        Err(errors) => {
            assert!(
                !errors.is_empty(),
                "an error result names at least one error"
            );
            for e in &errors {
                let _ = e.to_string();
                if let Some(line) = e.line {
                    assert!(
                        line >= 1 && line <= text.lines().count().max(1) + 1,
                        "line {line}"
                    );
                }
            }
        }
    }
});
