//! 1:N palm-template search: L2-normalised f32 vectors, cosine similarity, best match.
//!
//! Pure computation. The index keeps one contiguous `n × dim` block per partner, so a search
//! is a straight scan of dot products the compiler vectorises; a scope (one partner for a hosted
//! session, the site's allowed partners for a door) picks which blocks are scanned.
//! Invariants: every stored vector has norm 1 and length `dim`; one entry per (partner, user).

use super::ids::{ExternalId, PartnerId};
use std::collections::HashMap;

/// Why a template was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TemplateError {
    #[error("template has {got} values, expected {expected}")]
    Dimension { expected: usize, got: usize },
    #[error("template holds a NaN or infinite value")]
    NotFinite,
    #[error("template is all zeros")]
    Zero,
}

/// Checks `values` and scales them to unit length.
pub fn normalise(mut values: Vec<f32>, dim: usize) -> Result<Vec<f32>, TemplateError> {
    if values.len() != dim {
        return Err(TemplateError::Dimension {
            expected: dim,
            got: values.len(),
        });
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(TemplateError::NotFinite);
    }
    let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
    if !(norm > f32::MIN_POSITIVE) || !norm.is_finite() {
        return Err(TemplateError::Zero);
    }
    for v in &mut values {
        *v /= norm;
    }
    Ok(values)
}

/// Decodes `dim` little-endian f32 values from raw bytes.
pub fn from_le_bytes(bytes: &[u8], dim: usize) -> Result<Vec<f32>, TemplateError> {
    if bytes.len() != dim * 4 {
        return Err(TemplateError::Dimension {
            expected: dim,
            got: bytes.len() / 4,
        });
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Encodes values as little-endian bytes (the wire and sealed form).
pub fn to_le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The best candidate of a search.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub partner_id: PartnerId,
    pub external_id: ExternalId,
    pub similarity: f32,
}

#[derive(Default, Clone, Debug)]
struct Block {
    ids: Vec<ExternalId>,
    slots: HashMap<ExternalId, usize>,
    data: Vec<f32>,
}

/// The enrolled templates, by partner.
#[derive(Clone, Debug)]
pub struct Index {
    dim: usize,
    blocks: HashMap<PartnerId, Block>,
}

impl Index {
    pub fn new(dim: usize) -> Index {
        Index {
            dim,
            blocks: HashMap::new(),
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.blocks.values().map(|b| b.ids.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds or replaces a user's template (already normalised, `dim` long).
    pub fn insert(&mut self, partner: PartnerId, user: ExternalId, template: &[f32]) {
        assert_eq!(template.len(), self.dim, "template dimension");
        let b = self.blocks.entry(partner).or_default();
        match b.slots.get(&user) {
            Some(&i) => b.data[i * self.dim..(i + 1) * self.dim].copy_from_slice(template),
            None => {
                b.slots.insert(user.clone(), b.ids.len());
                b.ids.push(user);
                b.data.extend_from_slice(template);
            }
        }
    }

    /// Removes a user's template; true if it was there.
    pub fn remove(&mut self, partner: PartnerId, user: &ExternalId) -> bool {
        let dim = self.dim;
        let Some(b) = self.blocks.get_mut(&partner) else {
            return false;
        };
        let Some(i) = b.slots.remove(user) else {
            return false;
        };
        let last = b.ids.len() - 1;
        if i != last {
            b.ids.swap(i, last);
            let (head, tail) = b.data.split_at_mut(last * dim);
            head[i * dim..(i + 1) * dim].copy_from_slice(&tail[..dim]);
            b.slots.insert(b.ids[i].clone(), i);
        }
        b.ids.pop();
        b.data.truncate(last * dim);
        true
    }

    /// The most similar user among `partners`' templates, whatever the score.
    pub fn best<'a>(
        &self,
        query: &[f32],
        partners: impl IntoIterator<Item = &'a PartnerId>,
    ) -> Option<Candidate> {
        let mut best: Option<(PartnerId, usize, f32)> = None;
        for p in partners {
            let Some(b) = self.blocks.get(p) else {
                continue;
            };
            for (i, row) in b.data.chunks_exact(self.dim).enumerate() {
                let s = dot(row, query);
                if best.is_none_or(|(_, _, bs)| s > bs) {
                    best = Some((*p, i, s));
                }
            }
        }
        best.map(|(p, i, s)| Candidate {
            partner_id: p,
            external_id: self.blocks[&p].ids[i].clone(),
            similarity: s,
        })
    }

    /// Every partner with at least one template.
    pub fn partners(&self) -> impl Iterator<Item = &PartnerId> {
        self.blocks.keys()
    }
}

/// Dot product in eight independent lanes (vectorises well).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u8) -> PartnerId {
        PartnerId::from_random([n; 16])
    }
    fn u(s: &str) -> ExternalId {
        ExternalId(s.into())
    }
    fn unit(dim: usize, hot: usize) -> Vec<f32> {
        let mut v = vec![0.0; dim];
        v[hot] = 1.0;
        v
    }

    #[test]
    fn normalise_checks_and_scales() {
        assert_eq!(
            normalise(vec![1.0; 3], 4),
            Err(TemplateError::Dimension {
                expected: 4,
                got: 3
            })
        );
        assert_eq!(
            normalise(vec![f32::NAN, 1.0], 2),
            Err(TemplateError::NotFinite)
        );
        assert_eq!(normalise(vec![0.0, 0.0], 2), Err(TemplateError::Zero));
        let v = normalise(vec![3.0, 4.0], 2).unwrap();
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
    }

    #[test]
    fn best_is_scoped_and_removal_keeps_the_rest() {
        let mut ix = Index::new(16);
        ix.insert(p(1), u("a"), &unit(16, 0));
        ix.insert(p(1), u("b"), &unit(16, 1));
        ix.insert(p(2), u("c"), &unit(16, 2));
        let q = unit(16, 2);
        assert_eq!(ix.best(&q, &[p(2)]).unwrap().external_id, u("c"));
        let other = ix.best(&q, &[p(1)]).unwrap();
        assert!(other.similarity.abs() < 1e-6);
        assert!(ix.remove(p(1), &u("a")));
        assert!(!ix.remove(p(1), &u("a")));
        let b = ix.best(&unit(16, 1), &[p(1)]).unwrap();
        assert_eq!((b.external_id, b.similarity), (u("b"), 1.0));
        assert_eq!(ix.len(), 2);
    }

    #[test]
    fn bytes_round_trip() {
        let v = vec![0.5f32, -1.25, 3.0];
        assert_eq!(from_le_bytes(&to_le_bytes(&v), 3).unwrap(), v);
        assert!(from_le_bytes(&[0; 7], 2).is_err());
    }
}
