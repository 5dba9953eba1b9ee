//! Reader payloads (SPEC 5) on every topic kind, with the production template dimension, and
//! reader topics. Never a panic; an accepted capture carries a unit-length template of `DIM`
//! finite values and a quality in 0..=1.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palmgate::mqtt::protocol::{Inbound, TopicKind, parse, parse_topic, reader_topic};

const DIM: usize = 128;

fuzz_target!(|data: &[u8]| {
    for kind in [TopicKind::Status, TopicKind::Capture, TopicKind::Trigger] {
        match parse(kind, data, DIM) {
            Ok(Inbound::Capture(c)) => {
                assert_eq!(kind, TopicKind::Capture);
                assert_eq!(c.template.len(), DIM);
                assert!(c.template.iter().all(|v| v.is_finite()));
                let norm: f32 = c.template.iter().map(|v| v * v).sum::<f32>().sqrt();
                assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
                assert!((0.0..=1.0).contains(&c.quality));
            }
            Ok(Inbound::Status { .. }) => assert_eq!(kind, TopicKind::Status),
            Ok(Inbound::Trigger { .. }) => assert_eq!(kind, TopicKind::Trigger),
            Err(e) => {
                let _ = e.label();
                let _ = e.to_string();
            }
        }
    }
    if let Ok(topic) = std::str::from_utf8(data) {
        if let Ok((reader, kind)) = parse_topic("palmgate", topic) {
            // Round trip: formatting the parsed topic gives the same text back.
            assert_eq!(reader_topic("palmgate", &reader, kind), topic);
        }
    }
});
