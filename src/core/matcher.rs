//! 1:N palm-template search: L2-normalised f32 vectors, cosine similarity, best match.
//!
//! Pure computation: no IO, no clock, no randomness, no threads. A scope (one partner for a
//! hosted session, the site's allowed partners for a door) picks which partners' blocks are
//! scanned; each partner's templates live in one block.
//!
//! # What `best` returns
//! The template with the highest similarity `s = Σᵢ rowᵢ·queryᵢ`, summed in f32 strictly in
//! index order `i = 0, 1, …` (one rounding per multiply and per add, no fused multiply-add) —
//! exactly what [`dot`] computes. Ties go to the first row in scan order (partners in the
//! order given, rows in insertion order, a removed row's slot taken by the last row). Both
//! search paths return that same candidate, bit for bit; [`Index::best`] takes the faster one.
//!
//! Scan order is the caller's, and the shell keeps it the same from restart to restart: a
//! door's scope lists the site's partners sorted by [`PartnerId`] (so an exact tie between
//! partners, the same palm enrolled at two of them, goes to the smallest id), and a rebuilt
//! index inserts each partner's users by enrollment time, then external_id, the order a live
//! index inserted them. Within one partner an exact tie is all but impossible (enrolling a
//! palm the partner already holds fails `already_enrolled`); after removals the live order
//! can differ from a rebuilt one only there.
//!
//! # The f32 path, [`Index::best_exact`]
//! Scores every row that could beat the best so far. Rows are stored *interleaved by groups of
//! 32*: value `i` of the 32 rows of a group sits in 32 consecutive floats, so the kernel is a
//! vertical multiply-add into 32 accumulators with one broadcast query value per step: no
//! horizontal sums, no shuffles, and each row's sum is one sequential chain — the arithmetic
//! of [`dot`]. A group whose 32 scores hold nothing better is dismissed with one vectorised
//! count. The AVX2 and AVX-512 kernels (see *Kernels*) scan two groups side by side, so that
//! 64 independent chains hide the adder's latency.
//!
//! Beyond the L3 (about 50 000 rows) a full scan is bound by memory bandwidth, like FAISS's
//! `IndexFlatIP`, so the scan first finds a bar and then reads only what could pass it:
//! 1. *Survey*: for every group, only the query's 16 largest values' positions `S` are read
//!    (an eighth of the bytes at dim 128). Per row, `Σ_{i∈S} rᵢqᵢ + ‖r_{∉S}‖·‖q_{∉S}‖`
//!    bounds the similarity (Cauchy–Schwarz), with `‖r_{∉S}‖² ≤ N² − ‖r_S‖²` (`N` the
//!    block's largest row norm, `‖r_S‖²` summed from the values just read): no extra memory.
//!    Each group keeps the largest bound of its rows; the rows with the largest sums over `S`
//!    are scored exactly, and the best of them sets the bar just below itself.
//! 2. *Scan*: only groups whose bound passes the bar are read, in full and in order, exactly
//!    as above. After a genuine match (similarity ≈ 0.9; a stranger's bound is ≈ 0.8) that is
//!    the match's group and hardly any other; a stranger's query (bar ≈ 0.3) reads every
//!    group, an eighth more than one pass.
//!
//! The result is exactly the full scan's: the first row with the highest similarity (same
//! row, same bits; the tests check it against a naive row-by-row scan). The survey is bound
//! by how many cache misses are in flight, so it runs branch-free, with 16-lane AVX-512 or
//! 8-lane AVX2 intrinsics and fused multiply-adds (it only bounds: its rounding is covered by
//! a margin, so it need not match between levels; the scores do).
//!
//! # The int8 path, [`Index::best`] (the default)
//! 1. Scans int8 codes (a quarter of the bytes), keeping the [`SHORTLIST`] best approximate
//!    scores.
//! 2. Re-ranks them with the exact f32 rows, best approximate score first, stopping when the
//!    rest cannot reach the winner.
//! 3. *Proves* no other row can win. With `s_q`, `s_r` the query and row code scales and
//!    `q̃`, `r̃` the dequantised vectors, `|q·r − q̃·r̃| ≤ ½·(s_q·‖r̃‖₁ + s_r·‖q‖₁) = δ`
//!    (taking the largest `‖r̃‖₁`, `s_r` of the scope), and an f32 sum of `n` products is
//!    within `ε ≈ n·2⁻²⁴·‖q‖‖r‖` of the real one. Every row left out scored at most the
//!    shortlist's floor, so if `floor + δ + ε` is below the winner's exact similarity, the
//!    winner is the true best. Otherwise (near-ties: many rows within `δ ≈ 0.025` of the
//!    winner) the codes are rescanned and every row that could still reach the winner is
//!    re-ranked. The result is always identical to `best_exact`; only the time differs.
//!
//! Two shortcuts keep the scan short. A row scoring more than `2.5·(δ + ε)` below the best
//! approximate score seen cannot win, so the floor rises to that as well: once a genuine match
//! has been seen (similarity ≈ 0.9 against ≈ 0 ± 0.1 for strangers) nothing else enters the
//! shortlist. And each row's codes are split into a head and a tail half, stored apart: the
//! head is always scanned, the tail only for batches of 64 rows where some row could still
//! beat the floor, bounding the tail by `‖row tail codes‖·‖query tail codes‖` (Cauchy–Schwarz;
//! `⌈‖row tail codes‖⌉` is kept per row in a u16). For a genuine query about half the rows
//! (those after the match) are settled by their head, which matters most where the scan is
//! bound by memory bandwidth (−35 % at 1M templates).
//!
//! # Codes
//! Symmetric int8 with one scale per row, `s_r = max|rᵢ| / 127`, `cᵢ = round(rᵢ / s_r)`. A
//! per-row scale is used rather than one global scale because unit vectors' largest
//! component varies (about 0.2–0.45 at dim 128): a global scale must fit the largest one and
//! wastes a bit or more of resolution on most rows, which widens `δ`; the price is 4 bytes per
//! row and one multiply per row in the scan. The query is quantised the same way.
//!
//! Only SSE2 is guaranteed on x86-64 without `-C target-cpu`, and it has no 8-bit multiply:
//! the fast instruction is `pmaddwd` (eight i16 × i16 products summed in pairs into i32). The
//! codes are therefore stored two per 16-bit word, `w = (c₂ₖ + 128) + 256·c₂ₖ₊₁`: read as i16,
//! `w·a + (w >> 8)·b` with `a = q₂ₖ` and `b = q₂ₖ₊₁ − 256·q₂ₖ` (fits in i16 since `|q| ≤ 127`)
//! equals `(c₂ₖ + 128)·q₂ₖ + c₂ₖ₊₁·q₂ₖ₊₁`; the `+128` term is a per-query constant subtracted
//! once. The portable kernel is a plain integer reduction over fixed-size arrays, which LLVM
//! turns into one load, one shift and two `pmaddwd` per 16 codes; it is specialised (const
//! generics) for the common widths, with a generic fallback.
//!
//! # Kernels
//! The crate is built for the x86-64 baseline (the Debian package must run on any x86-64), so
//! wider instructions are chosen at run time: [`Index::new`] asks the CPU once
//! ([`Kernels::best`], `is_x86_feature_detected!`) and every search of that index runs
//! - [`Kernels::Avx512`] (AVX-512 F, BW and VNNI): the code scan with `vpdpwssd` (the
//!   `pmaddwd` of 32 words and the add in one instruction), one 512-bit load per 64 codes,
//!   and the 16 partial sums of 16 rows added across in one shuffle tree; the f32 scan of
//!   the AVX2 level (measured ~5 % faster on Zen 4 than 16-lane registers, which it splits
//!   in two 256-bit halves anyway), but the f32 survey with 16-lane registers (half the
//!   instructions per group, which is what limits it: 4× faster than the portable survey
//!   at 1M rows);
//! - [`Kernels::Avx2`] (AVX2 and FMA): the portable bodies compiled with 8-lane registers,
//!   the f32 scan two groups at a time, the survey with 8-lane intrinsics;
//! - [`Kernels::Portable`]: the same Rust for the baseline (SSE2), or for any other target.
//!
//! Every level performs the same f32 multiplies and adds in the same order per row (no fused
//! multiply-add, which would round once instead of twice) and integer sums that wrap the same
//! in any order: the results are identical, bit for bit, whichever level runs (the tests check
//! every level this machine has against the portable one). The only `unsafe` is the call into
//! a `#[target_feature]` function, behind a level checked by [`Kernels::available`], and the
//! unaligned loads and stores of the AVX-512 code kernel and of the f32 survey, from and to
//! references of exactly the size they read and write.
//!
//! # Memory (dim 128)
//! Per row: 512 bytes f32 + 128 bytes codes + 4 bytes scale + 2 bytes tail norm + the user id
//! (its bytes in one arena per block, an 8-byte span and a 4-byte slot of an open-addressing
//! table at most 7/8 full). About 665 bytes: 66.5 MB (63.4 MiB) for 100 000 users with ids
//! like `u12345`. [`Index::memory`] counts it.
//!
//! Invariants: every stored vector has length `dim` (and should have norm 1); one entry per
//! (partner, user); a block's f32 rows, codes, tail norms, scales and ids always describe the
//! same rows; padding lanes of the last f32 group are zero; a block with no rows is removed.
//!
//! # Erasure (SPEC 8.3: an erased template can never be recovered)
//! Decoded int8 codes are ~0.9999 cosine to the template, so every copy of a row (f32 values,
//! codes, their temporaries) is zeroed before its memory is given back or left as spare
//! capacity: a removed row's slots are zeroed before the buffers are truncated, a block is
//! zeroed when dropped ([`Block::wipe`]), the buffers grow and shrink by copying into a new
//! allocation and zeroing the old one ([`reserve_wiping`], [`shrink_wiping`]) rather than by
//! `realloc`, and a row's code temporaries are zeroed after use. Only removal, insertion and
//! growth pay for it, never a search. Left: user ids (not template bytes) are not wiped.

use super::ids::{ExternalId, PartnerId};
use std::collections::BTreeMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use zeroize::{DefaultIsZeroes, Zeroize};

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
    let sum = values.iter().map(|v| v * v).sum::<f32>();
    if sum.is_finite() && sum >= f32::MIN_POSITIVE {
        let norm = sum.sqrt();
        for v in &mut values {
            *v /= norm;
        }
        return Ok(values);
    }
    // The squares left f32's normal range: tiny values (all below ~1e-19, found by the
    // `template` fuzz target: their squares are subnormal or zero, so the f32 norm was off by
    // percents and the "unit" template was not) or huge ones (above ~1e19: the sum overflowed).
    // f64 holds every f32 square exactly enough.
    let norm = values
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return Err(TemplateError::Zero);
    }
    for v in &mut values {
        *v = (f64::from(*v) / norm) as f32;
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

/// The similarity the index computes: `Σ aᵢ·bᵢ` in f32, summed in index order (over the
/// shorter of the two). [`Candidate::similarity`] equals `dot(query, template)` bit for bit.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0, |s, (x, y)| s + x * y)
}

/// The best candidate of a search.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub partner_id: PartnerId,
    pub external_id: ExternalId,
    pub similarity: f32,
}

/// How a quantised search went (for benchmarks and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SearchStats {
    /// Rows whose codes were scanned (rows of partners in scope, each time the scope names them).
    pub scanned: usize,
    /// Rows of which only the first half of the codes was read: the rest could not lift
    /// them above the shortlist's floor.
    pub head_only: usize,
    /// Rows re-ranked with their exact f32 values.
    pub reranked: usize,
    /// True when the shortlist could not prove the winner and the codes were rescanned.
    pub fallback: bool,
    /// True when the search ran on the f32 rows only (query not finite, zero or of the wrong
    /// length, or a stored row not finite).
    pub exact_only: bool,
}

/// Bytes held by the index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUse {
    /// f32 rows (including the zero padding of each partner's last group of 32).
    pub f32_bytes: usize,
    /// int8 codes and per-row scales.
    pub code_bytes: usize,
    /// User ids: name bytes, spans, lookup tables.
    pub id_bytes: usize,
    /// `f32_bytes + code_bytes + id_bytes` plus the fixed size of each block.
    pub total_bytes: usize,
    /// Like `total_bytes` but counting allocated capacity rather than length (growth
    /// headroom not yet written is reserved address space, mostly not resident).
    pub reserved_bytes: usize,
}

/// The SIMD kernels a search runs. [`Index::new`] takes the best this CPU has (checked once,
/// at run time: the crate is built for the x86-64 baseline). Every level computes the same
/// bits: the same multiplies and adds in the same order per row, no fused multiply-add.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kernels {
    /// Portable Rust for the target's baseline (SSE2 on x86-64).
    Portable,
    /// x86-64 with AVX2 and FMA: 8-lane f32, 16-word `vpmaddwd`.
    Avx2,
    /// x86-64 with AVX-512 F, BW and VNNI: 16-lane f32, 32-word `vpdpwssd`.
    Avx512,
}

impl Kernels {
    /// Every level, slowest first.
    pub const ALL: [Kernels; 3] = [Kernels::Portable, Kernels::Avx2, Kernels::Avx512];

    /// The fastest level this CPU runs.
    pub fn best() -> Kernels {
        Kernels::ALL
            .into_iter()
            .rev()
            .find(|k| k.available())
            .unwrap_or(Kernels::Portable)
    }

    /// True when this CPU has every feature the level's kernels use.
    pub fn available(self) -> bool {
        match self {
            Kernels::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2 => {
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512 => {
                Kernels::Avx2.available()
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernels::Portable => "portable (baseline SIMD)",
            Kernels::Avx2 => "AVX2+FMA",
            Kernels::Avx512 => "AVX-512 F/BW/VNNI",
        }
    }
}

/// Rows per interleaved f32 group.
const GROUP: usize = 32;
/// Rows re-ranked exactly after the int8 scan.
pub const SHORTLIST: usize = 16;
/// Rows whose code dot products are computed per batch before their scores are examined.
const BATCH: usize = 64;
/// Largest code magnitude.
const CODE_MAX: f32 = 127.0;

/// The ids of one block's rows: name bytes in one arena, a span per row, and an
/// open-addressing table (linear probing, backward-shift deletion) from name to row.
#[derive(Clone, Debug, Default)]
struct Ids {
    arena: String,
    spans: Vec<(u32, u32)>,
    /// `row + 1` per slot, 0 when empty; the length is zero or a power of two.
    table: Vec<u32>,
    /// Arena bytes no row refers to any more.
    garbage: usize,
}

/// Deterministic SipHash (no per-process keys: the core draws no randomness).
type IdHasher = BuildHasherDefault<DefaultHasher>;

fn hash_of(name: &str) -> usize {
    IdHasher::default().hash_one(name) as usize
}

impl Ids {
    fn name(&self, row: usize) -> &str {
        let (start, len) = self.spans[row];
        &self.arena[start as usize..(start + len) as usize]
    }

    /// The table slot holding `name`, or the empty slot where it would go.
    fn slot(&self, name: &str) -> (usize, Option<usize>) {
        let mask = self.table.len() - 1;
        let mut i = hash_of(name) & mask;
        loop {
            match self.table[i] {
                0 => return (i, None),
                e if self.name(e as usize - 1) == name => return (i, Some(e as usize - 1)),
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn find(&self, name: &str) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        self.slot(name).1
    }

    /// Appends `name` (absent) as the next row.
    fn push(&mut self, name: &str) {
        let row = self.spans.len();
        if (row + 1) * 8 > self.table.len() * 7 {
            self.grow();
        }
        let start = u32::try_from(self.arena.len()).expect("id arena below 4 GiB");
        self.arena.push_str(name);
        self.spans.push((start, name.len() as u32));
        let (slot, found) = self.slot(name);
        debug_assert!(found.is_none());
        self.table[slot] = row as u32 + 1;
    }

    fn grow(&mut self) {
        let cap = (self.table.len() * 2).max(8);
        self.table = vec![0; cap];
        let mask = cap - 1;
        for row in 0..self.spans.len() {
            let mut i = hash_of(self.name(row)) & mask;
            while self.table[i] != 0 {
                i = (i + 1) & mask;
            }
            self.table[i] = row as u32 + 1;
        }
    }

    /// Empties table slot `i`, shifting back the entries probed past it.
    fn vacate(&mut self, mut i: usize) {
        let mask = self.table.len() - 1;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let e = self.table[j];
            if e == 0 {
                self.table[i] = 0;
                return;
            }
            let home = hash_of(self.name(e as usize - 1)) & mask;
            // The entry at j may move to i unless its home lies cyclically in (i, j].
            let stays = if i <= j {
                i < home && home <= j
            } else {
                i < home || home <= j
            };
            if !stays {
                self.table[i] = e;
                i = j;
            }
        }
    }

    /// Removes `row`; the last row takes its index.
    fn swap_remove(&mut self, row: usize) {
        let name_len = self.spans[row].1 as usize;
        let (slot, _) = self.slot(self.name(row));
        self.vacate(slot);
        let last = self.spans.len() - 1;
        if row != last {
            let (slot, _) = self.slot(self.name(last));
            self.table[slot] = row as u32 + 1;
            self.spans[row] = self.spans[last];
        }
        self.spans.pop();
        self.garbage += name_len;
        if self.garbage > 4096 && self.garbage * 2 > self.arena.len() {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let mut arena = String::with_capacity(self.arena.len() - self.garbage);
        for span in &mut self.spans {
            let (start, len) = *span;
            let at = arena.len() as u32;
            arena.push_str(&self.arena[start as usize..(start + len) as usize]);
            *span = (at, len);
        }
        self.arena = arena;
        self.garbage = 0;
    }

    fn bytes(&self) -> (usize, usize) {
        let len = self.arena.len() + self.spans.len() * 8 + self.table.len() * 4;
        let cap = self.arena.capacity() + self.spans.capacity() * 8 + self.table.capacity() * 4;
        (len, cap)
    }
}

/// One partner's templates.
#[derive(Clone, Debug, Default)]
struct Block {
    /// f32 rows interleaved by groups: value `i` of row `r` at
    /// `(r / GROUP) * dim * GROUP + i * GROUP + r % GROUP`.
    rows: Vec<f32>,
    /// Codes of the first `shape.head` words of each row, row after row.
    head: Vec<i16>,
    /// Codes of the other `shape.tail` words of each row, row after row.
    tail: Vec<i16>,
    /// Per row, `⌈‖tail codes‖₂⌉`: bounds the tail's share of a code dot product.
    tail_norms: Vec<u16>,
    /// Code scale per row.
    scales: Vec<f32>,
    ids: Ids,
    /// Rows holding a NaN or infinite value (searched with the f32 path only).
    irregular: usize,
    /// Upper bounds over every row ever stored here (they never shrink, which only makes
    /// the exactness proof more conservative after removals).
    scale_max: f32,
    /// Largest `‖r̃‖₁` (dequantised row).
    l1_max: f32,
    /// Largest `‖r‖₂`.
    norm_max: f32,
}

impl Drop for Block {
    /// An emptied block (its partner's last user erased) or a dropped index leaves no
    /// template bytes in freed memory (SPEC 8.3).
    fn drop(&mut self) {
        self.wipe();
    }
}

/// Makes room for `extra` more elements. Where `Vec` would `realloc` (which may move the
/// elements and free the old buffer as it is), the elements are copied into a new buffer of
/// twice the capacity and the old one is zeroed before it is freed.
fn reserve_wiping<T: DefaultIsZeroes>(v: &mut Vec<T>, extra: usize) {
    if v.capacity() - v.len() >= extra {
        return;
    }
    let cap = (v.len() + extra).max(2 * v.capacity()).max(4);
    let mut grown = Vec::with_capacity(cap);
    grown.extend_from_slice(v);
    std::mem::replace(v, grown).zeroize();
}

/// Releases `v`'s spare capacity, zeroing the old buffer (see [`reserve_wiping`]).
fn shrink_wiping<T: DefaultIsZeroes>(v: &mut Vec<T>) {
    if v.capacity() == v.len() {
        return;
    }
    let mut exact = Vec::with_capacity(v.len());
    exact.extend_from_slice(v);
    std::mem::replace(v, exact).zeroize();
}

impl Block {
    fn len(&self) -> usize {
        self.scales.len()
    }

    fn at(dim: usize, row: usize, i: usize) -> usize {
        (row / GROUP) * dim * GROUP + i * GROUP + row % GROUP
    }

    fn row_is_irregular(&self, dim: usize, row: usize) -> bool {
        (0..dim).any(|i| !self.rows[Self::at(dim, row, i)].is_finite())
    }

    fn write(&mut self, shape: Shape, row: usize, t: &[f32]) {
        let dim = shape.dim;
        let was = row < self.len() && self.row_is_irregular(dim, row);
        let base = (row / GROUP) * dim * GROUP + row % GROUP;
        for (i, &v) in t.iter().enumerate() {
            self.rows[base + i * GROUP] = v;
        }
        let now = t.iter().any(|v| !v.is_finite());
        self.irregular = self.irregular + usize::from(now) - usize::from(was);

        let (mut codes, scale) = quantise(t);
        let mut words = vec![0i16; shape.words];
        pack(&codes, &mut words);
        let (h, tl) = (shape.head, shape.tail);
        self.head[row * h..(row + 1) * h].copy_from_slice(&words[..h]);
        self.tail[row * tl..(row + 1) * tl].copy_from_slice(&words[h..]);
        // The row's codes, in full: zeroed before they are freed (SPEC 8.3).
        words.zeroize();
        let tail_sq: u64 = codes.iter().skip(2 * h).map(|&c| (c * c) as u64).sum();
        self.tail_norms[row] = ceil_sqrt(tail_sq);
        self.scales[row] = scale;
        let l1 = scale * codes.iter().map(|c| c.unsigned_abs() as f32).sum::<f32>();
        codes.zeroize();
        let norm = t.iter().map(|v| v * v).sum::<f32>().sqrt();
        if now {
            return;
        }
        self.scale_max = self.scale_max.max(scale);
        self.l1_max = self.l1_max.max(l1);
        self.norm_max = self.norm_max.max(norm);
    }

    fn push(&mut self, shape: Shape, user: &str, t: &[f32]) {
        let row = self.len();
        // Grown by `reserve_wiping`, so a reallocation leaves no copy of the rows behind.
        if row.is_multiple_of(GROUP) {
            reserve_wiping(&mut self.rows, GROUP * shape.dim);
            self.rows.resize(self.rows.len() + GROUP * shape.dim, 0.0);
        }
        reserve_wiping(&mut self.head, shape.head);
        self.head.resize(self.head.len() + shape.head, 0);
        reserve_wiping(&mut self.tail, shape.tail);
        self.tail.resize(self.tail.len() + shape.tail, 0);
        reserve_wiping(&mut self.tail_norms, 1);
        self.tail_norms.push(0);
        reserve_wiping(&mut self.scales, 1);
        self.scales.push(0.0);
        self.ids.push(user);
        self.write(shape, row, t);
    }

    fn swap_remove(&mut self, shape: Shape, row: usize) {
        let (dim, h, tl) = (shape.dim, shape.head, shape.tail);
        if self.row_is_irregular(dim, row) {
            self.irregular -= 1;
        }
        let last = self.len() - 1;
        if row != last {
            for i in 0..dim {
                self.rows[Self::at(dim, row, i)] = self.rows[Self::at(dim, last, i)];
            }
            self.head.copy_within(last * h..(last + 1) * h, row * h);
            self.tail.copy_within(last * tl..(last + 1) * tl, row * tl);
            self.tail_norms[row] = self.tail_norms[last];
            self.scales[row] = self.scales[last];
        }
        // The last slot (the removed row, or the row just moved out of it) is zeroed before
        // it becomes spare capacity (SPEC 8.3).
        for i in 0..dim {
            self.rows[Self::at(dim, last, i)].zeroize();
        }
        self.ids.swap_remove(row);
        self.head[last * h..].zeroize();
        self.head.truncate(last * h);
        self.tail[last * tl..].zeroize();
        self.tail.truncate(last * tl);
        self.tail_norms[last..].zeroize();
        self.tail_norms.truncate(last);
        self.scales[last..].zeroize();
        self.scales.truncate(last);
        // The truncated f32 lanes are all zero: the last row's were zeroed just above, and a
        // group is dropped only when none of its rows is live.
        self.rows.truncate(last.div_ceil(GROUP) * GROUP * dim);
    }

    /// Zeroes every buffer holding template values (f32 rows, codes, tail norms, scales), over
    /// their full capacity, and empties them. Called when a block is dropped.
    fn wipe(&mut self) {
        self.rows.zeroize();
        self.head.zeroize();
        self.tail.zeroize();
        self.tail_norms.zeroize();
        self.scales.zeroize();
    }

    /// The exact similarity of `row` (sequential sum, as [`dot`]).
    fn exact(&self, dim: usize, row: usize, query: &[f32]) -> f32 {
        let base = (row / GROUP) * dim * GROUP + row % GROUP;
        query
            .iter()
            .enumerate()
            .fold(0.0, |s, (i, q)| s + self.rows[base + i * GROUP] * q)
    }

    /// The first row scoring above `bar` and above every earlier row of the block, scanning
    /// in order (with no `bar`, row 0 is taken whatever its score): `(row, similarity)`.
    fn scan_exact(
        &self,
        k: Kernels,
        shape: Shape,
        query: &[f32],
        bar: Option<f32>,
    ) -> Option<(usize, f32)> {
        let probe = Probe::new(self, shape.dim, query);
        let dim = shape.dim;
        match k {
            // SAFETY: `k` is an `Index`'s kernels (or, in tests, a level from `levels()`), which
            // is `Avx2` or `Avx512` only after `Kernels::available` confirmed (std's detection,
            // CPU and OS state) AVX2 and FMA, the features `x86::scan_exact_avx2` enables. (The
            // AVX-512 level uses it too: 256-bit registers measured ~5 % faster here than
            // 512-bit ones, which Zen 4 splits in two halves anyway.)
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2 | Kernels::Avx512 => unsafe {
                x86::scan_exact_avx2(k, self, dim, query, bar, probe.as_ref())
            },
            _ => scan_exact_in::<1>(Kernels::Portable, self, dim, query, bar, probe.as_ref()),
        }
    }
}

/// Values per row the f32 scan's probe reads (the query's largest in magnitude).
const PROBE: usize = 16;
/// Rows the survey proposes as the likely winner (scored exactly to set the first bar).
const SEEDS: usize = 4;

/// What lets the f32 scan dismiss a group of 32 rows after reading a few of its values: the
/// query's [`PROBE`] largest values `S` (at dim 128 about half of its squared norm). Per
/// row, `Σ_{i∈S} rᵢqᵢ + ‖r_{∉S}‖·‖q_{∉S}‖` bounds the similarity (Cauchy–Schwarz), and
/// `‖r_{∉S}‖² ≤ N² − ‖r_S‖²` with `N` the block's largest row norm, so the bound comes
/// from the values read and costs no memory. The probe only decides what is read; every
/// row that is scored is scored by the same sequential sum.
#[derive(Clone, Copy)]
struct Probe {
    /// Positions `S`, ascending (the reading order; any order bounds the same).
    dims: [usize; PROBE],
    /// The query's values at `dims`.
    q: [f32; PROBE],
    /// `‖q_{∉S}‖`, widened for rounding.
    rest: f32,
    /// `N²`, widened for the rounding of the row norms.
    norm2: f32,
    /// Twice the largest f32 rounding error of a similarity (see [`Index::bounds`]), which
    /// also covers the rounding of the probe's own sums.
    eps: f32,
}

impl Probe {
    /// None when the block cannot be probed: a row or the query not finite or huge, a query
    /// of another length, or too few values for a probe to save anything.
    fn new(b: &Block, dim: usize, query: &[f32]) -> Option<Probe> {
        if dim < 4 * PROBE
            || b.irregular > 0
            || query.len() != dim
            || !query.iter().all(|q| q.is_finite() && q.abs() < 1e15)
            || !b.norm_max.is_finite()
            || b.norm_max >= 1e15
        {
            return None;
        }
        let mut order: Vec<usize> = (0..dim).collect();
        order.select_nth_unstable_by(PROBE - 1, |&x, &y| {
            query[y].abs().total_cmp(&query[x].abs())
        });
        let mut dims = [0usize; PROBE];
        dims.copy_from_slice(&order[..PROBE]);
        dims.sort_unstable();
        let mut in_probe = vec![false; dim];
        for &d in &dims {
            in_probe[d] = true;
        }
        // Squares of f32 values are exact in f64, and their sums nearly so.
        let sq = |x: f32| f64::from(x) * f64::from(x);
        let all: f64 = query.iter().map(|&x| sq(x)).sum();
        let rest: f64 = query
            .iter()
            .zip(&in_probe)
            .filter(|(_, p)| !**p)
            .map(|(&x, _)| sq(x))
            .sum();
        let n = (dim + 4) as f64;
        let eps32 = f64::from(f32::EPSILON);
        let norm = f64::from(b.norm_max) * (1.0 + 4.0 * n * eps32);
        Some(Probe {
            dims,
            q: dims.map(|d| query[d]),
            rest: (rest.sqrt() * (1.0 + 1e-6)) as f32 * (1.0 + 1e-6),
            norm2: (norm * norm) as f32,
            eps: (4.0 * n * eps32 * all.sqrt() * norm) as f32 + 1e-30,
        })
    }

    /// Over the first `live` rows of `group` (group number `g`): returns the most any of them
    /// can score, and keeps in `seen` each lane's largest sum over the probe values.
    ///
    /// Every value, row and query, is finite and below 10¹⁵ in magnitude (see [`Probe::new`]),
    /// so no sum overflows and none is NaN. Branch-free on purpose: the survey is bound by
    /// how many groups' cache misses are in flight at once, and a mispredicted branch or a
    /// long per-group dependency chain cuts that short.
    #[inline(always)]
    fn survey(&self, group: &[f32], live: usize, g: u32, seen: &mut Seen) -> f32 {
        let (mut head, mut sq) = ([0f32; GROUP], [0f32; GROUP]);
        for (&d, &q) in self.dims.iter().zip(&self.q) {
            let x: &[f32; GROUP] = group[d * GROUP..(d + 1) * GROUP]
                .try_into()
                .expect("a group step is GROUP floats");
            for l in 0..GROUP {
                head[l] += x[l] * q;
                sq[l] += x[l] * x[l];
            }
        }
        // ‖r_S‖² as summed is within a relative 2⁻²⁰ of the real one (PROBE terms, all ≥ 0).
        let mut reach = [0f32; GROUP];
        for l in 0..GROUP {
            let rest = (self.norm2 - sq[l] * (1.0 - 1e-4)).max(0.0).sqrt();
            let on = l < live;
            reach[l] = if on {
                head[l] + rest * self.rest + self.eps
            } else {
                f32::NEG_INFINITY
            };
            let h = if on { head[l] } else { f32::NEG_INFINITY };
            let better = h > seen.top[l];
            seen.top[l] = if better { h } else { seen.top[l] };
            seen.group[l] = if better { g } else { seen.group[l] };
        }
        let m: [f32; 8] = std::array::from_fn(|i| {
            let a = greater(reach[i], reach[i + 8]);
            greater(a, greater(reach[i + 16], reach[i + 24]))
        });
        let m = [
            greater(m[0], m[4]),
            greater(m[1], m[5]),
            greater(m[2], m[6]),
            greater(m[3], m[7]),
        ];
        greater(greater(m[0], m[2]), greater(m[1], m[3]))
    }

    /// True when some of the first `live` rows of `group` might still score above `bar`.
    #[cfg(test)]
    fn open(&self, group: &[f32], live: usize, bar: f32) -> bool {
        self.survey(group, live, 0, &mut Seen::new()) > bar
    }
}

/// The survey's running guess of a winner: per lane (row position within a group), the
/// largest sum over the probe values so far and the group it was found in.
struct Seen {
    top: [f32; GROUP],
    group: [u32; GROUP],
}

impl Seen {
    fn new() -> Seen {
        Seen {
            top: [f32::NEG_INFINITY; GROUP],
            group: [0; GROUP],
        }
    }

    /// The rows of the [`SEEDS`] largest probe sums (at most one per lane).
    fn seeds(&self) -> impl Iterator<Item = usize> + '_ {
        let mut lanes: [usize; GROUP] = std::array::from_fn(|l| l);
        lanes.sort_unstable_by(|&x, &y| self.top[y].total_cmp(&self.top[x]));
        lanes
            .into_iter()
            .take(SEEDS)
            .filter(|&l| self.top[l] > f32::NEG_INFINITY)
            .map(|l| self.group[l] as usize * GROUP + l)
    }
}

/// `max(a, b)` for values that are not NaN, as one compare and select (no branch).
#[inline(always)]
fn greater(a: f32, b: f32) -> f32 {
    if a > b { a } else { b }
}

/// Surveys every group of `rows` (which hold `n` rows, `reach.len()` groups) with the
/// kernels `k`: `reach[g]` is the most a row of group `g` can score, `seen` proposes seeds.
fn survey(k: Kernels, p: &Probe, rows: &[f32], n: usize, reach: &mut [f32], seen: &mut Seen) {
    let step = rows.len() / reach.len().max(1);
    let full = n / GROUP;
    let done = match k {
        // SAFETY: `k` is an `Index`'s kernels (or, in tests, a level from `levels()`), which
        // is `Avx512` only after `Kernels::available` confirmed (std's detection, CPU and OS
        // state) every feature `x86::survey_avx512` enables.
        #[cfg(target_arch = "x86_64")]
        Kernels::Avx512 => unsafe {
            x86::survey_avx512(p, &rows[..full * step], step, &mut reach[..full], seen);
            full
        },
        // SAFETY: as above, for the AVX2 and FMA features of `x86::survey_avx2`.
        #[cfg(target_arch = "x86_64")]
        Kernels::Avx2 => unsafe {
            x86::survey_avx2(p, &rows[..full * step], step, &mut reach[..full], seen);
            full
        },
        _ => 0,
    };
    for (g, r) in reach.iter_mut().enumerate().skip(done) {
        *r = p.survey(
            &rows[g * step..(g + 1) * step],
            n - g * GROUP,
            g as u32,
            seen,
        );
    }
}

/// Takes, in order, the rows of `scores` (rows `first..`) scoring above the bar.
#[inline(always)]
fn take_best(
    scores: &[f32],
    first: usize,
    found: &mut Option<(usize, f32)>,
    bar: &mut Option<f32>,
) {
    // Most groups hold nothing better: test them with one vectorised count.
    if let Some(b) = *bar
        && scores.iter().fold(0u32, |c, &s| c + u32::from(s > b)) == 0
    {
        return;
    }
    for (l, &s) in scores.iter().enumerate() {
        if bar.is_none_or(|b| s > b) {
            *found = Some((first + l, s));
            *bar = Some(s);
        }
    }
}

/// [`Block::scan_exact`]'s body, compiled once per kernel level (the wrappers only change
/// which instructions LLVM may use; the arithmetic per row is the same sequential chain).
///
/// With a [`Probe`], two passes:
/// 1. *Survey*: every group's probe values only (`PROBE` of `dim` values per row, two cache
///    lines per value and group, prefetched [`AHEAD`] groups early), giving each group the
///    most its rows can score and proposing the [`SEEDS`] rows with the largest probe sums.
///    Those are scored exactly; the best, `s*`, sets the bar just below itself (the rows
///    scoring `≥ s*`, the winner among them, are still found in order).
/// 2. *Scan*: only the groups that might hold a row above the bar are read, in full and in
///    order. After a genuine match (s* ≈ 0.9; a stranger's bound is ≈ 0.8 at most) that is
///    the match's group and hardly any other: about an eighth of the bytes in all, at dim
///    128. For a stranger (s* ≈ 0.3) every group is read, an eighth more than one pass.
///
/// Groups are read `G` side by side when they are: each row's sum is one chain of dependent
/// adds (3–4 cycles each), so the more rows in flight, the closer the scan gets to the
/// adder's throughput. One group is 32 chains (eight SSE2 registers); wider vectors need two.
#[inline(always)]
fn scan_exact_in<const G: usize>(
    k: Kernels,
    b: &Block,
    dim: usize,
    query: &[f32],
    bar: Option<f32>,
    probe: Option<&Probe>,
) -> Option<(usize, f32)> {
    let n = b.len();
    let step = GROUP * dim;
    let groups = b.rows.len() / step.max(1);
    let mut bar = bar;
    // Without a probe every group is read (as if each might hold a better row).
    let mut reach = Vec::new();
    if let Some(p) = probe {
        reach.resize(groups, f32::INFINITY);
        let mut seen = Seen::new();
        survey(k, p, &b.rows, n, &mut reach, &mut seen);
        for row in seen.seeds() {
            if row < n {
                let s = b.exact(dim, row, query);
                // Rows scoring ≥ s are still above the bar, so the first best row is found.
                if bar.is_none_or(|b| s > b) {
                    bar = Some(s.next_down());
                }
            }
        }
    }
    // A bound is never NaN; a NaN bar (a NaN row taken by an earlier block) passes nothing,
    // as in the scan itself.
    let open = |g: usize, bar: Option<f32>| reach.is_empty() || bar.is_none_or(|b| reach[g] > b);
    let mut found = None;
    let mut g = 0;
    while g < groups {
        if !open(g, bar) {
            g += 1;
            continue;
        }
        let mut m = 1;
        while m < G && g + m < groups && open(g + m, bar) {
            m += 1;
        }
        let rows = &b.rows[g * step..(g + m) * step];
        let mut acc = [[0f32; GROUP]; G];
        accumulate(rows, dim, query, &mut acc[..m]);
        for (j, acc) in acc.iter().enumerate().take(m) {
            let first = (g + j) * GROUP;
            take_best(&acc[..(n - first).min(GROUP)], first, &mut found, &mut bar);
        }
        g += m;
    }
    found
}

/// Adds `xᵢ·qᵢ` for every `i` (in index order, as [`dot`]) to the scores of the
/// `acc.len()` (1 or 2) consecutive interleaved groups of 32 rows that `rows` holds.
#[inline(always)]
fn accumulate(rows: &[f32], dim: usize, query: &[f32], acc: &mut [[f32; GROUP]]) {
    let step = GROUP * dim;
    let q = &query[..dim.min(query.len())];
    let part = |j: usize| &rows[j * step..(j + 1) * step];
    match acc {
        [a, b] => {
            let mut flat = [0f32; 2 * GROUP];
            flat[..GROUP].copy_from_slice(a);
            flat[GROUP..].copy_from_slice(b);
            two_group_scores(&mut flat, part(0), part(1), q);
            a.copy_from_slice(&flat[..GROUP]);
            b.copy_from_slice(&flat[GROUP..]);
        }
        _ => {
            for (j, acc) in acc.iter_mut().enumerate() {
                group_scores(acc, part(j), q);
            }
        }
    }
}

/// Adds one interleaved group's products to its 32 scores.
#[inline(always)]
fn group_scores(acc: &mut [f32; GROUP], group: &[f32], query: &[f32]) {
    for (x, &q) in group.chunks_exact(GROUP).zip(query) {
        let x: &[f32; GROUP] = x.try_into().expect("a group step is GROUP floats");
        for l in 0..GROUP {
            acc[l] += x[l] * q;
        }
    }
}

/// Adds two interleaved groups' products to their scores, `a`'s rows then `b`'s.
#[inline(always)]
fn two_group_scores(acc: &mut [f32; 2 * GROUP], a: &[f32], b: &[f32], query: &[f32]) {
    for ((x, y), &q) in a.chunks_exact(GROUP).zip(b.chunks_exact(GROUP)).zip(query) {
        let x: &[f32; GROUP] = x.try_into().expect("a group step is GROUP floats");
        let y: &[f32; GROUP] = y.try_into().expect("a group step is GROUP floats");
        for l in 0..GROUP {
            acc[l] += x[l] * q;
            acc[GROUP + l] += y[l] * q;
        }
    }
}

/// The code scale of `v`, `max |vᵢ| / 127`; 0 for a zero or non-finite vector.
fn scale_of(v: &[f32]) -> f32 {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max > 0.0 && max.is_finite() {
        max / CODE_MAX
    } else {
        0.0
    }
}

/// The code of `x` at `scale` (> 0).
fn code_of(x: f32, scale: f32) -> i32 {
    ((x / scale).round() as i32).clamp(-127, 127)
}

/// Symmetric int8 codes of `v` and their scale (`v ≈ scale · codes`); all zeros for a zero
/// or non-finite vector.
fn quantise(v: &[f32]) -> (Vec<i32>, f32) {
    let scale = scale_of(v);
    if scale == 0.0 {
        return (vec![0; v.len()], 0.0);
    }
    (v.iter().map(|&x| code_of(x, scale)).collect(), scale)
}

/// Packs codes two per word: low byte `c₂ₖ + 128`, high byte `c₂ₖ₊₁` (two's complement).
fn pack(codes: &[i32], out: &mut [i16]) {
    out.fill(0);
    for (w, pair) in out.iter_mut().zip(codes.chunks(2)) {
        let lo = (pair[0] + 128) as u16;
        let hi = pair.get(1).copied().unwrap_or(0) as i8 as u8 as u16;
        *w = (lo | (hi << 8)) as i16;
    }
}

/// `⌈√x⌉`, saturating at `u16::MAX`.
fn ceil_sqrt(x: u64) -> u16 {
    let mut r = (x as f64).sqrt() as u64;
    while r * r < x {
        r += 1;
    }
    while r > 0 && (r - 1) * (r - 1) >= x {
        r -= 1;
    }
    r.min(u16::MAX as u64) as u16
}

/// How a row's codes are laid out.
#[derive(Clone, Copy, Debug)]
struct Shape {
    dim: usize,
    /// Code words per row: two codes per word, padded to a multiple of 16 words.
    words: usize,
    /// Words scanned first (half the row when the halves get a specialised kernel).
    head: usize,
    /// Words scanned only for rows whose head leaves them a chance (`words − head`).
    tail: usize,
}

impl Shape {
    fn new(dim: usize) -> Shape {
        let words = dim.div_ceil(2).div_ceil(16) * 16;
        let head = if words.is_multiple_of(32) {
            words / 2
        } else {
            words
        };
        Shape {
            dim,
            words,
            head,
            tail: words - head,
        }
    }
}

/// A query prepared for the code scan.
struct CodeQuery {
    /// `q₂ₖ` per word (zero in padding).
    a: Vec<i16>,
    /// `q₂ₖ₊₁ − 256·q₂ₖ` per word (zero in padding).
    b: Vec<i16>,
    /// `128 · Σ q₂ₖ` over the head words and over the tail words: the offset of the low bytes.
    head_offset: i32,
    tail_offset: i32,
    /// `‖tail codes‖₂`, slightly widened (for the bound on a row's tail).
    tail_norm: f32,
    scale: f32,
    l1: f32,
    l2: f32,
}

impl CodeQuery {
    /// None when the query cannot be quantised (zero or not finite).
    fn new(query: &[f32], shape: Shape) -> Option<CodeQuery> {
        if query.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let scale = scale_of(query);
        if scale == 0.0 {
            return None;
        }
        let mut a = vec![0i16; shape.words];
        let mut b = vec![0i16; shape.words];
        let mut tail_sq = 0u64;
        for (k, ((a, b), pair)) in a.iter_mut().zip(&mut b).zip(query.chunks(2)).enumerate() {
            let lo = code_of(pair[0], scale);
            let hi = pair.get(1).map_or(0, |&x| code_of(x, scale));
            *a = lo as i16;
            *b = (hi - 256 * lo) as i16;
            if k >= shape.head {
                tail_sq += (lo * lo + hi * hi) as u64;
            }
        }
        let offset = |w: &[i16]| 128 * w.iter().map(|&x| x as i32).sum::<i32>();
        Some(CodeQuery {
            head_offset: offset(&a[..shape.head]),
            tail_offset: offset(&a[shape.head..]),
            a,
            b,
            tail_norm: (tail_sq as f32).sqrt() * (1.0 + 1e-5),
            scale,
            l1: query.iter().map(|v| v.abs()).sum(),
            l2: query.iter().map(|v| v * v).sum::<f32>().sqrt(),
        })
    }
}

/// `Σ (c₂ₖ + 128)·q₂ₖ + c₂ₖ₊₁·q₂ₖ₊₁` over `W` words of one row (see the module doc). Each
/// lane adds at most `W / 16` terms below 2²³, so the lanes cannot overflow for `W ≤ 2048`.
/// (Indexed loops on purpose: this exact shape is what LLVM turns into `pmaddwd`.)
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn code_dot<const W: usize>(row: &[i16; W], a: &[i16; W], b: &[i16; W]) -> i32 {
    let mut acc = [0i32; 16];
    for c in 0..W / 16 {
        for k in 0..16 {
            let i = c * 16 + k;
            let w = row[i];
            acc[k] += w as i32 * a[i] as i32 + (w >> 8) as i32 * b[i] as i32;
        }
    }
    acc.iter().fold(0i32, |s, x| s.wrapping_add(*x))
}

/// [`code_dot`] for any width.
fn code_dot_any(row: &[i16], a: &[i16], b: &[i16]) -> i32 {
    row.iter().zip(a).zip(b).fold(0i32, |s, ((&w, &a), &b)| {
        s.wrapping_add(w as i32 * a as i32 + (w >> 8) as i32 * b as i32)
    })
}

/// [`code_dot`] of each `W`-word row of `codes` into `out`, with the kernels `k`.
#[inline(always)]
fn code_dots<const W: usize>(k: Kernels, codes: &[i16], a: &[i16], b: &[i16], out: &mut [i32]) {
    match k {
        // SAFETY: `k` is an `Index`'s kernels (or, in tests, a level from `levels()`), which
        // is `Avx512` only after `Kernels::available` confirmed (std's detection, CPU and OS
        // state) every feature `x86::code_dots_avx512` enables on this CPU.
        #[cfg(target_arch = "x86_64")]
        Kernels::Avx512 => unsafe { x86::code_dots_avx512::<W>(codes, a, b, out) },
        // SAFETY: as above, for the AVX2 and FMA features of `x86::code_dots_avx2`.
        #[cfg(target_arch = "x86_64")]
        Kernels::Avx2 => unsafe { x86::code_dots_avx2::<W>(codes, a, b, out) },
        _ => code_dots_portable::<W>(codes, a, b, out),
    }
}

/// The portable [`code_dots`].
///
/// LLVM may vectorise this loop *across* rows instead (gathering each word lane by lane),
/// several times slower than the per-row `pmaddwd` code: it does so when inlined into a
/// caller, hence `inline(never)`, and for rows of 32 words or fewer, hence the opaque
/// `black_box` per row there (measured: 2–3× faster at 16 and 32 words, 8 % slower at 64).
#[inline(never)]
fn code_dots_portable<const W: usize>(codes: &[i16], a: &[i16], b: &[i16], out: &mut [i32]) {
    code_dots_in::<W, true>(codes, a, b, out)
}

/// The body of every [`code_dots`] kernel; `OPAQUE` hides each row's result from the
/// optimiser for `W ≤ 32` (see [`code_dots_portable`]).
#[inline(always)]
fn code_dots_in<const W: usize, const OPAQUE: bool>(
    codes: &[i16],
    a: &[i16],
    b: &[i16],
    out: &mut [i32],
) {
    let a: &[i16; W] = a.try_into().expect("query words");
    let b: &[i16; W] = b.try_into().expect("query words");
    for (row, d) in codes.chunks_exact(W).zip(out.iter_mut()) {
        let row: &[i16; W] = row.try_into().expect("row words");
        let v = code_dot(row, a, b);
        *d = if OPAQUE && W <= 32 {
            std::hint::black_box(v)
        } else {
            v
        };
    }
}

/// The kernels compiled for x86-64 extensions beyond the baseline: the portable bodies
/// again, with more instructions allowed (wider vectors; the same operations per row, so
/// the same bits). Only called through [`Kernels`] values checked by [`Kernels::available`].
// AVX-512 intrinsics and target features are stable since Rust 1.89.
#[cfg(target_arch = "x86_64")]
#[clippy::msrv = "1.89"]
mod x86 {
    use super::{Block, GROUP, Kernels, Probe, Seen, code_dots_in, scan_exact_in};
    use std::arch::x86_64::{
        __m256, __m512, _CMP_GT_OQ, _mm_cvtss_f32, _mm_max_ps, _mm_max_ss, _mm_movehl_ps,
        _mm_shuffle_ps, _mm256_add_ps, _mm256_blendv_ps, _mm256_castps256_ps128,
        _mm256_castsi256_ps, _mm256_cmp_ps, _mm256_extractf128_ps, _mm256_fmadd_ps,
        _mm256_loadu_ps, _mm256_max_ps, _mm256_mul_ps, _mm256_set1_epi32, _mm256_set1_ps,
        _mm256_setzero_ps, _mm256_sqrt_ps, _mm256_storeu_ps, _mm256_sub_ps, _mm512_add_ps,
        _mm512_cmp_ps_mask, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mask_mov_epi32,
        _mm512_mask_mov_ps, _mm512_max_ps, _mm512_mul_ps, _mm512_reduce_max_ps, _mm512_set1_epi32,
        _mm512_set1_ps, _mm512_setzero_ps, _mm512_sqrt_ps, _mm512_storeu_ps, _mm512_sub_ps,
    };

    /// [`Probe::survey`] over whole groups (`rows` holds `reach.len()` of them, `step` floats
    /// each) with AVX2
    /// and fused multiply-adds (the survey only bounds: its rounding, covered by `eps` like
    /// the scan's, need not match any other level's).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn survey_avx2(
        p: &Probe,
        rows: &[f32],
        step: usize,
        reach: &mut [f32],
        seen: &mut Seen,
    ) {
        let load = |x: &[f32]| -> __m256 {
            let x: &[f32; 8] = x.try_into().expect("8 floats");
            // SAFETY: `x` is a reference to 32 readable bytes, exactly what the load reads.
            unsafe { _mm256_loadu_ps(x.as_ptr()) }
        };
        let mut top: [__m256; 4] = std::array::from_fn(|i| load(&seen.top[8 * i..8 * i + 8]));
        let mut grp: [__m256; 4] = std::array::from_fn(|i| {
            let g: [f32; 8] = std::array::from_fn(|l| f32::from_bits(seen.group[8 * i + l]));
            load(&g)
        });
        let norm2 = _mm256_set1_ps(p.norm2);
        let shrink = _mm256_set1_ps(1.0 - 1e-4);
        let qrest = _mm256_set1_ps(p.rest);
        let eps = _mm256_set1_ps(p.eps);
        let zero = _mm256_setzero_ps();
        for (g, (group, r)) in rows.chunks_exact(step).zip(reach.iter_mut()).enumerate() {
            let (mut h, mut s) = ([zero; 4], [zero; 4]);
            for (&d, &q) in p.dims.iter().zip(&p.q) {
                let x = &group[d * GROUP..(d + 1) * GROUP];
                let q = _mm256_set1_ps(q);
                for i in 0..4 {
                    let x = load(&x[8 * i..8 * i + 8]);
                    h[i] = _mm256_fmadd_ps(x, q, h[i]);
                    s[i] = _mm256_fmadd_ps(x, x, s[i]);
                }
            }
            let bound = |h: __m256, s: __m256| {
                let left = _mm256_sub_ps(norm2, _mm256_mul_ps(s, shrink));
                let rest = _mm256_sqrt_ps(_mm256_max_ps(left, zero));
                _mm256_add_ps(_mm256_fmadd_ps(rest, qrest, h), eps)
            };
            let m = _mm256_max_ps(
                _mm256_max_ps(bound(h[0], s[0]), bound(h[1], s[1])),
                _mm256_max_ps(bound(h[2], s[2]), bound(h[3], s[3])),
            );
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            *r = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<0b01>(m, m)));
            let gv = _mm256_castsi256_ps(_mm256_set1_epi32(g as i32));
            for i in 0..4 {
                let better = _mm256_cmp_ps::<_CMP_GT_OQ>(h[i], top[i]);
                top[i] = _mm256_blendv_ps(top[i], h[i], better);
                grp[i] = _mm256_blendv_ps(grp[i], gv, better);
            }
        }
        for i in 0..4 {
            let (mut t, mut g) = ([0f32; 8], [0f32; 8]);
            // SAFETY: each destination is an exclusive reference to 32 writable bytes,
            // exactly what the unaligned store writes.
            unsafe {
                _mm256_storeu_ps(t.as_mut_ptr(), top[i]);
                _mm256_storeu_ps(g.as_mut_ptr(), grp[i]);
            }
            seen.top[8 * i..8 * i + 8].copy_from_slice(&t);
            for (o, g) in seen.group[8 * i..8 * i + 8].iter_mut().zip(g) {
                *o = g.to_bits();
            }
        }
    }

    /// [`Probe::survey`] over whole groups (`rows` holds `reach.len()` of them, `step` floats
    /// each) with AVX-512 F: 16-lane vectors, so half the instructions per group, and fused
    /// multiply-adds (the survey only bounds: its rounding, covered by `eps` like the
    /// scan's, need not match any other level's).
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub(super) fn survey_avx512(
        p: &Probe,
        rows: &[f32],
        step: usize,
        reach: &mut [f32],
        seen: &mut Seen,
    ) {
        let load = |x: &[f32]| -> __m512 {
            let x: &[f32; 16] = x.try_into().expect("16 floats");
            // SAFETY: `x` is a reference to 64 readable bytes, exactly what the load reads.
            unsafe { _mm512_loadu_ps(x.as_ptr()) }
        };
        let (mut top0, mut top1) = (load(&seen.top[..16]), load(&seen.top[16..]));
        let gl = |x: &[u32]| {
            let x: &[u32; 16] = x.try_into().expect("16 lanes");
            // SAFETY: as above, 64 readable bytes.
            unsafe { _mm512_loadu_si512(x.as_ptr().cast()) }
        };
        let (mut grp0, mut grp1) = (gl(&seen.group[..16]), gl(&seen.group[16..]));
        let norm2 = _mm512_set1_ps(p.norm2);
        let shrink = _mm512_set1_ps(1.0 - 1e-4);
        let qrest = _mm512_set1_ps(p.rest);
        let eps = _mm512_set1_ps(p.eps);
        let zero = _mm512_setzero_ps();
        for (g, (group, r)) in rows.chunks_exact(step).zip(reach.iter_mut()).enumerate() {
            let (mut h0, mut h1, mut s0, mut s1) = (zero, zero, zero, zero);
            for (&d, &q) in p.dims.iter().zip(&p.q) {
                let x = &group[d * GROUP..(d + 1) * GROUP];
                let (x0, x1) = (load(&x[..16]), load(&x[16..]));
                let q = _mm512_set1_ps(q);
                h0 = _mm512_fmadd_ps(x0, q, h0);
                h1 = _mm512_fmadd_ps(x1, q, h1);
                s0 = _mm512_fmadd_ps(x0, x0, s0);
                s1 = _mm512_fmadd_ps(x1, x1, s1);
            }
            let bound = |h: __m512, s: __m512| {
                let rest = _mm512_sqrt_ps(_mm512_max_ps(
                    _mm512_sub_ps(norm2, _mm512_mul_ps(s, shrink)),
                    zero,
                ));
                _mm512_add_ps(_mm512_fmadd_ps(rest, qrest, h), eps)
            };
            *r = _mm512_reduce_max_ps(_mm512_max_ps(bound(h0, s0), bound(h1, s1)));
            let gv = _mm512_set1_epi32(g as i32);
            let m0 = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(h0, top0);
            let m1 = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(h1, top1);
            top0 = _mm512_mask_mov_ps(top0, m0, h0);
            top1 = _mm512_mask_mov_ps(top1, m1, h1);
            grp0 = _mm512_mask_mov_epi32(grp0, m0, gv);
            grp1 = _mm512_mask_mov_epi32(grp1, m1, gv);
        }
        let (t0, t1) = seen.top.split_at_mut(16);
        let (g0, g1) = seen.group.split_at_mut(16);
        // SAFETY: each destination is an exclusive reference to 64 writable bytes, exactly
        // what the unaligned store writes.
        unsafe {
            _mm512_storeu_ps(t0.as_mut_ptr(), top0);
            _mm512_storeu_ps(t1.as_mut_ptr(), top1);
            _mm512_storeu_si512(g0.as_mut_ptr().cast(), grp0);
            _mm512_storeu_si512(g1.as_mut_ptr().cast(), grp1);
        }
    }
    use std::arch::x86_64::{
        __m512i, _mm512_add_epi32, _mm512_dpwssd_epi32, _mm512_loadu_si512, _mm512_setzero_si512,
        _mm512_shuffle_i32x4, _mm512_srai_epi16, _mm512_storeu_si512, _mm512_unpackhi_epi32,
        _mm512_unpackhi_epi64, _mm512_unpacklo_epi32, _mm512_unpacklo_epi64,
    };

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn scan_exact_avx2(
        k: Kernels,
        b: &Block,
        dim: usize,
        query: &[f32],
        bar: Option<f32>,
        probe: Option<&Probe>,
    ) -> Option<(usize, f32)> {
        scan_exact_in::<2>(k, b, dim, query, bar, probe)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    pub(super) fn code_dots_avx2<const W: usize>(
        codes: &[i16],
        a: &[i16],
        b: &[i16],
        out: &mut [i32],
    ) {
        code_dots_in::<W, true>(codes, a, b, out)
    }

    /// [`code_dots`](super::code_dots) with AVX-512 VNNI: for rows of a multiple of 32
    /// words, each row's 32-word slices are one 512-bit load, one shift and two `vpdpwssd`
    /// (`pmaddwd` and add in one instruction) into a per-row vector of 16 partial sums; the
    /// partial sums of 16 rows are then added across with one shuffle tree. Integer sums
    /// wrap the same in any order, so the result equals the portable kernel's exactly.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vnni")]
    #[inline(never)]
    pub(super) fn code_dots_avx512<const W: usize>(
        codes: &[i16],
        a: &[i16],
        b: &[i16],
        out: &mut [i32],
    ) {
        if !W.is_multiple_of(32) || W > 32 * MAX_SLICES {
            return code_dots_in::<W, true>(codes, a, b, out);
        }
        let slices = W / 32;
        let load = |w: &[i16]| load_words(w.try_into().expect("32 words"));
        let qa: [__m512i; MAX_SLICES] = std::array::from_fn(|k| {
            if k < slices {
                load(&a[k * 32..][..32])
            } else {
                _mm512_setzero_si512()
            }
        });
        let qb: [__m512i; MAX_SLICES] = std::array::from_fn(|k| {
            if k < slices {
                load(&b[k * 32..][..32])
            } else {
                _mm512_setzero_si512()
            }
        });
        let rows = codes.len() / W;
        let full = rows.min(out.len()) / 16 * 16;
        for (block, out) in codes[..full * W]
            .chunks_exact(16 * W)
            .zip(out[..full].chunks_exact_mut(16))
        {
            let mut acc = [_mm512_setzero_si512(); 16];
            for (acc, row) in acc.iter_mut().zip(block.chunks_exact(W)) {
                for (k, w) in row.chunks_exact(32).enumerate() {
                    let w = load(w);
                    *acc = _mm512_dpwssd_epi32(*acc, w, qa[k]);
                    *acc = _mm512_dpwssd_epi32(*acc, _mm512_srai_epi16::<8>(w), qb[k]);
                }
            }
            store_sums(out.try_into().expect("16 rows"), sum_across(&acc));
        }
        code_dots_in::<W, true>(&codes[full * W..], a, b, &mut out[full..]);
    }

    /// Row slices of 32 words [`code_dots_avx512`] handles (rows up to 128 words, i.e. the
    /// specialised shapes).
    const MAX_SLICES: usize = 4;

    /// Lane `r` of the result is the (wrapping) sum of the 16 lanes of `v[r]`.
    #[target_feature(enable = "avx512f")]
    fn sum_across(v: &[__m512i; 16]) -> __m512i {
        // Rows r, r+1: per 128-bit lane [r₀+r₂, s₀+s₂, r₁+r₃, s₁+s₃].
        let pairs: [__m512i; 8] = std::array::from_fn(|i| {
            let (x, y) = (v[2 * i], v[2 * i + 1]);
            _mm512_add_epi32(_mm512_unpacklo_epi32(x, y), _mm512_unpackhi_epi32(x, y))
        });
        // Rows 4i..4i+4: per 128-bit lane, one partial sum of each.
        let quads: [__m512i; 4] = std::array::from_fn(|i| {
            let (x, y) = (pairs[2 * i], pairs[2 * i + 1]);
            _mm512_add_epi32(_mm512_unpacklo_epi64(x, y), _mm512_unpackhi_epi64(x, y))
        });
        // Add 128-bit lanes 0+1 and 2+3 of two quads: rows 8i..8i+8, two lanes each.
        let halves = |x: __m512i, y: __m512i| {
            _mm512_add_epi32(
                _mm512_shuffle_i32x4::<0b10_00_10_00>(x, y),
                _mm512_shuffle_i32x4::<0b11_01_11_01>(x, y),
            )
        };
        let octs = [halves(quads[0], quads[1]), halves(quads[2], quads[3])];
        halves(octs[0], octs[1])
    }

    #[target_feature(enable = "avx512f")]
    fn load_words(w: &[i16; 32]) -> __m512i {
        // SAFETY: `w` is a reference to 64 readable bytes, exactly what the unaligned load
        // reads.
        unsafe { _mm512_loadu_si512(w.as_ptr().cast()) }
    }

    #[target_feature(enable = "avx512f")]
    fn store_sums(out: &mut [i32; 16], v: __m512i) {
        // SAFETY: `out` is an exclusive reference to 64 writable bytes, exactly what the
        // unaligned store writes.
        unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), v) }
    }
}

/// Where the approximate scores of a scan go. A score is `(code dot) · s_r`, the approximate
/// similarity divided by the query scale.
trait Sink {
    /// Rows that cannot score above this may be skipped (their scores are not taken).
    fn floor(&self) -> f32;
    /// The scores of rows `first..first + scores.len()` of the block at scope position `pos`.
    fn take(&mut self, pos: usize, first: usize, scores: &[f32]);
}

/// Scans a block's codes a batch at a time: every batch's head words, and its tail words
/// unless no row of the batch can score above the sink's floor. Returns the rows whose tail
/// was skipped.
fn scan_block<S: Sink>(
    b: &Block,
    shape: Shape,
    k: Kernels,
    q: &CodeQuery,
    pos: usize,
    sink: &mut S,
) -> usize {
    match (shape.head, shape.tail) {
        (16, 0) => scan_split::<16, 0, S>(b, k, q, pos, sink),
        (16, 16) => scan_split::<16, 16, S>(b, k, q, pos, sink),
        (32, 32) => scan_split::<32, 32, S>(b, k, q, pos, sink),
        (64, 64) => scan_split::<64, 64, S>(b, k, q, pos, sink),
        (128, 128) => scan_split::<128, 128, S>(b, k, q, pos, sink),
        _ => scan_any(b, shape, q, pos, sink),
    }
}

#[inline(always)]
fn scan_split<const H: usize, const T: usize, S: Sink>(
    b: &Block,
    k: Kernels,
    q: &CodeQuery,
    pos: usize,
    sink: &mut S,
) -> usize {
    let (ah, bh) = (&q.a[..H], &q.b[..H]);
    let (at, bt) = (&q.a[H..], &q.b[H..]);
    let (mut head, mut tail, mut scores) = ([0i32; BATCH], [0i32; BATCH], [0f32; BATCH]);
    let mut skipped = 0;
    for first in (0..b.len()).step_by(BATCH) {
        let m = (b.len() - first).min(BATCH);
        let (head, tail, scores) = (&mut head[..m], &mut tail[..m], &mut scores[..m]);
        code_dots::<H>(k, &b.head[first * H..(first + m) * H], ah, bh, head);
        let scales = &b.scales[first..first + m];
        if T > 0 {
            // |tail code dot| ≤ ‖row tail codes‖·‖query tail codes‖ (+1 covers f32 rounding).
            let norms = &b.tail_norms[first..first + m];
            let floor = sink.floor();
            let open = head
                .iter()
                .zip(scales)
                .zip(norms)
                .fold(0u32, |c, ((&d, &s), &t)| {
                    let bound = d.wrapping_sub(q.head_offset) as f32 + f32::from(t) * q.tail_norm;
                    c + u32::from((bound + 1.0) * s > floor)
                });
            if open == 0 {
                skipped += m;
                continue;
            }
            code_dots::<T>(k, &b.tail[first * T..(first + m) * T], at, bt, tail);
        }
        for (((o, &h), &t), &s) in scores.iter_mut().zip(&*head).zip(&*tail).zip(scales) {
            let d = h
                .wrapping_sub(q.head_offset)
                .wrapping_add(t.wrapping_sub(q.tail_offset));
            *o = d as f32 * s;
        }
        sink.take(pos, first, scores);
    }
    skipped
}

/// [`scan_split`] for shapes without a specialised kernel (no skipping).
fn scan_any<S: Sink>(b: &Block, shape: Shape, q: &CodeQuery, pos: usize, sink: &mut S) -> usize {
    let (h, t) = (shape.head, shape.tail);
    let mut scores = [0f32; BATCH];
    for first in (0..b.len()).step_by(BATCH) {
        let m = (b.len() - first).min(BATCH);
        for (j, o) in scores[..m].iter_mut().enumerate() {
            let r = first + j;
            let dh = code_dot_any(&b.head[r * h..(r + 1) * h], &q.a[..h], &q.b[..h]);
            let dt = code_dot_any(&b.tail[r * t..(r + 1) * t], &q.a[h..], &q.b[h..]);
            let d = dh
                .wrapping_sub(q.head_offset)
                .wrapping_add(dt.wrapping_sub(q.tail_offset));
            *o = d as f32 * b.scales[r];
        }
        sink.take(pos, first, &scores[..m]);
    }
    0
}

/// The best approximate scores, `(score / query scale, scope position, row)`. Rows above
/// the floor are appended; when 4 × [`SHORTLIST`] have gathered, the best [`SHORTLIST`] are
/// kept and the floor rises to the lowest of them.
///
/// A row scoring more than `margin` (twice the largest approximation error, and a bit) below
/// the best score seen cannot be the winner, so the floor also rises to `best − margin`:
/// once a genuine match has been scanned, nothing else is kept.
struct Shortlist {
    items: Vec<(f32, usize, usize)>,
    /// Every row left out scored at or below it (−∞ while none was left out).
    floor: f32,
    margin: f32,
    top: f32,
}

impl Shortlist {
    fn new(margin: f32) -> Shortlist {
        Shortlist {
            items: Vec::with_capacity(4 * SHORTLIST + BATCH),
            floor: f32::NEG_INFINITY,
            margin,
            top: f32::NEG_INFINITY,
        }
    }

    /// Offers the rows of a batch scoring above the floor (rare once the floor has risen).
    #[inline(always)]
    fn offer_batch(&mut self, pos: usize, first: usize, scores: &[f32]) {
        let floor = self.floor;
        let above = scores.iter().fold(0u32, |n, &s| n + u32::from(s > floor));
        if above > 0 {
            self.offer_each(scores, pos, first);
        }
    }

    #[cold]
    #[inline(never)]
    fn offer_each(&mut self, scores: &[f32], pos: usize, first: usize) {
        let floor = self.floor;
        for (j, &s) in scores.iter().enumerate() {
            if s > floor {
                self.items.push((s, pos, first + j));
                self.top = self.top.max(s);
            }
        }
        self.floor = self.floor.max(self.top - self.margin);
        if self.items.len() >= 4 * SHORTLIST {
            self.keep_best();
        }
    }

    /// Keeps the [`SHORTLIST`] best, raising the floor to the lowest kept score.
    fn keep_best(&mut self) {
        if self.items.len() <= SHORTLIST {
            return;
        }
        self.items
            .select_nth_unstable_by(SHORTLIST - 1, |a, b| b.0.total_cmp(&a.0));
        self.items.truncate(SHORTLIST);
        self.floor = self.floor.max(self.items[SHORTLIST - 1].0);
    }

    /// The kept rows, best approximate score first.
    fn finish(&mut self) -> &[(f32, usize, usize)] {
        self.keep_best();
        self.items.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        &self.items
    }
}

impl Sink for Shortlist {
    fn floor(&self) -> f32 {
        self.floor
    }
    #[inline(always)]
    fn take(&mut self, pos: usize, first: usize, scores: &[f32]) {
        self.offer_batch(pos, first, scores);
    }
}

/// The rescan after a failed proof: re-ranks exactly every row whose approximate score could
/// still reach the winner.
struct Rescan<'a> {
    scope: &'a [(PartnerId, &'a Block)],
    query: &'a [f32],
    dim: usize,
    /// Query scale, δ and ε (see [`Index::bounds`]).
    scale: f32,
    delta: f32,
    eps: f32,
    winner: Winner,
    reranked: usize,
}

/// The largest real similarity a row of approximate similarity `approx` can have (`approx`
/// plus δ plus ε, plus a millionth for the rounding of `approx` itself).
fn reach(approx: f32, delta: f32, eps: f32) -> f32 {
    approx + approx.abs() * 1e-6 + delta + eps
}

impl Sink for Rescan<'_> {
    fn floor(&self) -> f32 {
        f32::NEG_INFINITY
    }
    fn take(&mut self, pos: usize, first: usize, scores: &[f32]) {
        for (j, &score) in scores.iter().enumerate() {
            if reach(score * self.scale, self.delta, self.eps) >= self.winner.similarity {
                let row = first + j;
                self.reranked += 1;
                let c = Winner {
                    pos,
                    row,
                    similarity: self.scope[pos].1.exact(self.dim, row, self.query),
                };
                if better(Some(self.winner), c) {
                    self.winner = c;
                }
            }
        }
    }
}

/// The running winner: highest similarity, then earliest (scope position, row).
#[derive(Clone, Copy)]
struct Winner {
    pos: usize,
    row: usize,
    similarity: f32,
}

fn better(w: Option<Winner>, c: Winner) -> bool {
    match w {
        None => true,
        Some(w) => {
            c.similarity > w.similarity
                || (c.similarity == w.similarity && (c.pos, c.row) < (w.pos, w.row))
        }
    }
}

/// The enrolled templates, by partner.
#[derive(Clone, Debug)]
pub struct Index {
    dim: usize,
    shape: Shape,
    /// Checked by [`Kernels::available`] (the `x86` kernels rely on it).
    kernels: Kernels,
    blocks: BTreeMap<PartnerId, Block>,
}

impl Index {
    /// An empty index searching with the fastest [`Kernels`] of this CPU.
    pub fn new(dim: usize) -> Index {
        Index {
            dim,
            shape: Shape::new(dim),
            kernels: Kernels::best(),
            blocks: BTreeMap::new(),
        }
    }

    /// An empty index searching with `kernels`; None if this CPU cannot run them.
    pub fn with_kernels(dim: usize, kernels: Kernels) -> Option<Index> {
        kernels.available().then(|| Index {
            kernels,
            ..Index::new(dim)
        })
    }

    /// The kernels searches run.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.blocks.values().map(Block::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds or replaces a user's template (already normalised, `dim` long).
    pub fn insert(&mut self, partner: PartnerId, user: ExternalId, template: &[f32]) {
        assert_eq!(template.len(), self.dim, "template dimension");
        let shape = self.shape;
        let b = self.blocks.entry(partner).or_default();
        match b.ids.find(user.as_str()) {
            Some(row) => b.write(shape, row, template),
            None => b.push(shape, user.as_str(), template),
        }
    }

    /// Removes a user's template; true if it was there.
    pub fn remove(&mut self, partner: PartnerId, user: &ExternalId) -> bool {
        let shape = self.shape;
        let Some(b) = self.blocks.get_mut(&partner) else {
            return false;
        };
        let Some(row) = b.ids.find(user.as_str()) else {
            return false;
        };
        b.swap_remove(shape, row);
        if b.len() == 0 {
            self.blocks.remove(&partner);
        }
        true
    }

    /// The most similar user among `partners`' templates, whatever the score.
    ///
    /// Runs the int8 scan with exact re-ranking; the result equals [`Index::best_exact`].
    pub fn best<'a>(
        &self,
        query: &[f32],
        partners: impl IntoIterator<Item = &'a PartnerId>,
    ) -> Option<Candidate> {
        self.best_with_stats(query, partners).0
    }

    /// [`Index::best`], also telling how the search went.
    pub fn best_with_stats<'a>(
        &self,
        query: &[f32],
        partners: impl IntoIterator<Item = &'a PartnerId>,
    ) -> (Option<Candidate>, SearchStats) {
        let scope = self.scope(partners);
        let prepared = if query.len() == self.dim && scope.iter().all(|(_, b)| b.irregular == 0) {
            CodeQuery::new(query, self.shape)
        } else {
            None
        };
        let Some(q) = prepared else {
            let scanned = scope.iter().map(|(_, b)| b.len()).sum();
            let stats = SearchStats {
                scanned,
                exact_only: true,
                ..SearchStats::default()
            };
            return (self.exact_in(query, &scope), stats);
        };
        let mut stats = SearchStats::default();

        // 1. Scan the codes, keeping the SHORTLIST best approximate scores.
        let (delta, eps) = self.bounds(&q, &scope);
        let mut short = Shortlist::new(2.5 * (delta + eps) / q.scale);
        for (pos, (_, b)) in scope.iter().enumerate() {
            stats.scanned += b.len();
            stats.head_only += scan_block(b, self.shape, self.kernels, &q, pos, &mut short);
        }

        // 2. Re-rank exactly, best approximate score first, until the rest cannot reach the
        //    winner.
        let mut winner: Option<Winner> = None;
        for &(score, pos, row) in short.finish() {
            if winner.is_some_and(|w| reach(score * q.scale, delta, eps) < w.similarity) {
                break;
            }
            stats.reranked += 1;
            let c = Winner {
                pos,
                row,
                similarity: scope[pos].1.exact(self.dim, row, query),
            };
            if better(winner, c) {
                winner = Some(c);
            }
        }
        let Some(mut w) = winner else {
            return (None, stats);
        };

        // 3. Prove no row left out can reach the winner; otherwise re-rank every row that might.
        if short.floor > f32::NEG_INFINITY
            && reach(short.floor * q.scale, delta, eps) >= w.similarity
        {
            stats.fallback = true;
            let mut rescan = Rescan {
                scope: &scope,
                query,
                dim: self.dim,
                scale: q.scale,
                delta,
                eps,
                winner: w,
                reranked: 0,
            };
            for (pos, (_, b)) in scope.iter().enumerate() {
                scan_block(b, self.shape, self.kernels, &q, pos, &mut rescan);
            }
            w = rescan.winner;
            stats.reranked += rescan.reranked;
        }
        (Some(self.candidate(&scope, w)), stats)
    }

    /// The most similar user, from the f32 rows (the reference the quantised search must
    /// match): every row that could beat the best is scored; groups of rows that provably
    /// cannot (from a survey of a few of their values) are not read further (see the module
    /// doc).
    pub fn best_exact<'a>(
        &self,
        query: &[f32],
        partners: impl IntoIterator<Item = &'a PartnerId>,
    ) -> Option<Candidate> {
        self.exact_in(query, &self.scope(partners))
    }

    /// Every partner with at least one template.
    pub fn partners(&self) -> impl Iterator<Item = &PartnerId> {
        self.blocks.keys()
    }

    /// Bytes held, per kind.
    pub fn memory(&self) -> MemoryUse {
        let mut m = MemoryUse::default();
        let fixed = std::mem::size_of::<Self>()
            + self.blocks.len() * (std::mem::size_of::<(PartnerId, Block)>() + 16);
        m.reserved_bytes = fixed;
        for b in self.blocks.values() {
            m.f32_bytes += b.rows.len() * 4;
            m.code_bytes +=
                (b.head.len() + b.tail.len() + b.tail_norms.len()) * 2 + b.scales.len() * 4;
            let (ids, ids_cap) = b.ids.bytes();
            m.id_bytes += ids;
            m.reserved_bytes += b.rows.capacity() * 4
                + (b.head.capacity() + b.tail.capacity() + b.tail_norms.capacity()) * 2
                + b.scales.capacity() * 4
                + ids_cap;
        }
        m.total_bytes = fixed + m.f32_bytes + m.code_bytes + m.id_bytes;
        m
    }

    /// Releases growth headroom (after a bulk load).
    pub fn shrink_to_fit(&mut self) {
        for b in self.blocks.values_mut() {
            shrink_wiping(&mut b.rows);
            shrink_wiping(&mut b.head);
            shrink_wiping(&mut b.tail);
            shrink_wiping(&mut b.tail_norms);
            shrink_wiping(&mut b.scales);
            b.ids.arena.shrink_to_fit();
            b.ids.spans.shrink_to_fit();
        }
    }

    fn scope<'a>(
        &self,
        partners: impl IntoIterator<Item = &'a PartnerId>,
    ) -> Vec<(PartnerId, &Block)> {
        partners
            .into_iter()
            .filter_map(|p| self.blocks.get(p).map(|b| (*p, b)))
            .collect()
    }

    fn exact_in(&self, query: &[f32], scope: &[(PartnerId, &Block)]) -> Option<Candidate> {
        let mut best: Option<(usize, usize, f32)> = None;
        for (pos, (_, b)) in scope.iter().enumerate() {
            if let Some((row, s)) = b.scan_exact(self.kernels, self.shape, query, best.map(|b| b.2))
            {
                best = Some((pos, row, s));
            }
        }
        best.map(|(pos, row, similarity)| {
            self.candidate(
                scope,
                Winner {
                    pos,
                    row,
                    similarity,
                },
            )
        })
    }

    fn candidate(&self, scope: &[(PartnerId, &Block)], w: Winner) -> Candidate {
        let (partner_id, b) = scope[w.pos];
        Candidate {
            partner_id,
            external_id: ExternalId(b.ids.name(w.row).to_owned()),
            similarity: w.similarity,
        }
    }

    /// `(δ, ε)`: the largest gap between an approximate and a real similarity over `scope`,
    /// and a bound on the f32 rounding of an exact similarity (see the module doc).
    fn bounds(&self, q: &CodeQuery, scope: &[(PartnerId, &Block)]) -> (f32, f32) {
        let (mut scale_max, mut l1_max, mut norm_max) = (0f32, 0f32, 0f32);
        for (_, b) in scope {
            scale_max = scale_max.max(b.scale_max);
            l1_max = l1_max.max(b.l1_max);
            norm_max = norm_max.max(b.norm_max);
        }
        // Half a code step per component, widened for the rounding of x / scale and of the
        // f32 sums that produced l1_max and the scales.
        let half = 0.5 * (1.0 + 1e-3);
        let delta = half * (q.scale * l1_max + q.l1 * scale_max);
        // A recursive f32 sum of n products is within n·2⁻²⁴/(1 − n·2⁻²⁴) of Σ|aᵢbᵢ| ≤ ‖a‖₂‖b‖₂.
        let n = (self.dim + 4) as f32;
        let eps = 2.0 * n * f32::EPSILON * q.l2 * norm_max + 1e-30;
        (delta, eps)
    }
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

    /// Deterministic test data (SplitMix64 and Box–Muller).
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn gauss(&mut self) -> f32 {
            let u1 = ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let u2 = ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        }
        fn unit(&mut self, dim: usize) -> Vec<f32> {
            normalise((0..dim).map(|_| self.gauss()).collect(), dim).unwrap()
        }
        /// `base` plus noise of relative size `noise`, normalised.
        fn near(&mut self, base: &[f32], noise: f32) -> Vec<f32> {
            let s = noise / (base.len() as f32).sqrt();
            let v = base.iter().map(|x| x + s * self.gauss()).collect();
            normalise(v, base.len()).unwrap()
        }
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

    /// Found by the `template` fuzz target: values whose squares are subnormal in f32
    /// (|v| < ~1e-19) gave a "unit" template of length 1.003; values whose squares overflow
    /// (|v| > ~1e19) were refused as all zeros.
    #[test]
    fn normalise_gives_unit_length_for_tiny_and_huge_values() {
        let len = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        // The fuzzer's input: bytes 0x9b9b9b9b (-2.57e-22) and a few other tiny values.
        let mut tiny = vec![f32::from_le_bytes([0x9b; 4]); 30];
        tiny.extend([
            f32::from_bits(0x017e_0000),
            f32::from_bits(0x0029_00d9),
            0.0,
        ]);
        let n = tiny.len();
        let unit = normalise(tiny, n).unwrap();
        assert!((len(&unit) - 1.0).abs() < 1e-5, "{}", len(&unit));
        let unit = normalise(vec![3e-30, 4e-30], 2).unwrap();
        assert!((unit[0] - 0.6).abs() < 1e-6 && (unit[1] - 0.8).abs() < 1e-6);
        let unit = normalise(vec![3e30, -4e30, 0.0], 3).unwrap();
        assert!((unit[0] - 0.6).abs() < 1e-6 && (unit[1] + 0.8).abs() < 1e-6);
        assert_eq!(
            normalise(vec![f32::from_bits(1), 0.0], 2),
            Ok(vec![1.0, 0.0])
        );
        assert_eq!(normalise(vec![-0.0, 0.0], 2), Err(TemplateError::Zero));
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

    #[test]
    fn pack_and_code_dot_compute_the_code_product() {
        /// Collects every score, skipping nothing.
        struct All(Vec<f32>);
        impl Sink for All {
            fn floor(&self) -> f32 {
                f32::NEG_INFINITY
            }
            fn take(&mut self, _: usize, first: usize, scores: &[f32]) {
                assert_eq!(first, self.0.len());
                self.0.extend_from_slice(scores);
            }
        }
        let mut g = Gen(7);
        for dim in [
            1, 2, 3, 16, 31, 32, 33, 64, 65, 100, 128, 130, 256, 512, 600,
        ] {
            let shape = Shape::new(dim);
            let mut ix = Index::new(dim);
            let rows: Vec<Vec<f32>> = (0..70).map(|_| g.unit(dim)).collect();
            for (i, r) in rows.iter().enumerate() {
                ix.insert(p(1), u(&format!("u{i}")), r);
            }
            let q = g.unit(dim);
            let cq = CodeQuery::new(&q, shape).unwrap();
            let (qc, _) = quantise(&q);
            let mut all = All(Vec::new());
            assert_eq!(
                scan_block(&ix.blocks[&p(1)], shape, ix.kernels, &cq, 0, &mut all),
                0
            );
            for (r, &score) in rows.iter().zip(&all.0) {
                let (rc, s) = quantise(r);
                let want: i32 = rc.iter().zip(&qc).map(|(a, b)| a * b).sum();
                let mut packed = vec![0i16; shape.words];
                pack(&rc, &mut packed);
                let raw = code_dot_any(&packed, &cq.a, &cq.b);
                assert_eq!(
                    raw.wrapping_sub(cq.head_offset + cq.tail_offset),
                    want,
                    "dim {dim}"
                );
                assert_eq!(score, want as f32 * s, "dim {dim}");
            }
            assert_eq!(all.0.len(), rows.len());
        }
    }

    /// The kernel levels this machine runs (the portable one first).
    fn levels() -> Vec<Kernels> {
        Kernels::ALL.into_iter().filter(|k| k.available()).collect()
    }

    #[test]
    fn the_best_level_is_picked_and_unavailable_ones_refused() {
        assert_eq!(Index::new(8).kernels(), Kernels::best());
        assert!(Kernels::Portable.available());
        for k in Kernels::ALL {
            assert_eq!(Index::with_kernels(8, k).is_some(), k.available(), "{k:?}");
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512bw")
        {
            assert_eq!(Kernels::best(), Kernels::Avx512);
        }
        eprintln!("kernel levels on this machine: {:?}", levels());
    }

    #[test]
    fn every_kernel_level_computes_the_portable_code_dots() {
        fn check<const W: usize>(g: &mut Gen, k: Kernels) {
            let dim = 2 * W;
            let q = g.unit(dim);
            let cq = CodeQuery::new(&q, Shape::new(dim)).unwrap();
            // Row counts around the 16-row blocks of the AVX-512 kernel.
            for rows in [0, 1, 15, 16, 17, 31, 32, 33, 64] {
                let mut codes = vec![0i16; rows * W];
                for row in codes.chunks_exact_mut(W) {
                    // Extreme codes too: ±127 in every slot of some rows.
                    let v = match g.next() % 4 {
                        0 => vec![if g.next() & 1 == 0 { 1.0 } else { -1.0 }; dim],
                        _ => g.unit(dim),
                    };
                    pack(&quantise(&v).0, row);
                }
                let (a, b) = (&cq.a[..W], &cq.b[..W]);
                let mut got = vec![i32::MIN; rows + 3];
                code_dots::<W>(k, &codes, a, b, &mut got[..rows]);
                let want: Vec<i32> = codes
                    .chunks_exact(W)
                    .map(|r| code_dot_any(r, a, b))
                    .collect();
                assert_eq!(&got[..rows], &want[..], "{k:?}, {W} words, {rows} rows");
                assert!(
                    got[rows..].iter().all(|&x| x == i32::MIN),
                    "wrote past the rows"
                );
            }
        }
        let mut g = Gen(31);
        for k in levels() {
            check::<16>(&mut g, k);
            check::<32>(&mut g, k);
            check::<64>(&mut g, k);
            check::<128>(&mut g, k);
            check::<48>(&mut g, k);
        }
    }

    /// [`Block::scan_exact`] without any SIMD kernel or pruning: [`Block::exact`] row by row.
    fn naive_scan(b: &Block, dim: usize, q: &[f32], bar: Option<f32>) -> Option<(usize, f32)> {
        let (mut found, mut bar) = (None, bar);
        for row in 0..b.len() {
            let s = b.exact(dim, row, q);
            if bar.is_none_or(|b| s > b) {
                found = Some((row, s));
                bar = Some(s);
            }
        }
        found
    }

    /// `v` with every value but its `PROBE` largest in magnitude negated: a query whose
    /// probe values agree with row `v` and whose other values decide against it.
    fn probe_decoy(v: &[f32]) -> Vec<f32> {
        let mut order: Vec<usize> = (0..v.len()).collect();
        order.sort_by(|&x, &y| v[y].abs().total_cmp(&v[x].abs()));
        let mut out: Vec<f32> = v.iter().map(|x| -x).collect();
        for &d in &order[..PROBE] {
            out[d] = v[d];
        }
        out
    }

    #[test]
    fn the_f32_scan_skips_groups_only_when_they_cannot_matter() {
        let mut g = Gen(41);
        for (dim, n) in [
            (128, 3000),
            (64, 700),
            (100, 500),
            (257, 300),
            (128, 20),
            (64, 40),
        ] {
            let rows: Vec<Vec<f32>> = (0..n).map(|_| g.unit(dim)).collect();
            for k in levels() {
                let mut ix = Index::with_kernels(dim, k).unwrap();
                for (i, r) in rows.iter().enumerate() {
                    ix.insert(p(1), u(&format!("u{i}")), r);
                }
                let b = &ix.blocks[&p(1)];
                for (qi, q) in (0..60)
                    .map(|i| match i % 4 {
                        0 => g.unit(dim),
                        1 => g.near(&rows[i * 37 % n], 0.3),
                        2 => rows[i * 5 % n].clone(),
                        // Rows whose probe values agree with the query and whose rest decides.
                        _ => probe_decoy(&rows[i * 11 % n]),
                    })
                    .enumerate()
                {
                    for bar in [
                        None,
                        Some(0.1),
                        Some(0.5),
                        Some(0.7),
                        Some(0.8),
                        Some(0.9),
                        Some(0.95),
                        Some(0.999),
                    ] {
                        assert_eq!(
                            b.scan_exact(k, ix.shape, &q, bar),
                            naive_scan(b, dim, &q, bar),
                            "{k:?} dim {dim} query {qi} bar {bar:?}"
                        );
                    }
                }
            }
            // The probe's bound is never below a row's similarity, at any level: a group stays
            // open for a bar just under its best row (for any query), and random groups close
            // for a genuine query's bar.
            let mut ix = Index::new(dim);
            for (i, r) in rows.iter().enumerate() {
                ix.insert(p(1), u(&format!("u{i}")), r);
            }
            let b = &ix.blocks[&p(1)];
            let step = GROUP * dim;
            let groups = n.div_ceil(GROUP);
            for qi in 0..20 {
                let q = match qi % 3 {
                    0 => g.unit(dim),
                    1 => probe_decoy(&rows[qi * 13 % n]),
                    _ => rows[qi * 7 % n].clone(),
                };
                let probe = Probe::new(b, dim, &q).unwrap();
                for k in levels() {
                    let (mut reach, mut seen) = (vec![0f32; groups], Seen::new());
                    survey(k, &probe, &b.rows, n, &mut reach, &mut seen);
                    let mut closed = 0;
                    for (gi, group) in b.rows.chunks_exact(step).enumerate() {
                        let first = gi * GROUP;
                        let live = (n - first).min(GROUP);
                        let best = (first..first + live)
                            .map(|r| b.exact(dim, r, &q))
                            .fold(f32::NEG_INFINITY, f32::max);
                        let under = best - best.abs().max(1e-3) * 1e-6;
                        assert!(reach[gi] > under, "{k:?} dim {dim} q {qi} group {gi}");
                        assert!(
                            probe.open(group, live, under),
                            "dim {dim} q {qi} group {gi}"
                        );
                        closed += usize::from(reach[gi] <= 0.9);
                    }
                    if dim == 128 && qi % 3 == 0 {
                        assert!(
                            closed * 10 > groups * 9,
                            "{k:?}: {closed} of {groups} closed"
                        );
                    }
                    // A copy of a row: its probe sum is the largest, so it is a seed.
                    if qi % 3 == 2 {
                        assert!(
                            seen.seeds().any(|r| r == qi * 7 % n),
                            "{k:?} dim {dim} q {qi}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_kernel_level_finds_the_same_rows_and_bits() {
        let mut g = Gen(23);
        // Dims that are not a multiple of any vector width, row counts around the groups of
        // 32 rows and the pairs of groups.
        for (dim, n) in [
            (1, 40),
            (3, 65),
            (17, 97),
            (31, 64),
            (100, 130),
            (128, 1000),
            (130, 333),
            (257, 70),
            // Blocks without a whole group, or with one whole group and a few rows.
            (128, 3),
            (64, 31),
            (128, 34),
            (65, 2),
        ] {
            let rows: Vec<Vec<f32>> = (0..n).map(|_| g.unit(dim)).collect();
            let queries: Vec<Vec<f32>> = (0..40)
                .map(|k| match k % 4 {
                    0 => g.unit(dim),
                    // Exact copies (top-1 ties with itself only) and near copies.
                    1 => rows[k * 13 % n].clone(),
                    _ => g.near(&rows[k * 7 % n], 0.3),
                })
                .collect();
            let build = |k: Kernels| {
                let mut ix = Index::with_kernels(dim, k).unwrap();
                for (i, r) in rows.iter().enumerate() {
                    ix.insert(p((i % 2) as u8), u(&format!("u{i}")), r);
                }
                // Exact duplicates in different groups: the earliest wins on every level.
                ix.insert(p(0), u("dup"), &rows[0]);
                ix.remove(p(1), &u("u1"));
                ix
            };
            let key = |c: Option<Candidate>| c.map(|c| (c.external_id, c.similarity.to_bits()));
            let portable = build(Kernels::Portable);
            for k in levels() {
                let ix = build(k);
                for (qi, q) in queries.iter().enumerate() {
                    for scope in [vec![p(0)], vec![p(1), p(0)]] {
                        let want = key(portable.best_exact(q, &scope));
                        assert_eq!(
                            key(ix.best_exact(q, &scope)),
                            want,
                            "{k:?} dim {dim} q {qi}"
                        );
                        let (got, stats) = ix.best_with_stats(q, &scope);
                        assert_eq!(key(got), want, "{k:?} dim {dim} q {qi}");
                        assert_eq!(stats, portable.best_with_stats(q, &scope).1);
                    }
                }
                // Every bar: the first row above it, as the portable scan finds it.
                let b = &ix.blocks[&p(0)];
                let pb = &portable.blocks[&p(0)];
                for q in queries.iter().take(8) {
                    for bar in [None, Some(-1.0), Some(0.0), Some(0.2), Some(0.9), Some(2.0)] {
                        let got = b.scan_exact(k, ix.shape, q, bar);
                        let want = pb.scan_exact(Kernels::Portable, ix.shape, q, bar);
                        assert_eq!(got, want, "{k:?} dim {dim} bar {bar:?}");
                        assert_eq!(
                            got,
                            naive_scan(b, dim, q, bar),
                            "{k:?} dim {dim} bar {bar:?}"
                        );
                        if let Some((row, s)) = got {
                            assert_eq!(s.to_bits(), b.exact(dim, row, q).to_bits());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn tails_are_skipped_only_when_they_cannot_matter() {
        // A genuine match early in the block: later rows are settled by their heads.
        let mut g = Gen(21);
        let mut ix = Index::new(128);
        let rows: Vec<Vec<f32>> = (0..2000).map(|_| g.unit(128)).collect();
        for (i, r) in rows.iter().enumerate() {
            ix.insert(p(1), u(&format!("u{i}")), r);
        }
        let q = g.near(&rows[3], 0.3);
        let (c, stats) = ix.best_with_stats(&q, &[p(1)]);
        assert_eq!(c.as_ref().unwrap().external_id, u("u3"));
        assert_eq!(c, ix.best_exact(&q, &[p(1)]));
        assert!(stats.head_only > 1500, "{stats:?}");
        assert!(!stats.fallback);
        // A stranger: no head can settle anything.
        let q = g.unit(128);
        let (c, stats) = ix.best_with_stats(&q, &[p(1)]);
        assert_eq!(c, ix.best_exact(&q, &[p(1)]));
        assert!(stats.head_only < 500, "{stats:?}");
    }

    #[test]
    fn similarity_is_dot_bit_for_bit() {
        let mut g = Gen(11);
        let mut ix = Index::new(128);
        let rows: Vec<Vec<f32>> = (0..70).map(|_| g.unit(128)).collect();
        for (i, r) in rows.iter().enumerate() {
            ix.insert(p(1), u(&format!("u{i}")), r);
        }
        let q = g.near(&rows[41], 0.3);
        let c = ix.best(&q, &[p(1)]).unwrap();
        assert_eq!(c.external_id, u("u41"));
        assert_eq!(c.similarity.to_bits(), dot(&q, &rows[41]).to_bits());
        assert_eq!(ix.best_exact(&q, &[p(1)]), Some(c));
    }

    #[test]
    fn quantised_top1_equals_exact_top1_on_random_data() {
        let mut g = Gen(1);
        for (dim, n) in [(128, 3000), (100, 500), (16, 300), (3, 200)] {
            let mut ix = Index::new(dim);
            let rows: Vec<Vec<f32>> = (0..n).map(|_| g.unit(dim)).collect();
            for (i, r) in rows.iter().enumerate() {
                ix.insert(p((i % 3) as u8), u(&format!("u{i}")), r);
            }
            let scopes = [vec![p(0)], vec![p(2), p(0), p(1)], vec![p(1), p(9)]];
            let mut fallbacks = 0;
            for k in 0..200 {
                // Genuine queries (a noisy copy of a row) and random ones.
                let q = if k % 2 == 0 {
                    g.near(&rows[k * 7 % n], 0.33)
                } else {
                    g.unit(dim)
                };
                let scope = &scopes[k % 3];
                let (got, stats) = ix.best_with_stats(&q, scope);
                let want = ix.best_exact(&q, scope);
                assert_eq!(got, want, "dim {dim}, query {k}");
                assert!(!stats.exact_only);
                fallbacks += usize::from(stats.fallback);
            }
            if dim == 128 {
                assert!(fallbacks < 20, "{fallbacks} fallbacks of 200");
            }
        }
    }

    #[test]
    fn near_ties_fall_back_and_stay_exact() {
        // Many rows almost equal to the query: the shortlist cannot prove its winner.
        let mut g = Gen(5);
        let base = g.unit(128);
        let mut ix = Index::new(128);
        for i in 0..200 {
            ix.insert(p(1), u(&format!("t{i}")), &g.near(&base, 0.01));
        }
        // Exact duplicates: the earliest row wins the tie on both paths.
        ix.insert(p(1), u("dup-a"), &base);
        ix.insert(p(1), u("dup-b"), &base);
        let (got, stats) = ix.best_with_stats(&base, &[p(1)]);
        assert!(stats.fallback, "{stats:?}");
        assert!(stats.reranked > SHORTLIST);
        assert_eq!(got, ix.best_exact(&base, &[p(1)]));
        assert_eq!(got.unwrap().external_id, u("dup-a"));
        let q = g.near(&base, 0.02);
        assert_eq!(ix.best(&q, &[p(1)]), ix.best_exact(&q, &[p(1)]));
    }

    #[test]
    fn remove_and_replace_keep_rows_codes_and_ids_in_step() {
        let mut g = Gen(3);
        let dim = 40;
        let mut ix = Index::new(dim);
        let mut model: Vec<(String, Vec<f32>)> = Vec::new();
        for step in 0..3000 {
            let op = g.next() % 10;
            if op < 5 || model.len() < 5 {
                let name = format!("user-{}", g.next() % 400);
                let v = g.unit(dim);
                match model.iter_mut().find(|(n, _)| *n == name) {
                    Some(e) => e.1 = v.clone(),
                    None => model.push((name.clone(), v.clone())),
                }
                ix.insert(p(1), u(&name), &v);
            } else {
                let i = (g.next() % model.len() as u64) as usize;
                let (name, _) = model.swap_remove(i);
                assert!(ix.remove(p(1), &u(&name)));
                assert!(!ix.remove(p(1), &u(&name)));
            }
            assert_eq!(ix.len(), model.len(), "step {step}");
            if step % 50 == 0 {
                let b = &ix.blocks[&p(1)];
                let shape = ix.shape;
                assert_eq!((shape.head, shape.tail), (16, 16));
                assert_eq!(b.head.len(), b.len() * shape.head);
                assert_eq!(b.tail.len(), b.len() * shape.tail);
                assert_eq!(b.tail_norms.len(), b.len());
                assert_eq!(b.rows.len(), b.len().div_ceil(GROUP) * GROUP * dim);
                for row in 0..b.len() {
                    let name = b.ids.name(row);
                    assert_eq!(b.ids.find(name), Some(row));
                    let (_, v) = model.iter().find(|(n, _)| n == name).unwrap();
                    let mut words = vec![0i16; shape.words];
                    let codes = quantise(v).0;
                    pack(&codes, &mut words);
                    let (h, t) = (shape.head, shape.tail);
                    assert_eq!(&b.head[row * h..(row + 1) * h], &words[..h]);
                    assert_eq!(&b.tail[row * t..(row + 1) * t], &words[h..]);
                    let tail_sq: i32 = codes[2 * h..].iter().map(|c| c * c).sum();
                    let tn = f64::from(b.tail_norms[row]);
                    assert!(
                        tn * tn >= f64::from(tail_sq)
                            && (tn - 1.0) * (tn - 1.0) < f64::from(tail_sq).max(0.5)
                    );
                    assert_eq!(b.scales[row], quantise(v).1);
                    assert_eq!(b.exact(dim, row, v), dot(v, v));
                }
                for row in b.len()..b.len().div_ceil(GROUP) * GROUP {
                    assert!((0..dim).all(|i| b.rows[Block::at(dim, row, i)] == 0.0));
                }
                // Every stored user is found by its own template.
                for (name, v) in model.iter().take(20) {
                    let c = ix.best(v, &[p(1)]).unwrap();
                    assert_eq!(c.external_id, u(name));
                    assert_eq!(Some(c), ix.best_exact(v, &[p(1)]));
                }
            }
        }
        for (name, _) in std::mem::take(&mut model) {
            assert!(ix.remove(p(1), &u(&name)));
        }
        assert!(ix.is_empty());
        assert_eq!(ix.partners().count(), 0);
        assert_eq!(ix.best(&g.unit(dim), &[p(1)]), None);
    }

    #[test]
    fn ids_survive_growth_deletion_and_compaction() {
        let mut ids = Ids::default();
        let names: Vec<String> = (0..5000)
            .map(|i| format!("{i}-{}", "x".repeat(i % 13)))
            .collect();
        for n in &names {
            ids.push(n);
        }
        let all_bytes: usize = names.iter().map(String::len).sum();
        // Remove three in four, mirroring the swap-remove on a plain list.
        let mut rows: Vec<String> = names.clone();
        for (k, n) in names.iter().enumerate().filter(|(k, _)| k % 4 != 0) {
            let row = ids.find(n).unwrap();
            assert_eq!(ids.name(row), n, "{k}");
            ids.swap_remove(row);
            rows.swap_remove(row);
        }
        assert!(ids.arena.len() < all_bytes / 2, "the arena was compacted");
        assert_eq!(ids.spans.len(), 1250);
        for (row, n) in rows.iter().enumerate() {
            assert_eq!(ids.find(n), Some(row));
            assert_eq!(ids.name(row), n);
        }
        for (k, n) in names.iter().enumerate() {
            assert_eq!(ids.find(n).is_some(), k % 4 == 0);
        }
        assert_eq!(ids.find(""), None);
    }

    #[test]
    fn odd_queries_take_the_exact_path() {
        let mut ix = Index::new(8);
        ix.insert(p(1), u("a"), &unit(8, 0));
        ix.insert(p(1), u("b"), &unit(8, 1));
        let (c, stats) = ix.best_with_stats(&[0.0; 8], &[p(1)]);
        assert!(stats.exact_only);
        assert_eq!(c.unwrap().external_id, u("a"));
        let mut nan = unit(8, 1);
        nan[3] = f32::NAN;
        let key = |c: Option<Candidate>| c.map(|c| (c.external_id, c.similarity.to_bits()));
        assert_eq!(
            key(ix.best(&nan, &[p(1)])),
            key(ix.best_exact(&nan, &[p(1)]))
        );
        // A stored row that is not finite sends its block to the exact path.
        ix.insert(p(1), u("bad"), &[f32::INFINITY; 8]);
        let (_, stats) = ix.best_with_stats(&unit(8, 1), &[p(1)]);
        assert!(stats.exact_only);
        ix.insert(p(1), u("bad"), &unit(8, 2));
        let (c, stats) = ix.best_with_stats(&unit(8, 2), &[p(1)]);
        assert!(!stats.exact_only);
        assert_eq!(c.unwrap().external_id, u("bad"));
        assert_eq!(ix.best(&unit(8, 1), &[]), None);
    }

    /// The first `n` elements of `v`'s spare capacity. `n` must not exceed the length `v` had
    /// before it was truncated: those elements were written, and truncating a vector of
    /// `Copy` values leaves their bytes as they were (nothing here reads freed memory).
    fn left_behind<T: Copy>(v: &mut Vec<T>, n: usize) -> Vec<T> {
        v.spare_capacity_mut()[..n]
            .iter()
            // SAFETY: initialised, see above.
            .map(|x| unsafe { x.assume_init() })
            .collect()
    }

    /// A row's int8 codes (head then tail words) as stored.
    fn codes_of(b: &Block, shape: Shape, row: usize) -> Vec<i16> {
        let (h, tl) = (shape.head, shape.tail);
        let mut c = b.head[row * h..(row + 1) * h].to_vec();
        c.extend_from_slice(&b.tail[row * tl..(row + 1) * tl]);
        c
    }

    /// SPEC 8.3: the removed row's codes are not left in the spare capacity `truncate` makes
    /// (they decode to ~0.9999 cosine of the template). Both cases: the removed row is the
    /// last one, and another row is moved into the removed row's slot.
    #[test]
    fn a_removed_row_leaves_no_codes_in_spare_capacity() {
        let dim = 128;
        let shape = Shape::new(dim);
        let (h, tl) = (shape.head, shape.tail);
        assert!(h > 0 && tl > 0);
        let mut g = Gen(21);
        let mut ix = Index::new(dim);
        for name in ["alice", "carol", "bob"] {
            ix.insert(p(1), u(name), &g.unit(dim));
        }
        let b = &ix.blocks[&p(1)];
        let bob = codes_of(b, shape, 2);
        let alice = codes_of(b, shape, 0);
        assert!(
            bob.iter().all(|&w| w != 0),
            "stored codes have no zero word"
        );

        // bob is the last row.
        assert!(ix.remove(p(1), &u("bob")));
        let b = ix.blocks.get_mut(&p(1)).unwrap();
        assert_eq!(b.len(), 2);
        assert!(left_behind(&mut b.head, h).iter().all(|&w| w == 0));
        assert!(left_behind(&mut b.tail, tl).iter().all(|&w| w == 0));
        assert!(left_behind(&mut b.scales, 1).iter().all(|&s| s == 0.0));
        assert!(left_behind(&mut b.tail_norms, 1).iter().all(|&n| n == 0));
        for r in 0..2 {
            assert_ne!(codes_of(b, shape, r), bob);
        }

        // alice's slot is taken by carol, whose old slot becomes spare capacity.
        let carol = codes_of(b, shape, 1);
        assert!(ix.remove(p(1), &u("alice")));
        let b = ix.blocks.get_mut(&p(1)).unwrap();
        assert_eq!(codes_of(b, shape, 0), carol);
        assert!(left_behind(&mut b.head, 2 * h).iter().all(|&w| w == 0));
        assert!(left_behind(&mut b.tail, 2 * tl).iter().all(|&w| w == 0));
        assert!(left_behind(&mut b.scales, 2).iter().all(|&s| s == 0.0));
        assert_ne!(codes_of(b, shape, 0), alice);
        // The f32 lanes of the removed slots are zero too (padding of the last group).
        for r in 1..GROUP {
            assert!((0..dim).all(|i| b.rows[Block::at(dim, r, i)] == 0.0));
        }
        assert_eq!(
            ix.best(&g.unit(dim), &[p(1)]).unwrap().external_id,
            u("carol")
        );
    }

    /// SPEC 8.3: a block is zeroed, over its whole capacity, before it is dropped (when its
    /// partner's last user is erased, or the index is dropped): `Block::wipe`, which the
    /// block's `Drop` calls.
    #[test]
    fn a_dropped_block_is_wiped_first() {
        let dim = 128;
        let shape = Shape::new(dim);
        let mut g = Gen(22);
        let mut b = Block::default();
        for i in 0..40 {
            b.push(shape, &format!("u{i}"), &g.unit(dim));
        }
        let lens = (
            b.rows.len(),
            b.head.len(),
            b.tail.len(),
            b.tail_norms.len(),
            b.scales.len(),
        );
        assert!(b.head.iter().all(|&w| w != 0));
        b.wipe();
        assert_eq!(b.len(), 0);
        assert!(left_behind(&mut b.rows, lens.0).iter().all(|&v| v == 0.0));
        assert!(left_behind(&mut b.head, lens.1).iter().all(|&w| w == 0));
        assert!(left_behind(&mut b.tail, lens.2).iter().all(|&w| w == 0));
        assert!(
            left_behind(&mut b.tail_norms, lens.3)
                .iter()
                .all(|&n| n == 0)
        );
        assert!(left_behind(&mut b.scales, lens.4).iter().all(|&s| s == 0.0));

        // Emptying a block through the index drops it (and so wipes it).
        let mut ix = Index::new(dim);
        ix.insert(p(2), u("bob"), &g.unit(dim));
        assert!(ix.remove(p(2), &u("bob")));
        assert!(!ix.blocks.contains_key(&p(2)));
    }

    /// Growth and shrinking copy into a new buffer (the old one is zeroed before it is freed)
    /// and keep every row, code and id in place.
    #[test]
    fn growth_and_shrinking_keep_the_rows() {
        let dim = 128;
        let mut g = Gen(23);
        let mut ix = Index::new(dim);
        let rows: Vec<Vec<f32>> = (0..300).map(|_| g.unit(dim)).collect();
        for (i, r) in rows.iter().enumerate() {
            ix.insert(p(1), u(&format!("u{i}")), r);
        }
        let mut v = vec![1u16, 2, 3];
        reserve_wiping(&mut v, 100);
        assert_eq!(v, [1, 2, 3]);
        assert!(v.capacity() >= 103);
        shrink_wiping(&mut v);
        assert_eq!((v.as_slice(), v.capacity()), (&[1u16, 2, 3][..], 3));
        ix.shrink_to_fit();
        let b = &ix.blocks[&p(1)];
        assert_eq!(b.head.capacity(), b.head.len());
        for (i, r) in rows.iter().enumerate() {
            let c = ix.best(r, &[p(1)]).unwrap();
            assert_eq!(c.external_id, u(&format!("u{i}")));
            assert_eq!(c.similarity, dot(r, r));
        }
    }

    #[test]
    fn memory_counts_rows_codes_and_ids() {
        let mut ix = Index::new(128);
        let mut g = Gen(9);
        for i in 0..1000 {
            ix.insert(p(1), u(&format!("u{i:05}")), &g.unit(128));
        }
        let m = ix.memory();
        assert_eq!(m.f32_bytes, 1024 * 128 * 4);
        assert_eq!(m.code_bytes, 1000 * (128 + 2 + 4));
        assert!(m.id_bytes >= 1000 * (6 + 8) && m.id_bytes < 1000 * 30);
        assert!(m.reserved_bytes >= m.total_bytes);
    }
}
