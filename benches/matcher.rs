//! The 1:N matcher: single-query latency of the f32 and int8 paths against FAISS
//! `IndexFlatIP` on the same vectors in the same run, plus index memory, FAR/FRR at the
//! default threshold and the start-up cost of opening and indexing sealed templates.
//!
//! `cargo bench --bench matcher` (add `-- --quick` or `BENCH_QUICK=1` for a short run).
//! Settings (environment):
//! - `BENCH_SIZES` (default `10000,100000,1000000`; quick `10000`; `0` for none): templates
//!   per index;
//! - `BENCH_QUERIES` (default 1000; quick 200): timed queries per size and path;
//! - `BENCH_IMPOSTORS` (default 0.1): share of queries scanned from names not enrolled;
//! - `BENCH_PAIRS` (default 10000; quick 2000): genuine and impostor pairs for FAR/FRR;
//! - `BENCH_STARTUP` (default 100000; quick 10000): templates sealed, then opened and indexed;
//! - `BENCH_ROUNDS` (default 3; quick 2): rounds per size; each round times every query once
//!   on each path; the summary gives per-path medians over rounds;
//! - `BENCH_CHUNK` (default 50): a round runs the queries in chunks of this many, each chunk
//!   on the f32 path, the int8 path and FAISS in turn (rotating order, 3 untimed warm-up
//!   searches before each chunk), so that the three paths share the same neighbours;
//! - `BENCH_FAISS` (default 1): 0 skips the FAISS baseline;
//! - `BENCH_KERNELS` (default `best`): the matcher's SIMD kernels, `best` (what
//!   `Index::new` picks on this CPU), `portable` (the x86-64 baseline, SSE2), `avx2` or
//!   `avx512`; a level this CPU lacks is refused.
//!
//! Data: user `u{i}` is `synthetic::identity("u{i}", 128)`; a genuine query is
//! `synthetic::scan("u{j}", 128, seed)` of a random enrolled `j`, an impostor query a scan of
//! a name never enrolled. All templates sit in one partner (the door scope of a one-partner
//! site). One thread. FAISS runs in a child `python3 benches/faiss_baseline.py --serve` on the
//! same vectors (written to a temp dir as raw f32), loaded once per size; the Rust side asks it
//! to time chunk after chunk of the queries, interleaved with palmgate's chunks, so that on a
//! shared machine (other tenants, CPU time slices of ~4 ms) both see the same conditions.
//!
//! Targets (project issue): f32 ≥ 1.0× FAISS speed, int8 ≥ 2× with the same top-1 on
//! ≥ 99.9 % of queries, 100k p99 ≤ 3 ms; 100k users ≤ 64 MB of index; start-up (open and
//! index 100k sealed templates) ≤ 2 s.

use palmgate::app::keystore::KeyStore;
use palmgate::app::readers::open_template;
use palmgate::app::templates::{self, KeyWrap};
use palmgate::core::event::SealedTemplate;
use palmgate::core::matcher::{Index, Kernels, SearchStats, dot};
use palmgate::core::{ExternalId, PartnerId};
use palmgate::synthetic;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const DIM: usize = 128;
const THRESHOLD: f32 = 0.80;
const WARMUP: usize = 20;
/// Untimed searches before each timed chunk of queries.
const CHUNK_WARMUP: usize = 3;

struct Settings {
    sizes: Vec<usize>,
    queries: usize,
    impostors: f64,
    pairs: usize,
    startup: usize,
    rounds: usize,
    chunk: usize,
    faiss: bool,
    kernels: Kernels,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}: cannot parse {s:?}")),
        Err(_) => default,
    }
}

fn settings() -> Settings {
    let quick = std::env::args().any(|a| a == "--quick") || env_or("BENCH_QUICK", 0) == 1;
    let sizes = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| {
            if quick {
                "10000"
            } else {
                "10000,100000,1000000"
            }
            .into()
        })
        .split(',')
        .filter(|s| !s.trim().is_empty() && s.trim() != "0")
        .map(|s| {
            s.trim()
                .parse()
                .expect("BENCH_SIZES: comma-separated counts")
        })
        .collect();
    Settings {
        sizes,
        queries: env_or("BENCH_QUERIES", if quick { 200 } else { 1000 }),
        impostors: env_or("BENCH_IMPOSTORS", 0.1),
        pairs: env_or("BENCH_PAIRS", if quick { 2000 } else { 10_000 }),
        startup: env_or("BENCH_STARTUP", if quick { 10_000 } else { 100_000 }),
        rounds: env_or("BENCH_ROUNDS", if quick { 2 } else { 3 }).max(1),
        chunk: env_or("BENCH_CHUNK", 50).max(1),
        faiss: env_or("BENCH_FAISS", 1) == 1,
        kernels: kernels(),
    }
}

fn kernels() -> Kernels {
    let name = std::env::var("BENCH_KERNELS").unwrap_or_else(|_| "best".into());
    let k = match name.trim() {
        "best" => Kernels::best(),
        "portable" => Kernels::Portable,
        "avx2" => Kernels::Avx2,
        "avx512" => Kernels::Avx512,
        other => panic!("BENCH_KERNELS: best, portable, avx2 or avx512, not {other:?}"),
    };
    assert!(
        k.available(),
        "BENCH_KERNELS: this CPU cannot run {}",
        k.name()
    );
    k
}

/// SplitMix64: the benchmark's own deterministic randomness.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        for c in b.chunks_mut(8) {
            c.copy_from_slice(&self.next().to_le_bytes()[..c.len()]);
        }
        b
    }
}

fn partner() -> PartnerId {
    PartnerId::from_random([7; 16])
}

fn user(i: usize) -> String {
    format!("u{i}")
}

/// Nearest-rank percentile of ascending values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    let k = ((p / 100.0 * sorted.len() as f64).ceil() as usize).max(1);
    sorted[k - 1]
}

struct Latency {
    p50: f64,
    p99: f64,
    mean: f64,
}

fn latency(mut ms: Vec<f64>) -> Latency {
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    ms.sort_by(f64::total_cmp);
    Latency {
        p50: pct(&ms, 50.0),
        p99: pct(&ms, 99.0),
        mean,
    }
}

/// A query and the enrolled user it was scanned from (None: impostor).
struct Query {
    values: Vec<f32>,
    from: Option<usize>,
}

fn queries(n: usize, count: usize, impostors: f64, seed: u64) -> Vec<Query> {
    let mut mix = Mix(seed);
    (0..count)
        .map(|k| {
            let impostor = (mix.next() % 1_000_000) as f64 / 1e6 < impostors;
            let scan_seed = 1_000_000 + k as u64;
            if impostor {
                Query {
                    values: synthetic::scan(&format!("stranger{k}"), DIM, scan_seed),
                    from: None,
                }
            } else {
                let j = mix.below(n);
                Query {
                    values: synthetic::scan(&user(j), DIM, scan_seed),
                    from: Some(j),
                }
            }
        })
        .collect()
}

/// Times `search` on every query of `qs` after `warm` untimed searches; returns milliseconds
/// and top-1 (user number, similarity) per query.
fn time_chunk(
    qs: &[Query],
    warm: usize,
    mut search: impl FnMut(&[f32]) -> Option<(usize, f32)>,
) -> (Vec<f64>, Top) {
    for q in qs.iter().cycle().take(warm) {
        std::hint::black_box(search(&q.values));
    }
    let mut ms = Vec::with_capacity(qs.len());
    let mut top = Vec::with_capacity(qs.len());
    for q in qs {
        let t0 = Instant::now();
        let r = std::hint::black_box(search(&q.values));
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
        top.push(r);
    }
    (ms, top)
}

fn user_number(id: &ExternalId) -> usize {
    id.as_str()[1..].parse().expect("u{i}")
}

fn write_f32(path: &Path, rows: impl Iterator<Item = impl AsRef<[f32]>>) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create temp file"));
    for r in rows {
        for v in r.as_ref() {
            f.write_all(&v.to_le_bytes()).expect("write temp file");
        }
    }
    f.flush().expect("flush temp file");
}

/// FAISS's answers for a chunk of queries.
struct FaissChunk {
    ms: Vec<f64>,
    top1: Vec<usize>,
    scores: Vec<f32>,
}

/// The FAISS child process: loaded once per size, asked to time chunks of queries.
struct FaissChild {
    child: std::process::Child,
    out: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    version: String,
    simd: String,
    _dir: tempfile::TempDir,
}

impl FaissChild {
    fn start(base: &[Vec<f32>], qs: &[Query]) -> Result<FaissChild, String> {
        use std::io::BufRead;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (bp, qp) = (dir.path().join("base.f32"), dir.path().join("queries.f32"));
        write_f32(&bp, base.iter());
        write_f32(&qp, qs.iter().map(|q| &q.values));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/faiss_baseline.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(&bp)
            .arg(&qp)
            .args(["--dim", &DIM.to_string(), "--warmup", &WARMUP.to_string()])
            .arg("--serve")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run python3: {e}"))?;
        let out = std::io::BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut me = FaissChild {
            child,
            out,
            version: String::new(),
            simd: String::new(),
            _dir: dir,
        };
        let ready = me.reply()?;
        if ready.get("ready").is_none() {
            return Err(format!("unexpected reply: {ready}"));
        }
        me.version = ready["faiss"].as_str().unwrap_or("?").into();
        me.simd = ready["simd"].as_str().unwrap_or("?").trim().into();
        Ok(me)
    }

    fn ask(&mut self, line: &str) -> Result<serde_json::Value, String> {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        writeln!(stdin, "{line}").map_err(|e| e.to_string())?;
        stdin.flush().map_err(|e| e.to_string())?;
        self.reply()
    }

    fn reply(&mut self) -> Result<serde_json::Value, String> {
        let line = match self.out.next() {
            Some(Ok(line)) => line,
            _ => {
                let status = self.child.wait().map_err(|e| e.to_string())?;
                return Err(format!("faiss_baseline.py ended ({status})"));
            }
        };
        let v: serde_json::Value = serde_json::from_str(line.trim())
            .map_err(|_| format!("faiss_baseline.py said: {line}"))?;
        match v.get("error") {
            Some(e) => Err(e.to_string()),
            None => Ok(v),
        }
    }

    /// Times queries `a..b` after `warm` untimed searches.
    fn chunk(&mut self, a: usize, b: usize, warm: usize) -> Result<FaissChunk, String> {
        let v = self.ask(&format!("time {a} {b} {warm}"))?;
        let nums = |k: &str| -> Vec<f64> {
            v[k].as_array()
                .map(|a| a.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect())
                .unwrap_or_default()
        };
        let chunk = FaissChunk {
            ms: nums("ms"),
            top1: nums("top1").iter().map(|&x| x as usize).collect(),
            scores: nums("scores").iter().map(|&x| x as f32).collect(),
        };
        if chunk.ms.len() != b - a || chunk.top1.len() != b - a {
            return Err(format!("short answer for queries {a}..{b}"));
        }
        Ok(chunk)
    }

    fn overhead_p50(&mut self) -> f64 {
        self.ask("overhead")
            .ok()
            .and_then(|v| v["call_overhead_p50_ms"].as_f64())
            .unwrap_or(f64::NAN)
    }
}

impl Drop for FaissChild {
    fn drop(&mut self) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = writeln!(stdin, "quit");
        }
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn mb(bytes: usize) -> String {
    format!(
        "{:.1} MB ({:.1} MiB)",
        bytes as f64 / 1e6,
        bytes as f64 / (1024.0 * 1024.0)
    )
}

fn agreement(a: &[Option<usize>], b: &[Option<usize>]) -> (usize, usize) {
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    (same, a.len())
}

fn percent((same, all): (usize, usize)) -> String {
    format!(
        "{:.2} % ({same}/{all})",
        100.0 * same as f64 / all.max(1) as f64
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

type Top = Vec<Option<(usize, f32)>>;

/// One size: build, then `rounds` passes over the queries, chunk by chunk on each path.
fn one_size(s: &Settings, n: usize, ids: &[Vec<f32>], summary: &mut Vec<String>) {
    println!(
        "\n## {n} templates (dim {DIM}, one partner, one thread, {} kernels)",
        s.kernels.name()
    );
    let p = partner();
    let t0 = Instant::now();
    let mut index = Index::with_kernels(DIM, s.kernels).expect("kernels checked");
    for (i, v) in ids[..n].iter().enumerate() {
        index.insert(p, ExternalId(user(i)), v);
    }
    let build = t0.elapsed();
    let m = index.memory();
    index.shrink_to_fit();
    let shrunk = index.memory();
    println!(
        "index built in {:.2} s; held {} = f32 {} + codes and scales {} + ids {}; reserved {} ({} after shrink_to_fit)",
        build.as_secs_f64(),
        mb(m.total_bytes),
        mb(m.f32_bytes),
        mb(m.code_bytes),
        mb(m.id_bytes),
        mb(m.reserved_bytes),
        mb(shrunk.reserved_bytes),
    );

    let qs = queries(n, s.queries, s.impostors, n as u64);
    let scope = [p];
    let mut faiss = if s.faiss {
        match FaissChild::start(&ids[..n], &qs) {
            Ok(f) => Some(f),
            Err(e) => {
                println!("FAISS baseline unavailable: {e}\n(reporting palmgate numbers only)");
                None
            }
        }
    } else {
        None
    };

    let nq = qs.len();
    let mut lat: [Vec<Latency>; 3] = [vec![], vec![], vec![]];
    let (mut f32_top, mut i8_top): (Top, Top) = (vec![None; nq], vec![None; nq]);
    let (mut fa_top, mut fa_scores) = (vec![usize::MAX; nq], vec![f32::NAN; nq]);
    let mut stats = vec![SearchStats::default(); nq];
    // p50 of genuine queries, p50 of impostor queries, p10 of all: (f32, int8, FAISS) per round.
    let mut by_kind: [Vec<(f64, f64, f64)>; 3] = [vec![], vec![], vec![]];
    let mut summary_kinds = Vec::new();
    println!("| round | path | p50 ms | p99 ms | mean ms |");
    println!("|---|---|---|---|---|");
    for round in 0..s.rounds {
        let mut ms: [Vec<f64>; 3] = [vec![], vec![], vec![]];
        for (ci, a) in (0..nq).step_by(s.chunk).enumerate() {
            let b = (a + s.chunk).min(nq);
            for k in 0..3 {
                match (round + ci + k) % 3 {
                    0 => {
                        let (t, top) = time_chunk(&qs[a..b], CHUNK_WARMUP, |q| {
                            index
                                .best_exact(q, &scope)
                                .map(|c| (user_number(&c.external_id), c.similarity))
                        });
                        ms[0].extend(t);
                        f32_top[a..b].copy_from_slice(&top);
                    }
                    1 => {
                        let mut st = Vec::with_capacity(b - a + CHUNK_WARMUP);
                        let (t, top) = time_chunk(&qs[a..b], CHUNK_WARMUP, |q| {
                            let (c, x) = index.best_with_stats(q, &scope);
                            st.push(x);
                            c.map(|c| (user_number(&c.external_id), c.similarity))
                        });
                        ms[1].extend(t);
                        i8_top[a..b].copy_from_slice(&top);
                        stats[a..b].copy_from_slice(&st[st.len() - (b - a)..]);
                    }
                    _ => {
                        let Some(f) = faiss.as_mut() else { continue };
                        match f.chunk(a, b, CHUNK_WARMUP) {
                            Ok(c) => {
                                ms[2].extend(c.ms);
                                fa_top[a..b].copy_from_slice(&c.top1);
                                fa_scores[a..b].copy_from_slice(&c.scores);
                            }
                            Err(e) => {
                                println!("FAISS baseline failed: {e}");
                                faiss = None;
                            }
                        }
                    }
                }
            }
        }
        // Per query kind: genuine queries let both palmgate paths skip most of the rest of
        // the block once the match is found; impostor queries do not.
        if ms.iter().all(|m| m.len() == nq) {
            for (kind, genuine) in [("genuine", true), ("impostor", false)] {
                let pick = |m: &[f64]| -> Vec<f64> {
                    m.iter()
                        .zip(&qs)
                        .filter(|(_, q)| q.from.is_some() == genuine)
                        .map(|(t, _)| *t)
                        .collect()
                };
                let p50 = |m: &[f64]| latency(pick(m)).p50;
                let (f, i, fa) = (p50(&ms[0]), p50(&ms[1]), p50(&ms[2]));
                by_kind[usize::from(!genuine)].push((f, i, fa));
                println!(
                    "round {} {kind} queries ({}): p50 f32 {f:.4} / int8 {i:.4} / FAISS {fa:.4} ms; vs FAISS f32 {:.2}×, int8 {:.2}×",
                    round + 1,
                    pick(&ms[0]).len(),
                    fa / f,
                    fa / i
                );
            }
        }
        // The 10th percentile: on a shared machine, the searches no other process disturbed.
        if ms.iter().all(|m| m.len() == nq) {
            let p10 = |m: &[f64]| {
                let mut v = m.to_vec();
                v.sort_by(f64::total_cmp);
                pct(&v, 10.0)
            };
            let (f, i, fa) = (p10(&ms[0]), p10(&ms[1]), p10(&ms[2]));
            by_kind[2].push((f, i, fa));
            println!(
                "round {} p10 (all queries): f32 {f:.4} / int8 {i:.4} / FAISS {fa:.4} ms; vs FAISS f32 {:.2}×, int8 {:.2}×",
                round + 1,
                fa / f,
                fa / i
            );
        }
        for (path, name) in ["f32", "int8", "FAISS"].iter().enumerate() {
            if ms[path].len() != nq {
                continue;
            }
            let l = latency(std::mem::take(&mut ms[path]));
            println!(
                "| {} | {name} | {:.4} | {:.4} | {:.4} |",
                round + 1,
                l.p50,
                l.p99,
                l.mean
            );
            lat[path].push(l);
        }
    }
    let fa_meta = faiss
        .as_mut()
        .map(|f| (f.version.clone(), f.simd.clone(), f.overhead_p50()));
    drop(faiss);

    let fallbacks = stats.iter().filter(|st| st.fallback).count();
    let per_query = |f: fn(&SearchStats) -> usize| {
        stats.iter().map(f).sum::<usize>() as f64 / stats.len().max(1) as f64
    };
    let reranked = per_query(|st| st.reranked);
    let head_only = 100.0 * per_query(|st| st.head_only) / n as f64;
    let f32_ids: Vec<Option<usize>> = f32_top.iter().map(|t| t.map(|t| t.0)).collect();
    let i8_ids: Vec<Option<usize>> = i8_top.iter().map(|t| t.map(|t| t.0)).collect();
    let bitwise = f32_top
        .iter()
        .zip(&i8_top)
        .filter(|(a, b)| a.map(|a| (a.0, a.1.to_bits())) == b.map(|b| (b.0, b.1.to_bits())))
        .count();
    let i8_vs_exact = agreement(&i8_ids, &f32_ids);

    // 1:N decisions at the default threshold, on the int8 path.
    let (mut gen_n, mut gen_ok, mut imp_n, mut imp_acc) = (0, 0, 0, 0);
    for (q, t) in qs.iter().zip(&i8_top) {
        match q.from {
            Some(j) => {
                gen_n += 1;
                gen_ok += usize::from(t.is_some_and(|(u, s)| u == j && s >= THRESHOLD));
            }
            None => {
                imp_n += 1;
                imp_acc += usize::from(t.is_some_and(|(_, s)| s >= THRESHOLD));
            }
        }
    }

    let med = |l: &[Latency], f: fn(&Latency) -> f64| median(l.iter().map(f).collect());
    let ratio = |path: usize, f: fn(&Latency) -> f64| -> String {
        if lat[2].len() != lat[path].len() || lat[2].is_empty() {
            return "—".into();
        }
        let per_round: Vec<f64> = lat[2]
            .iter()
            .zip(&lat[path])
            .map(|(a, b)| f(a) / f(b))
            .collect();
        let lo = per_round.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = per_round.iter().copied().fold(0f64, f64::max);
        format!("{:.2}× ({lo:.2}–{hi:.2})", median(per_round))
    };
    let fa_ids: Option<Vec<Option<usize>>> = fa_meta
        .as_ref()
        .map(|_| fa_top.iter().map(|&i| Some(i)).collect());
    if let Some((version, simd, overhead)) = &fa_meta {
        let max_diff = f32_top
            .iter()
            .zip(&fa_scores)
            .filter_map(|(t, fs)| t.map(|t| (t.1 - fs).abs()))
            .fold(0f32, f32::max);
        println!(
            "FAISS {version} ({simd}), Python call overhead p50 {overhead:.4} ms (included in its times); max |score palmgate − FAISS| {max_diff:.2e}"
        );
    }
    println!(
        "int8 path: {fallbacks} of {} queries needed the rescan (near-ties), {reranked:.2} rows re-ranked per query on average, {head_only:.1} % of rows settled by the first half of their codes",
        stats.len()
    );
    println!(
        "1:N at threshold {THRESHOLD} (int8 path): genuine queries identified {gen_ok}/{gen_n}; impostor queries accepted {imp_acc}/{imp_n}"
    );
    for (kind, rounds) in [
        "genuine queries only: p50",
        "impostor queries only: p50",
        "all queries: p10",
    ]
    .iter()
    .zip(&by_kind)
    {
        if rounds.is_empty() {
            continue;
        }
        let med3 = |f: fn(&(f64, f64, f64)) -> f64| median(rounds.iter().map(f).collect());
        let ratio =
            |f: fn(&(f64, f64, f64)) -> f64| median(rounds.iter().map(|r| r.2 / f(r)).collect());
        let line = format!(
            "| {n} | {kind} f32 {:.4} ms, int8 {:.4} ms, FAISS {:.4} ms | | | | f32 {:.2}×, int8 {:.2}× | | |",
            med3(|r| r.0),
            med3(|r| r.1),
            med3(|r| r.2),
            ratio(|r| r.0),
            ratio(|r| r.1),
        );
        println!("{line}");
        summary_kinds.push(line);
    }
    let names = [
        "palmgate f32 (`best_exact`)",
        "palmgate int8 + exact re-rank (`best`)",
        "FAISS `IndexFlatIP`",
    ];
    let agree = [
        fa_ids.as_ref().map_or("—".into(), |f| {
            format!("= FAISS {}", percent(agreement(&f32_ids, f)))
        }),
        format!(
            "= f32 {}, same similarity bits {bitwise}/{}",
            percent(i8_vs_exact),
            qs.len()
        ),
        "—".into(),
    ];
    let mut rows = Vec::new();
    for path in 0..3 {
        if lat[path].is_empty() {
            continue;
        }
        rows.push(format!(
            "| {n} | {} | {:.4} | {:.4} | {:.4} | {} | {} | {} |",
            names[path],
            med(&lat[path], |l| l.p50),
            med(&lat[path], |l| l.p99),
            med(&lat[path], |l| l.mean),
            if path == 2 {
                "1.00×".into()
            } else {
                ratio(path, |l| l.p50)
            },
            if path == 2 {
                "1.00×".into()
            } else {
                ratio(path, |l| l.p99)
            },
            agree[path],
        ));
    }
    println!("\nmedians of {} rounds:", s.rounds);
    println!("{HEADER}");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    summary.extend(rows);
    summary.extend(summary_kinds);
    summary.push(format!(
        "| {n} | index memory: {} held ({} reserved before `shrink_to_fit`) | | | | | | int8: {fallbacks}/{} rescans, {reranked:.2} re-ranked/query, {head_only:.0} % rows head-only |",
        mb(m.total_bytes),
        mb(m.reserved_bytes),
        stats.len()
    ));
}

const HEADER: &str = "| templates | path | p50 ms | p99 ms | mean ms | speed vs FAISS, p50 (range over rounds) | speed vs FAISS, p99 | top-1 agreement |";

fn far_frr(pairs: usize) {
    println!("\n## FAR / FRR at threshold {THRESHOLD} (synthetic generator, dim {DIM})");
    let mut genuine = Vec::with_capacity(pairs);
    let mut impostor = Vec::with_capacity(pairs);
    for i in 0..pairs as u64 {
        let name = format!("pair{i}");
        let a = synthetic::scan(&name, DIM, 2 * i);
        let b = synthetic::scan(&name, DIM, 2 * i + 1);
        let c = synthetic::scan(&format!("other{i}"), DIM, 2 * i + 1);
        genuine.push(dot(&a, &b));
        impostor.push(dot(&a, &c));
    }
    let rejected = genuine.iter().filter(|&&s| s < THRESHOLD).count();
    let accepted = impostor.iter().filter(|&&s| s >= THRESHOLD).count();
    let stats = |v: &[f32]| {
        let mut s: Vec<f64> = v.iter().map(|&x| f64::from(x)).collect();
        s.sort_by(f64::total_cmp);
        (
            s[0],
            s.iter().sum::<f64>() / s.len() as f64,
            pct(&s, 0.1),
            pct(&s, 99.9),
            s[s.len() - 1],
        )
    };
    let bound = |k: usize| {
        if k == 0 {
            format!("0 (95 % upper bound {:.3} %)", 300.0 / pairs as f64)
        } else {
            format!("{:.4} %", 100.0 * k as f64 / pairs as f64)
        }
    };
    let g = stats(&genuine);
    let i = stats(&impostor);
    println!(
        "genuine pairs (two scans of one name): {pairs}; min {:.4}, 0.1 % {:.4}, mean {:.4}, max {:.4}",
        g.0, g.2, g.1, g.4
    );
    println!(
        "impostor pairs (scans of two names):   {pairs}; min {:.4}, mean {:.4}, 99.9 % {:.4}, max {:.4}",
        i.0, i.1, i.3, i.4
    );
    println!(
        "FRR = {rejected}/{pairs} = {}; FAR = {accepted}/{pairs} = {}",
        bound(rejected),
        bound(accepted)
    );
}

fn startup(n: usize) {
    println!("\n## Start-up: open and index {n} sealed templates");
    let mut mix = Mix(42);
    let p = partner();
    let wrap = KeyWrap::new(&mix.bytes::<32>());
    let t0 = Instant::now();
    let ids: Vec<Vec<f32>> = (0..n).map(|i| synthetic::identity(&user(i), DIM)).collect();
    let gen_time = t0.elapsed();

    let t0 = Instant::now();
    let mut sealed: Vec<(ExternalId, SealedTemplate, Vec<u8>)> = Vec::with_capacity(n);
    for (i, v) in ids.iter().enumerate() {
        let u = ExternalId(user(i));
        let s = templates::seal(v, p, &u, mix.bytes(), mix.bytes(), mix.bytes());
        let wrapped = wrap.wrap(s.template.key_id, &s.data_key, mix.bytes());
        sealed.push((u, s.template, wrapped));
    }
    let seal_time = t0.elapsed();
    drop(ids);

    // A: keys already in memory (crypto + decode + insert only).
    let t0 = Instant::now();
    let mut index = Index::new(DIM);
    for (u, t, wrapped) in &sealed {
        let key = wrap.unwrap(t.key_id, wrapped).expect("unwrap");
        let v = templates::open(t, &key, p, u, DIM).expect("open");
        index.insert(p, u.clone(), &v);
    }
    let in_memory = t0.elapsed();
    assert_eq!(index.len(), n);
    drop(index);

    // B: the start-up path of `readers::build_index`: key store lookup, unwrap, open, insert.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("keys.sqlite");
    drop(KeyStore::open(&path).expect("key store"));
    let t0 = Instant::now();
    {
        // Bulk load in one transaction (KeyStore::put syncs each key: minutes for 100k).
        let mut conn = rusqlite::Connection::open(&path).expect("open key store file");
        let tx = conn.transaction().expect("transaction");
        {
            let mut st = tx
                .prepare("INSERT INTO data_keys (id, wrapped) VALUES (?1, ?2)")
                .expect("prepare");
            for (_, t, wrapped) in &sealed {
                st.execute(rusqlite::params![t.key_id.to_string(), wrapped])
                    .expect("insert key");
            }
        }
        tx.commit().expect("commit");
    }
    let load_time = t0.elapsed();
    let keystore = KeyStore::open(&path).expect("reopen key store");
    let t0 = Instant::now();
    let mut index = Index::new(DIM);
    for (u, t, _) in &sealed {
        let v = open_template(&keystore, &wrap, t, p, u, DIM).expect("open_template");
        index.insert(p, u.clone(), &v);
    }
    let with_store = t0.elapsed();
    assert_eq!(index.len(), n);
    drop(index);

    // C: the same, reading all wrapped keys with one SELECT first (what `build_index` could do).
    let t0 = Instant::now();
    let keys: std::collections::HashMap<String, Vec<u8>> = {
        let conn = rusqlite::Connection::open(&path).expect("open key store file");
        let mut st = conn
            .prepare("SELECT id, wrapped FROM data_keys")
            .expect("prepare");
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect()
    };
    let mut index = Index::new(DIM);
    for (u, t, _) in &sealed {
        let wrapped = &keys[&t.key_id.to_string()];
        let key = wrap.unwrap(t.key_id, wrapped).expect("unwrap");
        let v = templates::open(t, &key, p, u, DIM).expect("open");
        index.insert(p, u.clone(), &v);
    }
    let one_select = t0.elapsed();
    assert_eq!(index.len(), n);

    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!(
        "(untimed set-up: {n} identities {:.2} s; seal + wrap {:.2} s = {:.1} µs each; key store bulk load {:.2} s)",
        gen_time.as_secs_f64(),
        seal_time.as_secs_f64(),
        per(seal_time),
        load_time.as_secs_f64()
    );
    println!("| start-up of {n} templates | seconds | µs per template |");
    println!("|---|---|---|");
    println!(
        "| unwrap + open + insert (keys in memory) | {:.3} | {:.2} |",
        in_memory.as_secs_f64(),
        per(in_memory)
    );
    println!(
        "| key store get + unwrap + open + insert (`open_template`, as `build_index`) | {:.3} | {:.2} |",
        with_store.as_secs_f64(),
        per(with_store)
    );
    println!(
        "| all keys in one SELECT, then unwrap + open + insert (possible `build_index`) | {:.3} | {:.2} |",
        one_select.as_secs_f64(),
        per(one_select)
    );
}

fn main() {
    let s = settings();
    println!(
        "# matcher benchmark: sizes {:?}, {} queries ({:.0} % impostors), {} FAR/FRR pairs, start-up {}",
        s.sizes,
        s.queries,
        s.impostors * 100.0,
        s.pairs,
        s.startup
    );
    let levels: Vec<&str> = Kernels::ALL
        .into_iter()
        .filter(|k| k.available())
        .map(Kernels::name)
        .collect();
    println!(
        "matcher kernels: {} (this CPU runs: {}; `Index::new` picks {})",
        s.kernels.name(),
        levels.join(", "),
        Kernels::best().name()
    );
    let max = s.sizes.iter().copied().max().unwrap_or(0);
    let t0 = Instant::now();
    let ids: Vec<Vec<f32>> = (0..max)
        .map(|i| synthetic::identity(&user(i), DIM))
        .collect();
    println!(
        "generated {max} identities with synthetic::identity in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let mut summary = Vec::new();
    for &n in &s.sizes {
        one_size(&s, n, &ids, &mut summary);
    }
    drop(ids);
    far_frr(s.pairs);
    if s.startup > 0 {
        startup(s.startup);
    }
    println!("\n## Summary (medians over rounds)");
    println!("{HEADER}");
    println!("|---|---|---|---|---|---|---|---|");
    for r in summary {
        println!("{r}");
    }
}
