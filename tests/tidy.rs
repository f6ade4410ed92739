//! Tidy checks over the whole workspace's Rust sources (as rust-analyzer's
//! `xtask/src/tidy.rs`): every file opens with a `//!` doc saying what it is;
//! `unsafe` appears only in the one module allowed to use it (the mmap
//! module); no file has more than 1,000 lines outside its tests unless its
//! header says why (a line starting `//! Long file:`).
//!
//! What must stay true: the walk covers every crate of the workspace and
//! skips only build output, virtual environments and node modules.

use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The one file that may use `unsafe` (memory-mapping).
const UNSAFE_ALLOWED: &str = "formats/src/mmap.rs";
const MAX_LINES: usize = 1000;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            if !matches!(
                name.as_str(),
                "target" | "node_modules" | ".git" | ".venv" | "out"
            ) && !name.starts_with('.')
            {
                rust_files(&p, out);
            }
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

fn sources() -> Vec<(String, String)> {
    let mut files = Vec::new();
    rust_files(Path::new(ROOT), &mut files);
    files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(ROOT)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// Lines of code outside `#[cfg(test)]` modules and test files.
fn non_test_lines(rel: &str, text: &str) -> usize {
    if rel.starts_with("tests/") || rel.ends_with("/tests.rs") || rel.contains("/tests/") {
        return 0;
    }
    text.lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .count()
}

/// Whether a line uses `unsafe` as code (not in a comment or a string).
fn uses_unsafe(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or("");
    let mut in_str = false;
    let mut word = String::new();
    for c in code.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_str = !in_str;
            continue;
        }
        if in_str {
            continue;
        }
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            if word == "unsafe" {
                return true;
            }
            word.clear();
        }
    }
    false
}

#[test]
fn the_walk_sees_every_crate() {
    let files = sources();
    for krate in [
        "cli/",
        "passes/",
        "formats/",
        "quant/",
        "eval/",
        "fixtures/",
        "fuzz/",
        "tests/",
    ] {
        assert!(
            files.iter().any(|(rel, _)| rel.starts_with(krate)),
            "no Rust file found under {krate}"
        );
    }
}

#[test]
fn every_file_opens_with_a_module_doc() {
    let bad: Vec<String> = sources()
        .into_iter()
        .filter(|(_, text)| !text.trim_start().starts_with("//!"))
        .map(|(rel, _)| rel)
        .collect();
    assert!(
        bad.is_empty(),
        "files without a `//!` doc saying what they are: {bad:?}"
    );
}

#[test]
fn unsafe_only_in_the_mmap_module() {
    let mut bad = Vec::new();
    for (rel, text) in sources() {
        if rel == UNSAFE_ALLOWED || rel == "tests/tidy.rs" {
            continue;
        }
        for (i, line) in text.lines().enumerate() {
            if uses_unsafe(line) {
                bad.push(format!("{rel}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "`unsafe` outside {UNSAFE_ALLOWED}:\n{}",
        bad.join("\n")
    );
    assert!(uses_unsafe("    unsafe { map(f) }") && !uses_unsafe("// unsafe here"));
    assert!(!uses_unsafe(r#"let s = "unsafe";"#) && !uses_unsafe("unsafe_code = 1"));
}

#[test]
fn no_file_over_a_thousand_lines_without_a_reason() {
    let bad: Vec<String> = sources()
        .into_iter()
        .filter(|(rel, text)| {
            non_test_lines(rel, text) > MAX_LINES
                && !text
                    .lines()
                    .take_while(|l| l.starts_with("//!"))
                    .any(|l| l.starts_with("//! Long file:"))
        })
        .map(|(rel, text)| format!("{rel}: {} lines", non_test_lines(&rel, &text)))
        .collect();
    assert!(
        bad.is_empty(),
        "files over {MAX_LINES} non-test lines without a `//! Long file:` reason: {bad:?}"
    );
}

/// Every text file a user may follow a reference from: the sources, the
/// target profiles, the README and the docs beside the code.
fn referring_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            if !matches!(
                name.as_str(),
                "target" | "node_modules" | ".git" | ".venv" | "out" | "reference"
            ) && !name.starts_with('.')
            {
                referring_files(&p, out);
            }
        } else if [".rs", ".toml", ".md"].iter().any(|e| name.ends_with(e)) {
            out.push(p);
        }
    }
}

#[test]
fn every_reference_a_user_can_follow_exists() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let sections: Vec<&str> = readme
        .lines()
        .filter_map(|l| {
            l.trim_start_matches('#')
                .strip_prefix(' ')
                .filter(|_| l.starts_with('#'))
        })
        .collect();
    let mut files = Vec::new();
    referring_files(Path::new(ROOT), &mut files);
    let mut missing = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let rel = f.strip_prefix(ROOT).unwrap().display().to_string();
        if rel == "tests/tidy.rs" {
            continue; // this check's own examples
        }
        // `reference/NAME.md` / `.csv`: a file in the repository.
        for (i, _) in text.match_indices("reference/") {
            let before = &text[..i];
            if before.ends_with('/') || before.ends_with(|c: char| c.is_alphanumeric() || c == '_')
            {
                continue; // part of a longer path (`fixtures/reference/...`) or word
            }
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || "/_-.".contains(*c))
                .collect();
            let name = name.trim_end_matches('.');
            if (name.ends_with(".md") || name.ends_with(".csv"))
                && !Path::new(ROOT).join(name).is_file()
            {
                missing.push(format!("{rel}: {name}"));
            }
        }
        // `README, "Section"` and `README's "Section"`: a heading of the README.
        for pat in [
            "README, \\\"",
            "README, \"",
            "README's section \\\"",
            "README's section \"",
        ] {
            for (i, _) in text.match_indices(pat) {
                let rest = &text[i + pat.len()..];
                let end = rest.find(['"', '\\']).unwrap_or(rest.len());
                let title = &rest[..end];
                if title.is_empty() || !sections.iter().any(|s| s.trim().starts_with(title)) {
                    missing.push(format!("{rel}: README section \"{title}\""));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "references that lead nowhere: {missing:#?}"
    );
}
