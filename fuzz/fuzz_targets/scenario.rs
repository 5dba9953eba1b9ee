//! Scenario files (`scenarios/*.toml`) through the string-level parser `load` calls, and an
//! inline `site` through the policy parser as the runner does. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(s) = palmgate::replay::scenario::parse(text) {
        assert!(!(s.site.is_some() && s.site_file.is_some()));
        if let Some(site) = &s.site {
            let _ = palmgate::core::policy::Policy::parse(site);
        }
    }
});
