//! `/v1/enroll` bodies as the server reads them: `parse_json` (the JSON extractor's parser),
//! then `parse_enroll`; plus the other pure request validators (`?limit=`, Content-Type, the
//! webhook signature checks partners use). None may panic; an accepted enroll body keeps its
//! fields exactly and within the contract's limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palmgate::http::body::{is_json_content_type, parse_json};
use palmgate::http::pass_api::{
    ListQuery, MAX_EXTERNAL_ID, MAX_LIST_OFFSET, MAX_USERNAME, parse_enroll,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = parse_json(data) {
        if let Ok(req) = parse_enroll(&value) {
            assert_eq!(
                value["external_id"].as_str(),
                Some(req.external_id.0.as_str())
            );
            assert!(!req.external_id.0.trim().is_empty());
            assert!(req.external_id.0.chars().count() <= MAX_EXTERNAL_ID);
            if let Some(u) = &req.username {
                assert!(u.chars().count() <= MAX_USERNAME);
                assert_eq!(value["username"].as_str(), Some(u.as_str()));
            }
            if let Some(m) = &req.metadata {
                assert!(m.is_object());
                assert_eq!(&value["metadata"], m);
            }
        }
    }
    // The same bytes through serde_json directly (the issue's `from_slice` path).
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = parse_enroll(&value);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(q) = ListQuery::parse(Some(text)) {
            assert!((1..=500).contains(&q.limit));
            assert!(q.offset <= MAX_LIST_OFFSET);
            assert!(q.q.as_ref().is_none_or(|q| !q.is_empty()));
        }
        let _ = is_json_content_type(Some(text));
        let (secret, rest) = text.split_once('\n').unwrap_or((text, ""));
        let _ = palmgate::core::webhook::verify_seed_signature(secret, data, rest);
        let _ = palmgate::core::webhook::verify_standard_signature(secret, "msg_1", 0, data, rest);
    }
});
