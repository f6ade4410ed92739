//! `kiln ci`: a manifest of three artifacts across two targets and both
//! artifact families; gates passing and failing; a rerun that rebuilds
//! nothing and changes no byte; `--shard 1/2` + `--shard 2/2` + `--merge`
//! equal to one run byte for byte; listings; hostile manifests.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::common::*;

/// Every file under `dir` (relative path -> bytes).
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// The example manifest with absolute paths, written into `dir`, with
/// `edit` applied to its text.
fn manifest(dir: &Path, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo().join("examples/kiln.toml"))
        .unwrap()
        .replace("\"../", &format!("\"{}/", s(&repo())));
    let p = dir.join("kiln.toml");
    std::fs::write(&p, edit(text)).unwrap();
    p
}

fn summary(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn builds_gates_reruns_shards_and_merges() {
    let d = tempfile::tempdir().unwrap();
    let m = manifest(d.path(), |t| t);
    let out = d.path().join("out");
    let r = run(&["ci", s(&m), "-o", s(&out)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // One line per artifact as it finishes, and the table on stdout.
    assert_eq!(r.stderr.matches("] tiny-").count(), 3, "{}", r.stderr);
    assert_eq!(r.stderr.matches(": built in ").count(), 3, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("| tiny-qwen2-h100-vllm | h100-sxm | vllm |"),
        "{}",
        r.stdout
    );
    let s1 = summary(&out);
    assert_eq!(s1["passed"], true);
    let arts = s1["artifacts"].as_array().unwrap();
    assert_eq!(arts.len(), 3);
    assert_eq!(
        listing(&out),
        [
            "summary.json",
            "summary.md",
            "tiny-llama-h100",
            "tiny-llama-m2-max",
            "tiny-qwen2-h100-vllm"
        ]
    );
    // Both artifact families, each the usual build directory.
    assert!(listing(&out.join("tiny-llama-h100")).contains(&"tiny-llama.gguf".to_string()));
    assert!(listing(&out.join("tiny-qwen2-h100-vllm")).contains(&"config.json".to_string()));
    // The compressed-tensors artifact is costed like the GGUF ones: its cost
    // gates compare figures, not "not measured".
    let vllm = arts
        .iter()
        .find(|a| a["name"] == "tiny-qwen2-h100-vllm")
        .unwrap();
    assert_eq!(vllm["cost"]["fits"], true, "{vllm}");
    assert!(vllm["cost"]["decode_tokens_per_second"].as_f64().unwrap() > 50.0);
    assert!(vllm["cost"]["usd_per_million_tokens"].as_f64().unwrap() > 0.0);
    assert!(vllm["plan"]["bits_per_weight"].as_f64().unwrap() > 4.0);
    assert_eq!(vllm["gates"].as_array().unwrap().len(), 4, "{vllm}");
    for a in arts {
        assert_eq!(a["passed"], true, "{a}");
        assert!(!a["gates"].as_array().unwrap().is_empty());
        assert_eq!(a["key"].as_str().unwrap().len(), 64);
    }
    // The two llama artifacts share one measurement: measuring ran once for them.
    let before = tree(&out);

    // A rerun rebuilds nothing, says so, and changes no byte.
    let r = run(&["ci", s(&m), "-o", s(&out)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stderr.matches("up to date, not rebuilt").count(),
        3,
        "{}",
        r.stderr
    );
    assert_eq!(tree(&out), before);

    // Two shards on "two machines", merged: the same bytes as one run.
    let (a, b, merged) = (d.path().join("a"), d.path().join("b"), d.path().join("m"));
    for (shard, o) in [("1/2", &a), ("2/2", &b)] {
        let r = run(&["ci", s(&m), "--shard", shard, "-o", s(o)]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    assert_eq!(summary(&a)["artifacts"].as_array().unwrap().len(), 2);
    assert_eq!(summary(&b)["artifacts"].as_array().unwrap().len(), 1);
    let r = run(&["ci", s(&m), "--merge", s(&a), s(&b), "-o", s(&merged)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(tree(&merged), before);

    // A merge that misses a unit, or merges conflicting results, is refused.
    let r = run(&["ci", s(&m), "--merge", s(&a), "-o", s(&d.path().join("m2"))]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("no merged directory holds tiny-llama-m2-max"),
        "{}",
        r.stderr
    );
    let gguf = b.join("tiny-llama-m2-max").join("tiny-llama.gguf");
    let mut bytes = std::fs::read(&gguf).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&gguf, bytes).unwrap();
    let r = run(&[
        "ci",
        s(&m),
        "--merge",
        s(&a),
        s(&b),
        "-o",
        s(&d.path().join("m3")),
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("do not match the hashes"), "{}", r.stderr);

    // A cache serves another OUT without building.
    let cache = d.path().join("cache");
    let r = run(&[
        "ci",
        s(&m),
        "--only",
        "tiny-llama-h100",
        "--cache",
        s(&cache),
        "-o",
        s(&d.path().join("c1")),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(&[
        "ci",
        s(&m),
        "--only",
        "tiny-llama-h100",
        "--cache",
        s(&cache),
        "-o",
        s(&d.path().join("c2")),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("from the cache, not rebuilt"),
        "{}",
        r.stderr
    );
    assert_eq!(tree(&d.path().join("c1")), tree(&d.path().join("c2")));
}

#[test]
fn a_failing_gate_exits_1_and_the_summary_says_which() {
    let d = tempfile::tempdir().unwrap();
    let m = manifest(d.path(), |t| {
        t.replace("max_kld = 0.05\nmin_top1", "max_kld = 1e-12\nmin_top1")
            .replace("min_decode_tok_s = 50", "min_decode_tok_s = 1e12")
    });
    let out = d.path().join("out");
    let r = run(&[
        "ci",
        s(&m),
        "--only",
        "tiny-llama-h100",
        "--only",
        "tiny-llama-m2-max",
        "-o",
        s(&out),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let last = r.stderr.lines().last().unwrap();
    assert!(
        last.starts_with("error: gates failed: `tiny-llama-h100`: max_kld 1.000e-12, measured "),
        "{last}"
    );
    assert!(
        last.contains("`tiny-llama-m2-max`: min_decode_tok_s 1000000000000, estimated "),
        "{last}"
    );
    let s1 = summary(&out);
    assert_eq!(s1["passed"], false);
    assert_eq!(
        s1["failed"],
        serde_json::json!(["tiny-llama-h100", "tiny-llama-m2-max"])
    );
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(md.contains("## Failed gates"), "{md}");
    assert!(md.contains("**FAIL**"), "{md}");
}

#[test]
fn listings_name_every_unit_with_its_key_and_command() {
    let d = tempfile::tempdir().unwrap();
    let m = manifest(d.path(), |t| t);
    let r = run(&["ci", s(&m), "--list", "-o", "o"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let units = v["units"].as_array().unwrap();
    assert_eq!(units.len(), 3);
    assert_eq!(
        units[0]["command"],
        format!(
            "kiln ci {} --only tiny-llama-h100 -o o/units/tiny-llama-h100",
            s(&m)
        )
    );
    let r = run(&["ci", s(&m), "--list", "--format", "github"]);
    let g: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(g["include"].as_array().unwrap().len(), 3);
    let r = run(&["ci", s(&m), "--list", "--format", "k8s", "--shard", "1/2"]);
    assert!(r.stdout.contains("\"completions\": 2"), "{}", r.stdout);
    assert!(
        r.stdout.contains("--shard $((JOB_COMPLETION_INDEX + 1))/2"),
        "{}",
        r.stdout
    );
    let r = run(&["ci", s(&m), "--list", "--format", "slurm"]);
    assert!(r.stdout.contains("#SBATCH --array=0-2"), "{}", r.stdout);
    let r = run(&["ci", s(&m), "--list", "--format", "gitlab"]);
    assert!(
        r.stdout.contains(
            "KILN_UNIT: [\"tiny-llama-h100\", \"tiny-llama-m2-max\", \"tiny-qwen2-h100-vllm\"]"
        ),
        "{}",
        r.stdout
    );
}

#[test]
fn hostile_manifests_get_one_line_and_exit_2() {
    let d = tempfile::tempdir().unwrap();
    type Edit<'a> = &'a dyn Fn(String) -> String;
    let cases: &[(&str, Edit, &str)] = &[
        (
            "unknown key",
            &|t| t.replace("concurrency = 4\n", "concurrency = 4\ncolour = \"red\"\n"),
            "unknown field `colour`",
        ),
        (
            "unknown target",
            &|t| t.replace("target = \"m2-max\"", "target = \"h1000\""),
            "key `target`: artifact `tiny-llama-m2-max`: unknown target `h1000`",
        ),
        (
            "duplicate names",
            &|t| t.replace("name = \"tiny-llama-m2-max\"", "name = \"tiny-llama-h100\""),
            "artifact `tiny-llama-h100` is named twice",
        ),
        (
            "a gate of the wrong unit",
            &|t| t.replace("min_top1 = 0.8", "min_top1 = 80"),
            "top-1 agreement is a fraction of positions in 0..1 (for 80% write 0.8)",
        ),
        (
            "a gate as text",
            &|t| t.replace("min_decode_tok_s = 50", "min_decode_tok_s = \"50 tok/s\""),
            "invalid type: string \"50 tok/s\", expected f64",
        ),
        (
            "an engine the target lacks",
            &|t| {
                t.replace(
                    "target = \"m2-max\"\nengine = \"llama.cpp\"",
                    "target = \"m2-max\"\nengine = \"vllm\"",
                )
                .replace("max_ppl_ratio = 1.1\n", "")
            },
            "key `engine`",
        ),
        (
            "an engine whose runtime there runs no scheme kiln writes",
            &|t| {
                t.replace(
                    "target = \"h100-sxm\"\nengine = \"vllm\"",
                    "target = \"a100-80g-sxm\"\nengine = \"trt-llm\"",
                )
            },
            "key `engine`: artifact `tiny-qwen2-h100-vllm`: trt-llm on `a100-80g-sxm` runs no compressed-tensors scheme kiln writes",
        ),
        (
            "a perplexity gate on a compressed-tensors artifact",
            &|t| {
                t.replace(
                    "max_kld = 0.05\nmust_fit = true\nmin_decode",
                    "max_ppl_ratio = 1.1\nmust_fit = true\nmin_decode",
                )
            },
            "key `gates.max_ppl_ratio`: is not measured for compressed-tensors artifacts",
        ),
        (
            "a missing model",
            &|t| t.replace("fixtures/tiny-qwen2\"", "fixtures/no-such\""),
            "key `path`: model `tiny-qwen2`",
        ),
        (
            "a $ gate on a target with no price",
            &|t| {
                t.replacen(
                    "target = \"h100-sxm\"\nengine = \"llama.cpp\"",
                    "target = \"rtx-4090\"\nengine = \"llama.cpp\"",
                    1,
                )
            },
            "key `gates.max_usd_per_mtok`: artifact `tiny-llama-h100`: `rtx-4090` has no published price",
        ),
        (
            "a window too short, named by its key",
            &|t| t.replace("ctx = 128", "ctx = 0"),
            "key `ctx`: artifact `tiny-llama-h100`: --ctx must be at least 8 tokens",
        ),
        (
            "two sizes for one file",
            &|t| t.replace("bpw = 4.5\n", "bpw = 4.5\nbudget_gb = 1.0\n"),
            "key `bpw`: artifact `tiny-llama-m2-max`: --bpw and --budget-gb both size the model file",
        ),
        (
            "an FP8 KV cache for llama.cpp",
            &|t| t.replace("objective = \"accuracy\"\n", "objective = \"accuracy\"\nkv_type = \"fp8\"\n"),
            "llama.cpp has no FP8 KV cache",
        ),
    ];
    for (what, edit, want) in cases {
        let m = manifest(d.path(), edit);
        let out = d.path().join("out");
        let r = run(&["ci", s(&m), "-o", s(&out)]);
        assert_eq!(r.code, 2, "{what}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{what}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{what}: {}", r.stderr);
        assert!(
            r.stderr.contains(s(&m)),
            "{what}: names the file: {}",
            r.stderr
        );
        assert!(!out.exists(), "{what}: wrote {out:?}");
    }
    // A unit directory holding a file kiln did not write is refused before
    // any artifact is built: no earlier artifact is left behind.
    let m = manifest(d.path(), |t| t);
    let out = d.path().join("stray");
    std::fs::create_dir_all(out.join("tiny-qwen2-h100-vllm")).unwrap();
    std::fs::write(out.join("tiny-qwen2-h100-vllm/notes.txt"), "mine").unwrap();
    let r = run(&["ci", s(&m), "-o", s(&out)]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let last = r.stderr.lines().last().unwrap();
    assert!(
        last.starts_with("error: artifact `tiny-qwen2-h100-vllm`: ")
            && last.contains("refusing to replace it")
            && !last.contains("--force"),
        "{}",
        r.stderr
    );
    assert_eq!(
        tree(&out).into_keys().collect::<Vec<_>>(),
        vec!["tiny-qwen2-h100-vllm/notes.txt".to_string()]
    );
    // A file kiln did not write is never replaced.
    let m = manifest(d.path(), |t| t);
    let out = d.path().join("theirs");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("summary.json"), "{\"mine\": true}").unwrap();
    let r = run(&["ci", s(&m), "--only", "tiny-llama-h100", "-o", s(&out)]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("is not a kiln ci summary"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(out.join("summary.json")).unwrap(),
        "{\"mine\": true}"
    );
}

#[test]
fn pruning_is_an_artifact_setting_in_its_key() {
    let d = tempfile::tempdir().unwrap();
    let plain = manifest(d.path(), |t| t);
    let keys = |m: &Path| -> BTreeMap<String, String> {
        let r = run(&["ci", s(m), "--list", "-o", "o"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let v: Value = serde_json::from_str(&r.stdout).unwrap();
        v["units"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| {
                (
                    u["name"].as_str().unwrap().to_string(),
                    u["key"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let before = keys(&plain);
    let pruned = manifest(d.path(), |t| {
        t.replace(
            "objective = \"accuracy\"\nbpw = 4.5\n",
            "objective = \"accuracy\"\nbpw = 4.5\nprune = [\"ffn=0.75\", \"layers=auto:1\"]\n",
        )
    });
    let after = keys(&pruned);
    // The setting is in the key of its artifact only; the others keep theirs.
    assert_ne!(before["tiny-llama-m2-max"], after["tiny-llama-m2-max"]);
    assert_eq!(before["tiny-llama-h100"], after["tiny-llama-h100"]);
    assert_eq!(
        before["tiny-qwen2-h100-vllm"],
        after["tiny-qwen2-h100-vllm"]
    );
    // Built: the artifact's manifest records every option weighed.
    let out = d.path().join("out");
    let r = run(&[
        "ci",
        s(&pruned),
        "--only",
        "tiny-llama-m2-max",
        "-o",
        s(&out),
    ]);
    assert!(r.code == 0 || r.code == 1, "{}", r.stderr);
    let built: Value = serde_json::from_slice(
        &std::fs::read(out.join("tiny-llama-m2-max/manifest.json")).unwrap(),
    )
    .unwrap();
    let p = &built["pruning"];
    let specs: Vec<&str> = p["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["spec"].as_str().unwrap())
        .collect();
    assert_eq!(specs, ["none", "ffn=0.75", "layers=auto:1"]);
    let chosen: Vec<&Value> = p["options"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["chosen"] == true)
        .collect();
    assert_eq!(chosen.len(), 1);
    assert_eq!(
        built["accuracy"]["text"]["kld_mean"],
        chosen[0]["measured"]["kld_mean"]
    );
    // Hostile values: one line naming the file, the line and the key.
    for (edit, want) in [
        (
            "prune = \"ffn=2\"\n",
            "key `prune`: artifact `tiny-llama-m2-max`: prune `ffn=2`",
        ),
        ("prune = 3\n", "`prune`: \"none\", \"auto\""),
    ] {
        let m = manifest(d.path(), |t| {
            t.replace(
                "objective = \"accuracy\"\nbpw = 4.5\n",
                &format!("objective = \"accuracy\"\nbpw = 4.5\n{edit}"),
            )
        });
        let r = run(&["ci", s(&m), "--list"]);
        assert_eq!(r.code, 2, "{edit}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{edit}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{edit}: {}", r.stderr);
    }
    let m = manifest(d.path(), |t| {
        t.replace("text = \"", "eval_text = \"").replace(
            "objective = \"accuracy\"\nbpw = 4.5\n",
            "objective = \"accuracy\"\nbpw = 4.5\nprune = \"auto\"\n",
        )
    });
    let r = run(&["ci", s(&m), "--list"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("key `prune`") && r.stderr.contains("`text`"),
        "{}",
        r.stderr
    );
}
