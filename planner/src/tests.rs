//! Unit tests of the planner on the committed fixture (fixtures/tiny-llama):
//! budgets and the device search, the solve, the recipe comparison and the
//! manifest's round trip. Measurements use a small sample so each test runs
//! in seconds.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use passes::cost::{find_builtin, Engine, Target, Workload};

use crate::compare::{comparison, plan_row, COMPARED};
use crate::manifest::{self, Manifest, SCHEMA_VERSION};
use crate::options::{self, Objective, PlanOptions};
use crate::progress::Silent;
use crate::serving;
use crate::setup::{setup, Setup};
use crate::solve::{budget, solve, Sizing};
use crate::{BuildOptions, Error};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny-llama")
}

fn opts(f: impl FnOnce(&mut PlanOptions)) -> PlanOptions {
    let mut o = PlanOptions {
        sample: 1 << 14,
        ..PlanOptions::default()
    };
    f(&mut o);
    o
}

fn measured(o: &PlanOptions) -> Setup {
    setup(&fixture(), o, &Silent, &AtomicBool::new(false)).expect("the fixture plans")
}

struct Env {
    target: Target,
    workload: Workload,
}

fn env(id: &str, o: &PlanOptions) -> Env {
    Env {
        target: find_builtin(id).unwrap(),
        workload: options::workload(o, 0).unwrap(),
    }
}

fn sizing<'a>(o: &'a PlanOptions, e: &'a Env) -> Sizing<'a> {
    Sizing {
        options: o,
        target: &e.target,
        engine: Engine::LlamaCpp,
        workload: &e.workload,
    }
}

/// Equal JSON, floats within the last bit or two (serde_json's default
/// parser may round the last digit of a long decimal the other way).
fn same_json(a: &serde_json::Value, b: &serde_json::Value, at: &str) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(
                x.keys().collect::<Vec<_>>(),
                y.keys().collect::<Vec<_>>(),
                "keys at {at}"
            );
            for (k, v) in x {
                same_json(v, &y[k], &format!("{at}.{k}"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "length at {at}");
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                same_json(v, w, &format!("{at}[{i}]"));
            }
        }
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-14 * x.abs().max(y.abs()),
                "{x} != {y} at {at}"
            );
        }
        _ => assert_eq!(a, b, "at {at}"),
    }
}

#[test]
fn budgets_come_from_bpw_gb_or_the_target_memory() {
    let o = opts(|o| o.bpw = Some(4.5));
    let s = measured(&o);
    let e = env("m2", &o);
    let params = s.params();
    let b = budget(&s, &sizing(&o, &e), 1).unwrap();
    assert_eq!(b.file_bytes, (4.5 * params as f64 / 8.0) as u64);
    assert_eq!(b.tensor_bytes, b.file_bytes - s.overhead_bytes);
    assert!(b.from.starts_with("--bpw 4.5"));
    assert!(b.memory.is_none());

    let o = opts(|o| o.budget_gb = Some(0.001));
    let b2 = budget(&s, &sizing(&o, &e), 2).unwrap();
    assert_eq!(b2.file_bytes, 2_000_000);
    assert_eq!(b2.tensor_bytes, 2_000_000 - 2 * s.overhead_bytes);
    assert_eq!(b2.from, "2 devices x --budget-gb 0.001");

    let o = opts(|_| {});
    let b3 = budget(&s, &sizing(&o, &e), 1).unwrap();
    let mb = b3.memory.expect("m2 publishes its memory");
    assert_eq!(b3.file_bytes, mb.weights);
    assert!(b3.from.starts_with("1 x m2: usable"));
}

#[test]
fn solve_fits_the_budget_and_shards_only_when_needed() {
    let o = opts(|o| o.bpw = Some(4.5));
    let s = measured(&o);
    let e = env("m2", &o);
    let c = solve(&s, &sizing(&o, &e), Objective::Accuracy, None).unwrap();
    assert_eq!(c.budget.devices, 1);
    assert!(c.allocation.bytes <= c.budget.tensor_bytes);
    assert!(
        s.bpw(c.allocation.bytes) > 4.0,
        "{}",
        s.bpw(c.allocation.bytes)
    );
    assert!(c.ceiling.is_none());

    // The README's sharded build: one device would hold under 4 bits per weight.
    let o = opts(|o| {
        o.budget_gb = Some(0.0007);
        o.min_bpw = 4.0;
    });
    let c = solve(&s, &sizing(&o, &e), Objective::Accuracy, None).unwrap();
    assert_eq!(c.budget.devices, 2);
    assert!(c.allocation.bytes <= c.budget.tensor_bytes);

    let o = opts(|o| o.bpw = Some(0.5));
    match solve(&s, &sizing(&o, &e), Objective::Accuracy, None) {
        Err(Error::NoPlan(why)) => assert!(why.contains("smallest allocation"), "{why}"),
        other => panic!("expected no plan, got {:?}", other.map(|c| c.budget)),
    }

    // The cost objective stays within its ceiling.
    let o = opts(|_| {});
    let c = solve(&s, &sizing(&o, &e), Objective::Cost, Some(0.2)).unwrap();
    assert!(c.allocation.error <= 0.2);
    assert_eq!(c.ceiling.as_ref().map(|x| x.0), Some(0.2));
}

#[test]
fn comparison_rows_are_the_recipes_in_order_scored_alike() {
    let o = opts(|o| o.bpw = Some(4.5));
    let s = measured(&o);
    let e = env("m2", &o);
    let rows = comparison(&s, &sizing(&o, &e)).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, COMPARED);
    for w in rows.windows(2) {
        if w[0].name.starts_with("Q4_K") && w[1].name.starts_with("Q4_K") {
            assert!(w[0].bytes < w[1].bytes);
        }
    }
    let q2 = &rows[0];
    let q8 = rows.last().unwrap();
    assert!(q2.bytes < q8.bytes);
    assert!(q2.error.unwrap() > q8.error.unwrap());
    assert!(q2.weight_nsr.unwrap() > q8.weight_nsr.unwrap());
    assert!(rows
        .iter()
        .all(|r| r.fits == Some(true) && r.devices == Some(1)));
}

#[test]
fn manifest_round_trips_and_names_its_schema() {
    assert_eq!(SCHEMA_VERSION, "kiln.artifact/2");
    let o = opts(|o| o.bpw = Some(4.5));
    let s = measured(&o);
    let e = env("m2", &o);
    let sz = sizing(&o, &e);
    let c = solve(&s, &sz, Objective::Accuracy, None).unwrap();
    let types = crate::solve::types_of_allocation(&s, &c.allocation);
    let planned = crate::solve::typed(&s, &types).unwrap();
    let est = serving::cost(
        &planned,
        &s.arch,
        &e.target,
        Engine::LlamaCpp,
        &e.workload,
        1,
    )
    .unwrap();
    let mut rows = comparison(&s, &sz).unwrap();
    rows.insert(0, plan_row(&s, &c, &est, None));
    let b = BuildOptions {
        model: fixture(),
        output: PathBuf::from("out"),
        force: false,
        name: None,
        objective: Objective::Accuracy,
        max_error: None,
        kiln_version: "0.0.0".into(),
        gptq: None,
    };
    let file = manifest::File {
        path: Some("tiny-llama.gguf".into()),
        sha256: "00".repeat(32),
        bytes: 1,
    };
    let m = crate::build::manifest_of(
        &s,
        &sz,
        &b,
        &c,
        &est,
        &rows,
        manifest::Source {
            model: Some("tiny-llama".into()),
            sha256: "11".repeat(32),
            files: vec![file.clone()],
            parameters: s.params(),
            architecture: Some("llama".into()),
        },
        vec![file],
        manifest::Size {
            predicted_bytes: 1,
            actual_bytes: 1,
        },
        Vec::new(),
    );
    assert_eq!(m.schema, SCHEMA_VERSION);
    assert_eq!(m.tensors.len(), s.options.len());
    assert_eq!(m.comparison.len(), rows.len());
    let text = m.to_json().unwrap();
    assert!(text.starts_with("{\n  \"schema\": \"kiln.artifact/2\",\n  \"kiln_version\""));
    // null for what was not measured.
    assert!(text.contains("\"text\": null"));
    let back = Manifest::from_json(&text).unwrap();
    assert_eq!(back.tensors.len(), m.tensors.len());
    assert_eq!(back.plan.by_type, m.plan.by_type);
    same_json(
        &serde_json::to_value(&back).unwrap(),
        &serde_json::to_value(&m).unwrap(),
        "",
    );
    let other = text.replace("kiln.artifact/2", "kiln.artifact/1");
    assert!(Manifest::from_json(&other).is_err());
    // The report is made from the manifest and the rows.
    let report = crate::report::report(&m, &rows);
    assert!(report.starts_with("# kiln build: tiny-llama for m2"));
    assert!(report.contains("| kiln plan |"));
}

#[test]
fn priors_split_each_role_evenly_and_excluded_types_are_refused() {
    let o = opts(|_| {});
    let s = measured(&o);
    assert!(s.groups.is_empty());
    assert!(s.sensitivity_source.starts_with("defaults by role"));
    let total: f64 = s
        .measured
        .iter()
        .filter(|m| m.name.ends_with("ffn_down.weight"))
        .map(|m| s.sensitivity[&m.name])
        .sum();
    assert!((total - 6.0).abs() < 1e-9, "{total}");
    let all = crate::CANDIDATES.to_vec();
    match crate::setup::problem(&s.opened.loaded.model, &s.measured, &s.sensitivity, &all) {
        Err(Error::Input(why)) => assert!(why.contains("--exclude-type"), "{why}"),
        other => panic!("expected a refusal, got {}", other.is_ok()),
    }
}

#[test]
fn the_built_plan_is_the_best_measured_candidate() {
    let text = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/text/pride-and-prejudice-ch1-17.txt");
    let o = opts(|o| {
        o.text = Some(text.clone());
        o.eval_text = Some(text);
        o.ctx = 64;
        o.chunks = 2;
        o.probe_chunks = 1;
        o.eval_chunks = 2;
        o.bpw = Some(4.5);
    });
    let s = measured(&o);
    assert!(!s.eval_windows.is_empty());
    let e = env("m2", &o);
    let sz = sizing(&o, &e);
    let mut chosen = solve(&s, &sz, Objective::Accuracy, None).unwrap();
    let solver_bytes = chosen.allocation.bytes;
    let mut measurer = crate::Measurer::new(&s).unwrap();
    let cands = crate::choose::by_measurement(
        &s,
        &sz,
        &mut chosen,
        &mut measurer,
        &Silent,
        &AtomicBool::new(false),
    )
    .unwrap();
    // The solver's plan and at least one alternative, all within its size.
    assert!(cands.len() >= 2, "{} candidates", cands.len());
    assert_eq!(cands.iter().filter(|c| c.picked).count(), 1);
    let best = cands.iter().find(|c| c.picked).unwrap();
    for c in &cands {
        assert!(c.bytes <= solver_bytes);
        assert!(best.measured.kld <= c.measured.kld);
        assert!(c.predicted > 0.0 && c.measured.kld > 0.0);
    }
    // The built allocation is the picked one's: measuring it again (cached)
    // gives the picked candidate's numbers.
    let types = crate::solve::types_of_allocation(&s, &chosen.allocation);
    let again = measurer
        .measure(&types, &|_| {}, &AtomicBool::new(false))
        .unwrap()
        .unwrap();
    assert_eq!(again.kld, best.measured.kld);
    let section = crate::choose::report_section(&cands);
    assert!(section.contains("| search: probed sensitivities |"));
    assert!(section.contains("measured / predicted"));
}
