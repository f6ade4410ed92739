//! The fuzz harness in CI: a fixed-seed run of 20,000 cases of every input
//! kind must find no panic, abort, out-of-memory, hang, slow case or broken
//! error message; and the harness must tell each of those apart (a
//! self-test kind produces one of each), so a clean run means something.
//!
//! `KILN_FUZZ_CASES` overrides the case count for a quick local run. The
//! fixed-seed run's summary and reproducers stay in `target/tmp/fuzz-ci/`.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn run(out: &Path, args: &[&str]) -> (i32, String, Value) {
    let scratch = out.join("scratch");
    let o = Command::new(env!("CARGO_BIN_EXE_kiln-fuzz"))
        .arg("run")
        .args(args)
        .arg("--out")
        .arg(out)
        .arg("--scratch")
        .arg(&scratch)
        .arg("--quiet")
        .output()
        .expect("kiln-fuzz runs");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr);
    let summary = std::fs::read(out.join("summary.json"))
        .unwrap_or_else(|e| panic!("no summary.json ({e}); stdout: {stdout}; stderr: {stderr}"));
    let leftover: Vec<_> = std::fs::read_dir(&scratch)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftover.is_empty(), "scratch not cleaned: {leftover:?}");
    (
        o.status.code().unwrap_or(-1),
        stdout,
        serde_json::from_slice(&summary).expect("summary.json is JSON"),
    )
}

#[test]
fn every_class_of_finding_is_told_apart() {
    let out = tempfile::tempdir().unwrap();
    let (code, stdout, s) = run(
        out.path(),
        &[
            "--kinds",
            "self-test",
            "--cases",
            "7",
            "--jobs",
            "2",
            "--chunk",
            "3",
            "--mem-mib",
            "256",
            "--slow-ms",
            "1500",
            "--hang-s",
            "4",
        ],
    );
    assert_eq!(code, 1, "findings exit 1: {stdout}");
    let counts = &s["kinds"]["self-test"]["counts"];
    for class in ["ok", "refused", "panic", "abort", "oom", "hang", "slow"] {
        assert_eq!(counts[class], 1, "{class}: {counts} {stdout}");
    }
    assert_eq!(s["findings"], 5, "{stdout}");
    let list = s["list"].as_array().unwrap();
    let of = |class: &str| {
        list.iter()
            .find(|f| f["class"] == class)
            .unwrap_or_else(|| panic!("no {class} in {list:?}"))
    };
    assert!(of("panic")["message"]
        .as_str()
        .unwrap()
        .contains("self-test: a panic at fuzz/src/exec.rs"));
    assert!(of("oom")["message"]
        .as_str()
        .unwrap()
        .contains("memory allocation of 68719476736 bytes failed"));
    assert_eq!(of("hang")["index"], 5);
    // Each finding has a reproducer naming the command that replays it.
    for f in list {
        let dir = Path::new(f["reproducer"].as_str().unwrap());
        let readme = std::fs::read_to_string(dir.join("README.txt")).unwrap();
        assert!(
            readme.contains(&format!(
                "kiln-fuzz case --kind self-test --seed 1 --index {}",
                f["index"]
            )),
            "{readme}"
        );
    }
}

#[test]
fn fixed_seed_run_finds_nothing() {
    let cases = std::env::var("KILN_FUZZ_CASES").unwrap_or_else(|_| "20000".into());
    // Kept after the test (under target/tmp), so a failure's reproducers can be read.
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-ci");
    let _ = std::fs::remove_dir_all(&out);
    let (code, stdout, s) = run(
        &out,
        &[
            "--cases", &cases, "--seed", "1", "--jobs", "2", "--keep", "3",
        ],
    );
    let kinds = s["kinds"].as_object().unwrap();
    assert_eq!(kinds.len(), 10, "every input kind runs");
    for (kind, k) in kinds {
        let n: u64 = k["counts"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(n.to_string(), cases, "{kind}: every case has an outcome");
    }
    assert_eq!(s["findings"], 0, "findings:\n{stdout}");
    assert_eq!(code, 0, "{stdout}");
}
