//! Golden JSON fixtures per event type and schema version (house rule 6).
//!
//! `tests/it/fixtures/events/v<N>/<Type>.json` (and `<Type>.<variant>.json` for other shapes of
//! the same type) each hold one envelope `{"type", "version", "data"}` as it is written to the
//! log. Every fixture must decode; a fixture at a type's current version must encode back to
//! exactly the same `data`, so a change to an event's shape cannot slip in unnoticed. Every
//! type in `KNOWN_TYPES` must have a `<Type>.json` at its current version, so a new event type
//! without a fixture fails here. Fixtures of old versions are kept forever: they prove the
//! upcasting in `Event::decode`.

use palmgate::core::Event;
use palmgate::core::event::{DecodeError, KNOWN_TYPES};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn fixture_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/events")
}

/// One fixture file, parsed.
struct Fixture {
    /// Path relative to the fixture root, for messages.
    name: String,
    /// `<N>` of the `v<N>` directory.
    dir_version: u32,
    /// The file stem up to its first dot.
    stem_type: String,
    kind: String,
    version: u32,
    data: Value,
}

fn load_fixtures() -> Vec<Fixture> {
    let root = fixture_root();
    let mut out = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", root.display()))
        .map(|d| d.expect("dir entry").path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let dname = dir.file_name().unwrap().to_string_lossy().into_owned();
        let dir_version: u32 = dname
            .strip_prefix('v')
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("fixture directory {dname} is not v<N>"));
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|f| f.expect("dir entry").path())
            .collect();
        files.sort();
        for file in files {
            let fname = file.file_name().unwrap().to_string_lossy().into_owned();
            let name = format!("{dname}/{fname}");
            let stem = fname
                .strip_suffix(".json")
                .unwrap_or_else(|| panic!("{name}: fixtures are .json files"));
            let text = std::fs::read_to_string(&file).unwrap();
            let envelope: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let obj = envelope
                .as_object()
                .unwrap_or_else(|| panic!("{name}: not an object"));
            let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
            assert_eq!(
                keys,
                BTreeSet::from(["type", "version", "data"]),
                "{name}: the envelope is exactly type, version, data"
            );
            out.push(Fixture {
                name: name.clone(),
                dir_version,
                stem_type: stem.split('.').next().unwrap().to_string(),
                kind: obj["type"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: type is a string"))
                    .to_string(),
                version: obj["version"]
                    .as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or_else(|| panic!("{name}: version is a u32")),
                data: obj["data"].clone(),
            });
        }
    }
    assert!(!out.is_empty(), "no fixtures under {}", root.display());
    out
}

/// Every fixture decoded, with its name (also used by the store contract to append one event
/// of every type).
pub(crate) fn fixture_events() -> Vec<(String, Event)> {
    load_fixtures()
        .into_iter()
        .map(|f| {
            let e = Event::decode(&f.kind, f.version, f.data)
                .unwrap_or_else(|e| panic!("{}: {e}", f.name));
            (f.name, e)
        })
        .collect()
}

#[test]
fn fixtures_are_filed_under_their_type_and_version() {
    for f in load_fixtures() {
        assert_eq!(f.stem_type, f.kind, "{}: file name names its type", f.name);
        assert_eq!(
            f.dir_version, f.version,
            "{}: directory names its version",
            f.name
        );
        assert!(
            KNOWN_TYPES.contains(&f.kind.as_str()),
            "{}: type {} is not in KNOWN_TYPES",
            f.name,
            f.kind
        );
    }
}

#[test]
fn every_fixture_decodes_and_encodes_back_exactly() {
    for f in load_fixtures() {
        let event = Event::decode(&f.kind, f.version, f.data.clone())
            .unwrap_or_else(|e| panic!("{}: does not decode: {e}", f.name));
        assert_eq!(
            event.kind(),
            f.kind,
            "{}: decoded into another type",
            f.name
        );
        let (kind, version, data) = event.encode();
        assert_eq!(kind, f.kind, "{}", f.name);
        if f.version == event.version() {
            assert_eq!(version, f.version, "{}", f.name);
            assert_eq!(
                data, f.data,
                "{}: encode(decode(data)) differs from the fixture:\n  fixture: {}\n  encoded: {}",
                f.name, f.data, data
            );
        } else {
            // An old version: decoding upcasts; the upcast form must itself be stable.
            assert!(
                version > f.version,
                "{}: encoded to an older version",
                f.name
            );
            let again = Event::decode(kind, version, data.clone())
                .unwrap_or_else(|e| panic!("{}: upcast form does not decode: {e}", f.name));
            assert_eq!(again, event, "{}: upcast form is not stable", f.name);
        }
    }
}

#[test]
fn every_known_type_has_a_fixture_at_its_current_version() {
    let have: BTreeSet<(String, u32)> = load_fixtures()
        .into_iter()
        .filter(|f| f.name.ends_with(&format!("/{}.json", f.kind)))
        .map(|f| (f.kind, f.version))
        .collect();
    // The current version of each type, as the code writes it.
    let current: BTreeSet<(String, u32)> = fixture_events()
        .into_iter()
        .map(|(_, e)| (e.kind().to_string(), e.version()))
        .collect();
    let mut missing = Vec::new();
    for kind in KNOWN_TYPES {
        let at_current = current.iter().find(|(k, _)| k == kind).map(|(_, v)| *v);
        match at_current {
            Some(v) if have.contains(&(kind.to_string(), v)) => {}
            Some(v) => missing.push(format!("v{v}/{kind}.json")),
            None => missing.push(format!("v<current>/{kind}.json")),
        }
    }
    assert!(
        missing.is_empty(),
        "event types without a golden fixture (add them under tests/it/fixtures/events): {missing:?}"
    );
}

#[test]
fn known_types_are_unique() {
    let set: BTreeSet<&str> = KNOWN_TYPES.iter().copied().collect();
    assert_eq!(
        set.len(),
        KNOWN_TYPES.len(),
        "KNOWN_TYPES holds a duplicate"
    );
}

/// The hash chain covers `data` as compact JSON with keys sorted (SPEC 8.1, `store::chain`):
/// the encoded value must serialize that way at every depth, or equal events could hash
/// differently.
#[test]
fn encoded_data_is_compact_with_sorted_keys() {
    /// Compact JSON with object keys sorted at every depth, built by hand so it does not
    /// depend on how `serde_json` orders maps.
    fn canonical(v: &Value) -> String {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let fields: Vec<String> = keys
                    .into_iter()
                    .map(|k| format!("{}:{}", Value::from(k.as_str()), canonical(&m[k])))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }
            Value::Array(a) => {
                format!(
                    "[{}]",
                    a.iter().map(canonical).collect::<Vec<_>>().join(",")
                )
            }
            scalar => scalar.to_string(),
        }
    }
    for (name, e) in fixture_events() {
        let data = e.encode().2;
        let text = serde_json::to_string(&data).unwrap();
        assert_eq!(text, canonical(&data), "{name}");
    }
}

/// The stored text (`Event::data_text`, which writes `SessionCreated` field by field instead of
/// through a `Value`) is byte for byte the canonical form of `encode`'s value: for every
/// fixture, and for `SessionCreated` with each optional field present or absent, metadata whose
/// keys arrive unsorted, strings that need escaping and sub-second times.
#[test]
fn stored_text_is_the_canonical_form_of_the_encoded_value() {
    use palmgate::core::{ExternalId, Language, PartnerId, ReaderId, SecretHash, SessionId};
    let canonical = |e: &Event| serde_json::to_string(&e.encode().2).unwrap();
    for (name, e) in fixture_events() {
        assert_eq!(e.data_text(), canonical(&e), "{name}");
    }
    let created = chrono::DateTime::parse_from_rfc3339("2026-11-28T02:03:04.123456789Z")
        .unwrap()
        .to_utc();
    for mask in 0u32..64 {
        let on = |bit: u32| mask & (1 << bit) != 0;
        let e = Event::SessionCreated {
            session_id: SessionId::time_ordered(1_764_295_384_123, [7; 16]),
            partner_id: on(0).then(|| PartnerId::from_random([3; 16])),
            reader_id: on(1).then(|| ReaderId("lobby-1".into())),
            kind: if on(2) {
                palmgate::core::SessionKind::Enroll
            } else {
                palmgate::core::SessionKind::Identify
            },
            language: Language::Kk,
            token_hash: SecretHash("ab".repeat(32)),
            external_id: on(3).then(|| ExternalId("EMP \"7\" \u{2014} Ж".into())),
            username: on(4).then(|| "Айгерім \\ O'Neil\n".to_string()),
            metadata: on(5).then(|| {
                serde_json::from_str(
                    r#"{"z":1,"a":{"y":[true,null,{"q":"x","b":2.5}],"b":"\u0001"},"m":-3}"#,
                )
                .unwrap()
            }),
            created_at: created,
            expires_at: created + chrono::Duration::minutes(15),
            trigger_id: on(1).then(|| "trg-9".to_string()),
        };
        assert_eq!(
            e.data_text(),
            canonical(&e),
            "SessionCreated, fields {mask:06b}"
        );
    }
}

/// Scores as a reader reports them (two decimals) are written to the log as they came, not
/// widened to f64 noise such as `0.9300000071525574`.
#[test]
fn capture_scores_round_trip_as_written() {
    let data = json!({
        "session_id": "0197a3c4-1f22-7a90-b6c3-5d2e8f9a0b14",
        "external_id": "EMP-12345",
        "capture": {
            "reader_id": "lobby-east-1",
            "capture_id": "cap-000180",
            "quality": 0.91,
            "similarity": 0.93
        },
        "at": "2025-06-01T09:03:12Z"
    });
    let e = Event::decode("SessionCompleted", 1, data.clone()).expect("decodes");
    let (_, _, back) = e.encode();
    assert_eq!(
        back["capture"], data["capture"],
        "scores changed on the way to the log"
    );
}

// --- decode errors ----------------------------------------------------------------------------

fn partner_activated() -> Value {
    json!({"partner_id": "0197a3c2-5e1b-7c4d-9f20-3b8e6d1a4f57", "at": "2025-06-03T10:00:00Z"})
}

#[test]
fn unknown_type_is_refused() {
    for kind in [
        "PartnerRenamed",
        "",
        "partnerActivated",
        "partner_activated",
    ] {
        match Event::decode(kind, 1, partner_activated()) {
            Err(DecodeError::UnknownType(k)) => assert_eq!(k, kind),
            other => panic!("{kind:?}: expected UnknownType, got {other:?}"),
        }
    }
    // The type is checked before the version.
    assert!(matches!(
        Event::decode("PartnerRenamed", 99, partner_activated()),
        Err(DecodeError::UnknownType(_))
    ));
}

#[test]
fn unknown_version_is_refused() {
    for version in [0, 2, 99, u32::MAX] {
        match Event::decode("PartnerActivated", version, partner_activated()) {
            Err(DecodeError::UnknownVersion { kind, version: v }) => {
                assert_eq!(kind, "PartnerActivated");
                assert_eq!(v, version);
            }
            other => panic!("v{version}: expected UnknownVersion, got {other:?}"),
        }
    }
}

#[test]
fn wrong_shaped_data_is_refused() {
    let p = "0197a3c2-5e1b-7c4d-9f20-3b8e6d1a4f57";
    let cases = [
        (
            "PartnerActivated",
            json!({"partner_id": p}),
            "missing field",
        ),
        (
            "PartnerActivated",
            json!({"partner_id": "not-a-uuid", "at": "2025-06-03T10:00:00Z"}),
            "bad uuid",
        ),
        (
            "PartnerActivated",
            json!({"partner_id": p, "at": "yesterday"}),
            "bad time",
        ),
        (
            "PartnerActivated",
            json!({"partner_id": 7, "at": "2025-06-03T10:00:00Z"}),
            "number for uuid",
        ),
        (
            "PartnerActivated",
            json!([p, "2025-06-03T10:00:00Z"]),
            "array for object",
        ),
        ("PartnerActivated", Value::Null, "null"),
        ("PartnerActivated", json!("PartnerActivated"), "string"),
        ("PartnerCreated", partner_activated(), "another type's data"),
        (
            "SessionFailed",
            json!({"session_id": p, "reason": "bored", "at": "2025-06-03T10:00:00Z"}),
            "unknown fail reason",
        ),
        (
            "SessionCreated",
            json!({"session_id": p, "kind": "enrol", "language": "en", "token_hash": "00",
                   "created_at": "2025-06-03T10:00:00Z", "expires_at": "2025-06-03T10:15:00Z"}),
            "unknown session kind",
        ),
        (
            "SessionCreated",
            json!({"session_id": p, "kind": "enroll", "language": "de", "token_hash": "00",
                   "created_at": "2025-06-03T10:00:00Z", "expires_at": "2025-06-03T10:15:00Z"}),
            "unsupported language",
        ),
        (
            "ReaderStatusChanged",
            json!({"reader_id": "r1", "online": "yes", "at": "2025-06-03T10:00:00Z"}),
            "string for bool",
        ),
        (
            "CaptureRetryRequested",
            json!({"session_id": p, "capture": {"reader_id": "r1", "capture_id": "c1", "quality": 0.2},
                   "attempt": -1, "at": "2025-06-03T10:00:00Z"}),
            "negative count",
        ),
    ];
    for (kind, data, why) in cases {
        match Event::decode(kind, 1, data) {
            Err(DecodeError::Shape {
                kind: k, version, ..
            }) => {
                assert_eq!(k, kind, "{why}");
                assert_eq!(version, 1, "{why}");
            }
            other => panic!("{kind} ({why}): expected Shape, got {other:?}"),
        }
    }
}
