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
//! # The f32 path, [`Index::best_exact`]
//! Scans every f32 row. Rows are stored *interleaved by groups of 32*: value `i` of the 32
//! rows of a group sits in 32 consecutive floats, so the kernel is a vertical multiply-add into
//! 32 accumulators (eight 4-lane registers) with one broadcast query value per step: no
//! horizontal sums, no shuffles, and each row's sum is one sequential chain — the arithmetic
//! of [`dot`]. A group whose 32 scores hold nothing better is dismissed with one vectorised
//! count. Per row that is 128 multiplies and 128 adds in 4-lane SSE2 (about 20 cycles): on
//! par with FAISS's AVX2/AVX-512 `IndexFlatIP` in cache, and both are bound by memory
//! bandwidth beyond the L3.
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
//! once. The kernel is a plain integer reduction over fixed-size arrays, which LLVM turns
//! into one load, one shift and two `pmaddwd` per 16 codes; it is specialised (const
//! generics) for the common widths, with a generic fallback. Everything is portable Rust: no
//! `std::arch`, no runtime feature detection; other targets get whatever their autovectoriser
//! makes of the same code.
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

use super::ids::{ExternalId, PartnerId};
use std::collections::BTreeMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

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

        let (codes, scale) = quantise(t);
        let mut words = vec![0i16; shape.words];
        pack(&codes, &mut words);
        let (h, tl) = (shape.head, shape.tail);
        self.head[row * h..(row + 1) * h].copy_from_slice(&words[..h]);
        self.tail[row * tl..(row + 1) * tl].copy_from_slice(&words[h..]);
        let tail_sq: u64 = codes.iter().skip(2 * h).map(|&c| (c * c) as u64).sum();
        self.tail_norms[row] = ceil_sqrt(tail_sq);
        self.scales[row] = scale;
        let l1 = scale * codes.iter().map(|c| c.unsigned_abs() as f32).sum::<f32>();
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
        if row % GROUP == 0 {
            self.rows.resize(self.rows.len() + GROUP * shape.dim, 0.0);
        }
        self.head.resize(self.head.len() + shape.head, 0);
        self.tail.resize(self.tail.len() + shape.tail, 0);
        self.tail_norms.push(0);
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
        for i in 0..dim {
            self.rows[Self::at(dim, last, i)] = 0.0;
        }
        self.ids.swap_remove(row);
        self.head.truncate(last * h);
        self.tail.truncate(last * tl);
        self.tail_norms.pop();
        self.scales.pop();
        self.rows.truncate(last.div_ceil(GROUP) * GROUP * dim);
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
    fn scan_exact(&self, dim: usize, query: &[f32], bar: Option<f32>) -> Option<(usize, f32)> {
        let n = self.len();
        let (mut found, mut bar) = (None, bar);
        for (g, group) in self.rows.chunks_exact(GROUP * dim).enumerate() {
            let acc = group_scores(group, query);
            let live = &acc[..(n - g * GROUP).min(GROUP)];
            // Most groups hold nothing better: test them with one vectorised count.
            if let Some(b) = bar
                && live.iter().fold(0u32, |c, &s| c + u32::from(s > b)) == 0
            {
                continue;
            }
            for (l, &s) in live.iter().enumerate() {
                if bar.is_none_or(|b| s > b) {
                    found = Some((g * GROUP + l, s));
                    bar = Some(s);
                }
            }
        }
        found
    }
}

/// The similarities of one interleaved group of 32 rows.
#[inline(always)]
fn group_scores(group: &[f32], query: &[f32]) -> [f32; GROUP] {
    let mut acc = [0f32; GROUP];
    for (x, &q) in group.chunks_exact(GROUP).zip(query) {
        let x: &[f32; GROUP] = x.try_into().expect("a group step is GROUP floats");
        for l in 0..GROUP {
            acc[l] += x[l] * q;
        }
    }
    acc
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
        let head = if words % 32 == 0 { words / 2 } else { words };
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

/// [`code_dot`] of each `W`-word row of `codes` into `out`.
///
/// LLVM may vectorise this loop *across* rows instead (gathering each word lane by lane),
/// several times slower than the per-row `pmaddwd` code: it does so when inlined into a
/// caller, hence `inline(never)`, and for rows of 32 words or fewer, hence the opaque
/// `black_box` per row there (measured: 2–3× faster at 16 and 32 words, 8 % slower at 64).
#[inline(never)]
fn code_dots<const W: usize>(codes: &[i16], a: &[i16], b: &[i16], out: &mut [i32]) {
    let a: &[i16; W] = a.try_into().expect("query words");
    let b: &[i16; W] = b.try_into().expect("query words");
    for (row, d) in codes.chunks_exact(W).zip(out.iter_mut()) {
        let row: &[i16; W] = row.try_into().expect("row words");
        let v = code_dot(row, a, b);
        *d = if W <= 32 { std::hint::black_box(v) } else { v };
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
fn scan_block<S: Sink>(b: &Block, shape: Shape, q: &CodeQuery, pos: usize, sink: &mut S) -> usize {
    match (shape.head, shape.tail) {
        (16, 0) => scan_split::<16, 0, S>(b, q, pos, sink),
        (16, 16) => scan_split::<16, 16, S>(b, q, pos, sink),
        (32, 32) => scan_split::<32, 32, S>(b, q, pos, sink),
        (64, 64) => scan_split::<64, 64, S>(b, q, pos, sink),
        (128, 128) => scan_split::<128, 128, S>(b, q, pos, sink),
        _ => scan_any(b, shape, q, pos, sink),
    }
}

#[inline(always)]
fn scan_split<const H: usize, const T: usize, S: Sink>(
    b: &Block,
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
        code_dots::<H>(&b.head[first * H..(first + m) * H], ah, bh, head);
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
            code_dots::<T>(&b.tail[first * T..(first + m) * T], at, bt, tail);
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
    blocks: BTreeMap<PartnerId, Block>,
}

impl Index {
    pub fn new(dim: usize) -> Index {
        Index {
            dim,
            shape: Shape::new(dim),
            blocks: BTreeMap::new(),
        }
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
            stats.head_only += scan_block(b, self.shape, &q, pos, &mut short);
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
                scan_block(b, self.shape, &q, pos, &mut rescan);
            }
            w = rescan.winner;
            stats.reranked += rescan.reranked;
        }
        (Some(self.candidate(&scope, w)), stats)
    }

    /// The most similar user, scanning every f32 row (the reference the quantised search
    /// must match).
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
            b.rows.shrink_to_fit();
            b.head.shrink_to_fit();
            b.tail.shrink_to_fit();
            b.tail_norms.shrink_to_fit();
            b.scales.shrink_to_fit();
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
            if let Some((row, s)) = b.scan_exact(self.dim, query, best.map(|b| b.2)) {
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
            assert_eq!(scan_block(&ix.blocks[&p(1)], shape, &cq, 0, &mut all), 0);
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
