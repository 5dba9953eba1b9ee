//! Palm templates at rest (SPEC 8.3): sealed with a per-user data key, keys wrapped by the
//! master key and kept in the key store, never in the log.
//!
//! Invariants: a template's clear bytes exist only in memory (the matcher index and the
//! capture being handled); the log holds `SealedTemplate` (ChaCha20-Poly1305, associated data
//! binding it to its partner and user); destroying the data key makes the ciphertext noise.
//! The clear bytes this module makes on the way (the encoding sealed, the decrypted buffer)
//! are zeroed before they are freed (`Zeroizing`): an erased template must not be
//! recoverable from the process's memory (SPEC 8.3).

use crate::core::event::SealedTemplate;
use crate::core::matcher;
use crate::core::{ExternalId, KeyId, PartnerId};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template cannot be opened: {0}")]
    Open(&'static str),
}

fn aad(partner: PartnerId, user: &ExternalId) -> Vec<u8> {
    let mut a = partner.0.as_bytes().to_vec();
    a.extend_from_slice(user.0.as_bytes());
    a
}

/// A fresh data key and the template sealed under it.
pub struct Sealed {
    pub template: SealedTemplate,
    pub data_key: [u8; 32],
}

/// Seals `values` for (partner, user) under a new data key. `random` supplies 16 + 32 + 12
/// bytes: key id, data key, nonce.
pub fn seal(
    values: &[f32],
    partner: PartnerId,
    user: &ExternalId,
    key_id: [u8; 16],
    data_key: [u8; 32],
    nonce: [u8; 12],
) -> Sealed {
    let cipher = ChaCha20Poly1305::new((&data_key).into());
    // Encrypted in a copy of its own (the AEAD's buffer ends as ciphertext); this one is wiped.
    let clear = Zeroizing::new(matcher::to_le_bytes(values));
    let ct = cipher
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: &clear,
                aad: &aad(partner, user),
            },
        )
        .expect("ChaCha20-Poly1305 encryption of a small buffer cannot fail");
    Sealed {
        template: SealedTemplate {
            key_id: KeyId::from_random(key_id),
            nonce: STANDARD.encode(nonce),
            ciphertext: STANDARD.encode(ct),
        },
        data_key,
    }
}

/// Opens a sealed template with its data key.
pub fn open(
    t: &SealedTemplate,
    data_key: &[u8; 32],
    partner: PartnerId,
    user: &ExternalId,
    dim: usize,
) -> Result<Vec<f32>, TemplateError> {
    let nonce: [u8; 12] = STANDARD
        .decode(&t.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or(TemplateError::Open("bad nonce"))?;
    let ct = STANDARD
        .decode(&t.ciphertext)
        .map_err(|_| TemplateError::Open("bad ciphertext encoding"))?;
    let clear = ChaCha20Poly1305::new(data_key.into())
        .decrypt(
            (&nonce).into(),
            Payload {
                msg: &ct,
                aad: &aad(partner, user),
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| TemplateError::Open("authentication failed"))?;
    // The values returned are the caller's to wipe; the decrypted bytes are wiped here.
    matcher::from_le_bytes(&clear, dim).map_err(|_| TemplateError::Open("wrong dimension"))
}

/// Wraps and unwraps data keys with the master-derived wrapping key (XChaCha20-Poly1305).
#[derive(Clone)]
pub struct KeyWrap {
    cipher: XChaCha20Poly1305,
}

impl KeyWrap {
    pub fn new(wrap_key: &[u8; 32]) -> KeyWrap {
        KeyWrap {
            cipher: XChaCha20Poly1305::new(wrap_key.into()),
        }
    }

    /// `nonce (24) ‖ ciphertext`, bound to the key id.
    pub fn wrap(&self, key_id: KeyId, data_key: &[u8; 32], nonce: [u8; 24]) -> Vec<u8> {
        let ct = self
            .cipher
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: data_key,
                    aad: key_id.0.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encryption of 32 bytes cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        out
    }

    pub fn unwrap(&self, key_id: KeyId, wrapped: &[u8]) -> Result<[u8; 32], TemplateError> {
        if wrapped.len() < 24 {
            return Err(TemplateError::Open("wrapped key too short"));
        }
        let (nonce, ct) = wrapped.split_at(24);
        let clear = self
            .cipher
            .decrypt(
                nonce.into(),
                Payload {
                    msg: ct,
                    aad: key_id.0.as_bytes(),
                },
            )
            .map_err(|_| TemplateError::Open("wrapped key does not open with this master key"))?;
        clear
            .try_into()
            .map_err(|_| TemplateError::Open("wrapped key has the wrong length"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let p = PartnerId::from_random([1; 16]);
        let u = ExternalId("E1".into());
        let v = vec![0.25f32; 8];
        let s = seal(&v, p, &u, [2; 16], [3; 32], [4; 12]);
        assert_eq!(open(&s.template, &s.data_key, p, &u, 8).unwrap(), v);
        assert!(open(&s.template, &[9; 32], p, &u, 8).is_err());
        assert!(open(&s.template, &s.data_key, p, &ExternalId("E2".into()), 8).is_err());
        assert!(
            !s.template
                .ciphertext
                .contains(&STANDARD.encode(matcher::to_le_bytes(&v)))
        );
    }

    #[test]
    fn wrap_unwrap() {
        let w = KeyWrap::new(&[5; 32]);
        let id = KeyId::from_random([6; 16]);
        let wrapped = w.wrap(id, &[7; 32], [8; 24]);
        assert_eq!(w.unwrap(id, &wrapped).unwrap(), [7; 32]);
        assert!(KeyWrap::new(&[6; 32]).unwrap(id, &wrapped).is_err());
        assert!(w.unwrap(KeyId::from_random([1; 16]), &wrapped).is_err());
    }
}
