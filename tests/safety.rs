//! The user's files and interrupted runs (README section
//! "Guarantees: your files and interrupted runs"): `kiln build -o` replaces only a kiln artifact and
//! names what a rebuild would delete; `-o` must be a regular file or absent
//! (never a FIFO, device node or link); a directory swap killed half-way is
//! undone by the next run; what a killed run left is removed by the next one
//! (and nothing else is); SIGTERM and SIGHUP clean up as Ctrl-C does; missing
//! parent directories are created by every command, and removed again when
//! the run fails; and the short `kill -9` campaign (tests/kill_campaign.sh).

use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::common::*;

fn build_cmd(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["build", s(&fixture("tiny-llama")), "--target", "m2"]
        .iter()
        .map(|x| x.to_string())
        .collect();
    a.extend(["-o".to_string(), s(out).to_string()]);
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

fn build(out: &Path, extra: &[&str]) -> Run {
    run_cmd(kiln().args(build_cmd(out, extra)))
}

/// Exit 2 and one `error:` line, which is returned.
fn refusal(r: &Run) -> String {
    assert_eq!(r.code, 2, "stderr: {}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, got: {}", r.stderr);
    assert!(lines[0].starts_with("error: "), "{}", r.stderr);
    lines[0].to_string()
}

/// Every file under `dir` (relative path -> bytes; directories as `d/`).
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                walk(root, &p, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The pid of a process that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

fn mkfifo(p: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .unwrap();
    assert!(ok.success());
}

fn is_fifo(p: &Path) -> bool {
    std::fs::symlink_metadata(p)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false)
}

/// Issue 11, finding 1: a directory holding a `manifest.json` that is not
/// kiln's (a web app's) was deleted whole by `kiln build -o`.
#[test]
fn build_replaces_only_a_kiln_artifact() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("app");
    std::fs::create_dir_all(out.join("sub")).unwrap();
    std::fs::write(out.join("manifest.json"), br#"{"name":"my-web-app"}"#).unwrap();
    std::fs::write(out.join("important.txt"), b"keep me").unwrap();
    std::fs::write(out.join("sub/x"), b"x").unwrap();
    let before = tree(&out);
    for extra in [&["--bpw", "4.5"][..], &["--bpw", "4.5", "--force"]] {
        let line = refusal(&build(&out, extra));
        assert!(
            line.contains("app") && line.contains("no kiln manifest.json"),
            "{extra:?}: {line}"
        );
        assert_eq!(tree(&out), before, "{extra:?}: the directory was touched");
        assert_eq!(listing(root.path()), vec!["app"], "{extra:?}");
    }
}

/// Issue 11, finding 1 and issue 12, item 7: a rebuild deleted the files a
/// user had added to the artifact directory, silently.
#[test]
fn a_rebuild_names_what_it_would_delete_and_needs_force() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("art");
    let r = build(&out, &["--bpw", "4.5"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let built = tree(&out);
    std::fs::write(out.join("notes.txt"), b"my notes").unwrap();
    std::fs::create_dir(out.join("runs")).unwrap();
    std::fs::write(out.join("runs/bench.json"), b"{}").unwrap();
    let with_mine = tree(&out);
    let line = refusal(&build(&out, &["--bpw", "6"]));
    assert!(
        line.contains("notes.txt, runs/") && line.contains("--force"),
        "{line}"
    );
    assert_eq!(tree(&out), with_mine, "refused, yet the directory changed");
    assert_eq!(listing(root.path()), vec!["art"]);

    // A file the manifest lists, changed since the build, is not kiln's either.
    std::fs::remove_file(out.join("notes.txt")).unwrap();
    std::fs::remove_dir_all(out.join("runs")).unwrap();
    let gguf = out.join("tiny-llama.gguf");
    let mut edited = std::fs::read(&gguf).unwrap();
    edited.truncate(edited.len() / 2);
    std::fs::write(&gguf, &edited).unwrap();
    let line = refusal(&build(&out, &["--bpw", "6"]));
    assert!(line.contains("tiny-llama.gguf (not the size"), "{line}");
    std::fs::write(&gguf, &built["tiny-llama.gguf"]).unwrap();

    // Nothing unlisted: the rebuild replaces it; --force deletes what is unlisted.
    let r = build(&out, &["--bpw", "6"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_ne!(tree(&out), built);
    std::fs::write(out.join("notes.txt"), b"my notes").unwrap();
    let r = build(&out, &["--bpw", "4.5", "--force"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(tree(&out), built);
    assert_eq!(listing(root.path()), vec!["art"]);
}

/// Issue 11, finding 2: `-o` naming a FIFO (or, as root, a device node) was
/// replaced by a regular file.
#[test]
fn outputs_must_be_regular_files_or_absent() {
    let root = tempfile::tempdir().unwrap();
    let fifo = root.path().join("pipe");
    mkfifo(&fifo);
    let link = root.path().join("link.gguf");
    std::fs::write(root.path().join("real.gguf"), b"real").unwrap();
    std::os::unix::fs::symlink("real.gguf", &link).unwrap();
    // As root, a character device of our own (same numbers as /dev/null).
    let dev = root.path().join("null");
    let have_dev = std::process::Command::new("mknod")
        .args([s(&dev), "c", "1", "3"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|st| st.success());
    let fx = fixture("tiny-llama");
    let text = repo().join("fixtures/text/pride-and-prejudice-ch1-17.txt");
    let mut cases: Vec<(PathBuf, &str)> =
        vec![(fifo.clone(), "FIFO"), (link.clone(), "symbolic link")];
    if have_dev {
        cases.push((dev.clone(), "character device"));
    }
    for (out, kind) in &cases {
        let convert = run(&["convert", s(&fx), "-t", "q8_0", "-o", s(out)]);
        let imatrix = run(&[
            "imatrix",
            s(&fx),
            "--text",
            s(&text),
            "--chunks",
            "1",
            "-o",
            s(out),
        ]);
        for (what, r) in [("convert", convert), ("imatrix", imatrix)] {
            let line = refusal(&r);
            assert!(
                line.contains(s(out)) && line.contains(kind) && line.contains("not a regular file"),
                "{what} -o {kind}: {line}"
            );
        }
        let line = refusal(&build(out, &["--bpw", "4.5"]));
        assert!(line.contains(kind), "build -o {kind}: {line}");
    }
    assert!(is_fifo(&fifo), "the FIFO was replaced");
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("real.gguf"));
    assert_eq!(
        std::fs::read(root.path().join("real.gguf")).unwrap(),
        b"real"
    );
    if have_dev {
        assert!(std::fs::symlink_metadata(&dev)
            .unwrap()
            .file_type()
            .is_char_device());
    }
    let mut want = vec!["link.gguf", "pipe", "real.gguf"];
    if have_dev {
        want.insert(1, "null");
    }
    assert_eq!(listing(root.path()), want);
}

/// Issue 11, finding 3: a build swap killed between its two renames (where
/// the OS has no exchange rename, or as kiln did before it used one) left
/// OUTDIR absent, the old build in `*.kiln-old` and the new one in
/// `*.kiln-tmp`, forever. The next run puts the old build back and removes
/// the rest, even a run that is then refused.
#[test]
fn a_swap_killed_between_its_renames_is_undone_by_the_next_run() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("art");
    let r = build(&out, &["--bpw", "4.5"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let old = tree(&out);
    let pid = dead_pid();
    let aside = root.path().join(format!(".art.{pid}.AbCd12.kiln-old"));
    std::fs::rename(&out, &aside).unwrap();
    let staged = root.path().join(format!(".art.{pid}.AbCd12.kiln-tmp"));
    std::fs::create_dir(&staged).unwrap();
    std::fs::write(staged.join("manifest.json"), b"{}").unwrap();
    let r = build(&out, &["--bpw", "4.5", "--engine", "vllm"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert!(
        lines.len() == 3
            && lines[0].starts_with(&format!("note: restored {}", s(&out)))
            && lines[1].starts_with("note: removed")
            && lines[2].contains("--engine vllm"),
        "{}",
        r.stderr
    );
    assert_eq!(listing(root.path()), vec!["art"]);
    assert_eq!(tree(&out), old, "the old build is back, whole");
}

/// Issue 11, finding 4: temp files of a killed run stayed forever. The next
/// run removes those of processes that are gone, and nothing else: not a
/// live process's, not a user's file that merely looks alike.
#[test]
fn leftovers_of_dead_runs_are_removed_and_nothing_else() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let pid = dead_pid();
    let dead_file = format!(".m.gguf.{pid}.AbCd12.kiln-tmp");
    let dead_dir = format!(".art.{pid}.EfGh34.kiln-tmp");
    std::fs::write(dir.join(&dead_file), vec![0u8; 4096]).unwrap();
    std::fs::create_dir(dir.join(&dead_dir)).unwrap();
    std::fs::write(dir.join(&dead_dir).join("art.gguf"), b"partial").unwrap();
    let keep = [
        // This test process is alive: its temp file is in use.
        format!(".m.gguf.{}.IjKl56.kiln-tmp", std::process::id()),
        // Names kiln does not give.
        ".m.gguf.AbCd12.kiln-tmp".to_string(),
        "notes.kiln-tmp".to_string(),
        format!("m.gguf.{pid}.AbCd12.kiln-tmp"),
        "notes.txt".to_string(),
    ];
    for k in &keep {
        std::fs::write(dir.join(k), b"mine").unwrap();
    }
    let out = dir.join("m.gguf");
    let r = run(&[
        "convert",
        s(&fixture("tiny-llama")),
        "-t",
        "q8_0",
        "-o",
        s(&out),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("removed {}", s(&dir.join(&dead_file)))),
        "{}",
        r.stderr
    );
    let mut want: Vec<String> = keep.to_vec();
    want.push("m.gguf".into());
    want.sort();
    assert_eq!(listing(dir), want);
}

fn large_model(dir: &Path) -> PathBuf {
    let p = dir.join("large");
    let spec = fixtures::plan_large(300 << 20, fixtures::Dtype::F32);
    fixtures::write_large(&p, &spec, 2 << 30).unwrap();
    p
}

/// Issue 11, finding 4: SIGTERM and SIGHUP killed kiln outright, leaving its
/// temp file; they now stop it as Ctrl-C does, exiting 128 + N.
#[test]
fn sigterm_and_sighup_clean_up_like_ctrl_c() {
    let d = tempfile::tempdir().unwrap();
    let model = large_model(d.path());
    for (sig, code) in [("TERM", 143), ("HUP", 129), ("INT", 130)] {
        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("big.gguf");
        let child = kiln()
            .env("RAYON_NUM_THREADS", "1")
            .args(["convert", s(&model), "-t", "q4_0", "-o", s(&target), "-q"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        while listing(out.path()).is_empty() && t0.elapsed().as_secs() < 60 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let started = listing(out.path());
        std::process::Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .unwrap();
        let r = child.wait_with_output().unwrap();
        assert!(
            started.iter().all(|f| f.ends_with(".kiln-tmp")),
            "{started:?}"
        );
        if r.status.code() == Some(0) {
            // Finished before the signal landed: the file must be complete.
            assert!(target.exists());
            continue;
        }
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(code), "SIG{sig}: {stderr}");
        assert!(stderr.contains("interrupted"), "SIG{sig}: {stderr}");
        assert!(
            listing(out.path()).is_empty(),
            "SIG{sig} left behind: {:?}",
            listing(out.path())
        );
    }
}

/// Issue 12, item 7: `build` created missing parent directories while
/// `convert` refused them. One rule now: created, by every command, once
/// every check has passed; removed again when the run fails.
#[test]
fn missing_parents_are_created_and_removed_on_failure() {
    let root = tempfile::tempdir().unwrap();
    let fx = fixture("tiny-llama");
    let out = root.path().join("a/b/m.gguf");
    let r = run(&["convert", s(&fx), "-t", "q8_0", "-o", s(&out)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(out.is_file());
    let im = root.path().join("c/d/imatrix.gguf");
    let text = repo().join("fixtures/text/pride-and-prejudice-ch1-17.txt");
    let r = run(&[
        "imatrix",
        s(&fx),
        "--text",
        s(&text),
        "--chunks",
        "1",
        "-o",
        s(&im),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(im.is_file());

    // A conversion that fails while writing leaves no directory behind.
    let mut t = mini_tensors();
    let bad = t
        .iter_mut()
        .find(|t| t.name == "model.layers.0.mlp.up_proj.weight")
        .unwrap();
    bad.data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let d = tempfile::tempdir().unwrap();
    write_mini(d.path(), &t, |_| {});
    let root = tempfile::tempdir().unwrap();
    let r = run(&[
        "convert",
        s(d.path()),
        "-t",
        "q8_0",
        "-o",
        s(&root.path().join("x/y/m.gguf")),
    ]);
    let line = refusal(&r);
    assert!(line.contains("non-finite"), "{line}");
    assert!(
        listing(root.path()).is_empty(),
        "{:?}",
        listing(root.path())
    );
    // Under a file, nothing can be created: refused before any work.
    std::fs::write(root.path().join("f"), b"x").unwrap();
    let line = refusal(&run(&[
        "convert",
        s(&fx),
        "-t",
        "q8_0",
        "-o",
        s(&root.path().join("f/m.gguf")),
    ]));
    assert!(line.contains("is not a directory"), "{line}");
}

/// Issue 11, "Done when": the `kill -9` campaign, short (5 kills during
/// convert, 5 during build; the full 20 + 20 is `bash tests/kill_campaign.sh`).
#[test]
fn kill_campaign_short() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("model");
    let spec = fixtures::plan_large(70_000_000, fixtures::Dtype::F32);
    fixtures::write_large(&model, &spec, 2 << 30).unwrap();
    let out = std::process::Command::new("bash")
        .arg(repo().join("tests/kill_campaign.sh"))
        .args(["5", s(&model)])
        .env("KILN", env!("CARGO_BIN_EXE_kiln"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("kill_campaign: ok"), "{stdout}");
}
