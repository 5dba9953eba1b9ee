//! House rules, checked on the source tree (ARCHITECTURE.md).
//!
//! - The core is pure: no file under `src/core/` names an IO crate, reads a clock or draws
//!   randomness (rules 1 and 2).
//! - Every module starts with a `//!` paragraph (rule 9), and the crate doc's Layout section
//!   names every top-level module.
//! - The config is never `unwrap()`ped outside its tests (rule 10).
//!
//! These are text checks, deliberately simple: comment lines are skipped, code is not parsed.

use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn rel(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path)
        .display()
        .to_string()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What the pure core must never name: IO crates, clocks, randomness.
const FORBIDDEN_IN_CORE: &[&str] = &[
    "tokio",
    "axum",
    "reqwest",
    "rusqlite",
    "rumqtt",
    "tokio_modbus",
    "std::fs",
    "std::net",
    "Utc::now",
    "Local::now",
    "Instant::now",
    "SystemTime::now",
    "thread_rng",
    "rand::",
    "getrandom",
];

/// The forbidden names on one line of code (none on a comment line).
fn forbidden_on(line: &str) -> Vec<&'static str> {
    if line.trim_start().starts_with("//") {
        return vec![];
    }
    FORBIDDEN_IN_CORE
        .iter()
        .copied()
        .filter(|w| line.contains(w))
        .collect()
}

#[test]
fn the_scanner_sees_what_it_must() {
    assert_eq!(forbidden_on("    let now = Utc::now();"), ["Utc::now"]);
    assert_eq!(forbidden_on("use tokio::sync::mpsc;"), ["tokio"]);
    assert_eq!(
        forbidden_on("use tokio_modbus::prelude::*;"),
        ["tokio", "tokio_modbus"]
    );
    assert_eq!(forbidden_on("let x = rand::random::<u8>();"), ["rand::"]);
    assert!(forbidden_on("    // no Utc::now() here").is_empty());
    assert!(forbidden_on("//! nor tokio here").is_empty());
    assert!(forbidden_on("/// nor std::fs").is_empty());
    assert!(forbidden_on("let now = clock.now();").is_empty());
}

#[test]
fn core_performs_no_io_and_reads_no_clock() {
    let files = rust_files(&src().join("core"));
    assert!(files.len() > 3, "src/core has no files? {files:?}");
    let mut found = Vec::new();
    for file in &files {
        for (i, line) in read(file).lines().enumerate() {
            for word in forbidden_on(line) {
                found.push(format!(
                    "{}:{}: `{word}` in `{}`",
                    rel(file),
                    i + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "the core must stay pure (ARCHITECTURE.md rules 1-2):\n{}",
        found.join("\n")
    );
}

#[test]
fn every_module_starts_with_a_doc_paragraph() {
    let mut bare = Vec::new();
    for file in rust_files(&src()) {
        let text = read(&file);
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        if !first.starts_with("//!") {
            bare.push(format!("{}: starts with `{first}`", rel(&file)));
        }
    }
    assert!(
        bare.is_empty(),
        "every module starts with a `//!` paragraph (rule 9):\n{}",
        bare.join("\n")
    );
}

/// `pub mod x;` / `mod x;` declarations at the top level of `src/lib.rs`.
fn declared_modules(lib: &str) -> Vec<String> {
    lib.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("//"))
        .filter_map(|l| {
            let rest = l
                .strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("pub(crate) mod "))
                .or_else(|| l.strip_prefix("mod "))?;
            let name = rest.strip_suffix(';')?.trim();
            Some(name.to_string())
        })
        .collect()
}

/// The `//!` lines of `## Layout` up to the next heading.
fn layout_section(lib: &str) -> String {
    let doc: Vec<&str> = lib
        .lines()
        .map_while(|l| l.trim_start().strip_prefix("//!"))
        .collect();
    let start = doc
        .iter()
        .position(|l| l.trim().trim_start_matches('#').trim() == "Layout" && l.contains('#'))
        .expect("src/lib.rs crate doc has a `## Layout` section");
    doc[start + 1..]
        .iter()
        .take_while(|l| !l.trim_start().starts_with('#'))
        .copied()
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn crate_doc_layout_names_every_module() {
    let lib = read(&src().join("lib.rs"));
    let modules = declared_modules(&lib);
    assert!(!modules.is_empty(), "src/lib.rs declares no modules?");
    let layout = layout_section(&lib);
    let missing: Vec<&String> = modules
        .iter()
        .filter(|m| {
            // Named as a link or code: [`core`], `core`, [`core::x`] ...
            !(layout.contains(&format!("`{m}`")) || layout.contains(&format!("`{m}::")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the Layout section of src/lib.rs does not name: {missing:?}\n---\n{layout}"
    );
}

#[test]
fn layout_helpers_work() {
    let lib = "//! # x\n//!\n//! ## Layout\n//! - [`a`] — one\n//! - `b::c` — two\n//!\n\
               //! ## Other\n//! - `z`\n\npub mod a;\nmod b;\n// pub mod commented;\npub mod z;\n";
    assert_eq!(declared_modules(lib), ["a", "b", "z"]);
    let layout = layout_section(lib);
    assert!(layout.contains("[`a`]") && layout.contains("`b::c`"));
    assert!(
        !layout.contains("`z`"),
        "the section stops at the next heading"
    );
}

#[test]
fn config_is_never_unwrapped_outside_tests() {
    let path = src().join("config.rs");
    let text = read(&path);
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        if line.trim_start().starts_with("//") {
            continue;
        }
        if line.contains(".unwrap()") {
            found.push(format!("{}:{}: {}", rel(&path), i + 1, line.trim()));
        }
    }
    assert!(
        found.is_empty(),
        "never unwrap() a config (rule 10):\n{}",
        found.join("\n")
    );
}
