//! Synthetic palms for demos, tests, replay and benchmarks (SPEC 5, "reference synthetic palm").
//!
//! A NAME maps to a stable identity vector (Gaussian, seeded by SHA-256 of the name); every scan
//! adds Gaussian noise of its own seed. Two scans of one name have cosine similarity about
//! 0.90 (0.85–0.95); scans of different names about 0 (±0.1 at dim 128). Pure and deterministic:
//! the same (name, seed) always gives the same vector.

use sha2::{Digest, Sha256};

/// Per-component noise giving genuine pairs a cosine of about 0.90: `1 / (1 + σ²·dim) ≈ 0.9`.
fn noise_sigma(dim: usize) -> f32 {
    (0.11 / dim as f32).sqrt()
}

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    fn gauss(&mut self) -> f32 {
        let (u1, u2) = (self.unit(), self.unit());
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

fn seed_of(parts: &[&[u8]]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let d = h.finalize();
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let n = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// The identity vector of `name` (unit length).
pub fn identity(name: &str, dim: usize) -> Vec<f32> {
    let mut r = SplitMix(seed_of(&[b"palm identity", name.as_bytes()]));
    normalised((0..dim).map(|_| r.gauss()).collect())
}

/// One scan of `name`: its identity plus noise drawn from `scan_seed` (unit length).
pub fn scan(name: &str, dim: usize, scan_seed: u64) -> Vec<f32> {
    let sigma = noise_sigma(dim);
    let mut r = SplitMix(seed_of(&[
        b"palm scan",
        name.as_bytes(),
        &scan_seed.to_le_bytes(),
    ]));
    let id = identity(name, dim);
    normalised(id.into_iter().map(|x| x + sigma * r.gauss()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::matcher::dot;

    #[test]
    fn genuine_pairs_are_close_impostors_far() {
        let dim = 128;
        let mut genuine = Vec::new();
        let mut impostor = Vec::new();
        for i in 0..200u64 {
            let a = scan(&format!("p{i}"), dim, 2 * i);
            let b = scan(&format!("p{i}"), dim, 2 * i + 1);
            let c = scan(&format!("q{i}"), dim, 7);
            genuine.push(dot(&a, &b));
            impostor.push(dot(&a, &c));
        }
        let gmin = genuine.iter().cloned().fold(f32::MAX, f32::min);
        let gmean = genuine.iter().sum::<f32>() / genuine.len() as f32;
        let imax = impostor.iter().cloned().fold(f32::MIN, f32::max);
        assert!((0.85..=0.95).contains(&gmean), "genuine mean {gmean}");
        assert!(gmin > 0.80, "genuine min {gmin}");
        assert!(imax < 0.5, "impostor max {imax}");
        assert_eq!(scan("x", dim, 1), scan("x", dim, 1));
        assert_ne!(scan("x", dim, 1), scan("x", dim, 2));
    }
}
