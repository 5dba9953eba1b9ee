//! Template decoding: the wire's base64 text and raw little-endian f32 bytes, then
//! normalisation. Never a panic; an accepted template is unit length and survives the
//! encode → decode round trip bit for bit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palmgate::core::matcher::{from_le_bytes, normalise, to_le_bytes};
use palmgate::mqtt::protocol::{Inbound, TopicKind, encode_template, parse};

fn check(bytes: &[u8], dim: usize) {
    let Ok(values) = from_le_bytes(bytes, dim) else {
        return;
    };
    assert_eq!(values.len(), dim);
    assert_eq!(to_le_bytes(&values), bytes, "raw round trip");
    if let Ok(unit) = normalise(values, dim) {
        assert!(unit.iter().all(|v| v.is_finite()));
        let norm: f32 = unit.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
        // The wire form of an accepted template decodes to the same values.
        let b64 = encode_template(&unit);
        let payload =
            format!(r#"{{"capture_id":"c","template":"{b64}","quality":0.5,"liveness":true}}"#);
        match parse(TopicKind::Capture, payload.as_bytes(), dim) {
            Ok(Inbound::Capture(c)) => {
                let again = normalise(c.template.to_vec(), dim).expect("renormalise");
                assert_eq!(again.len(), dim);
            }
            other => {
                // A unit template may still normalise again to `Zero` only if it underflows;
                // anything else is a bug.
                if let Err(e) = &other {
                    assert!(
                        matches!(
                            e,
                            palmgate::mqtt::protocol::ProtocolError::Template(
                                palmgate::core::matcher::TemplateError::Zero
                            )
                        ),
                        "wire round trip refused: {e}"
                    );
                } else {
                    panic!("not a capture: {other:?}");
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Raw bytes at the production dimension and at the length the input happens to have.
    check(data, 128);
    check(data, data.len() / 4);
    // The base64 text path as a reader sends it.
    if let Ok(text) = std::str::from_utf8(data) {
        if !text.contains(['"', '\\']) && !text.chars().any(char::is_control) {
            let payload = format!(
                r#"{{"capture_id":"c","template":"{text}","quality":0.5,"liveness":true}}"#
            );
            let _ = parse(TopicKind::Capture, payload.as_bytes(), 128);
            let _ = parse(TopicKind::Capture, payload.as_bytes(), 4);
        }
    }
});
