//! The streaming runner against the whole-model pass on every fixture: the
//! same per-token NLL, KL divergence and top-1 (block by block, the head
//! decoded in vocabulary chunks), the same importance matrix, probes that
//! resume from a kept block equal to a full run, and the same numbers for
//! any thread count.
//!
//! Tolerances: the blocks run the same operations on the same tensors as
//! the whole-model pass, so streams agree exactly; the head's logits come
//! from a matmul of another shape and its softmax statistics are
//! accumulated online over chunks, so per-token NLL may differ by float
//! rounding: |d NLL| <= 2e-5 nats, |d KLD| <= 1e-6 + 1e-3 KLD, top-1 equal
//! except where the two best logits of the original are within 1e-4.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use eval::imatrix::Collector;
use eval::text::{TextReport, Windows};
use eval::{Opened, Roundtrip, Source, Transformer};
use quant::GgmlType;

const FIXTURES: [&str; 10] = [
    "tiny-llama",
    "tiny-llama-spm",
    "tiny-llama31",
    "tiny-qwen2",
    "tiny-qwen3",
    "tiny-phi",
    "tiny-gemma2",
    "tiny-gemma3",
    "tiny-mixtral",
    "tiny-qwen2-moe",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn open(name: &str) -> Opened {
    eval::open(&root().join("fixtures").join(name), &Default::default()).unwrap()
}

fn windows(m: &Opened, ctx: usize, n: usize) -> Vec<Vec<u32>> {
    let text = std::fs::read_to_string(root().join("fixtures/text/pride-and-prejudice-ch1-17.txt"))
        .unwrap();
    let tok = eval::Tokenizer::from_metadata(&formats::gguf::key_values(&m.loaded.model)).unwrap();
    let mut ids = Vec::new();
    if tok.add_bos {
        ids.extend(tok.bos);
    }
    ids.extend(tok.encode(&text[..20_000]).unwrap());
    eval::text::windows(
        &ids,
        Windows {
            ctx,
            max_chunks: Some(n),
        },
        tok.bos.filter(|_| tok.add_bos),
    )
    .unwrap()
}

/// Every 2-D-or-more weight whose rows Q4_0 divides, at Q4_0.
fn candidate_types(m: &Opened) -> HashMap<String, GgmlType> {
    m.loaded
        .model
        .tensors
        .iter()
        .filter(|t| t.shape.len() >= 2 && GgmlType::Q4_0.row_bytes(t.row_len()).is_some())
        .map(|t| (t.name.clone(), GgmlType::Q4_0))
        .collect()
}

fn close(name: &str, whole: &TextReport, streamed: &TextReport) {
    assert_eq!(whole.per_token.len(), streamed.per_token.len(), "{name}");
    for (a, b) in whole.per_token.iter().zip(&streamed.per_token) {
        assert_eq!(
            (a.chunk, a.pos, a.target),
            (b.chunk, b.pos, b.target),
            "{name}"
        );
        assert!(
            (a.nll_original - b.nll_original).abs() <= 2e-5,
            "{name}: nll {} vs {}",
            a.nll_original,
            b.nll_original
        );
        let (ca, cb) = (a.nll_candidate.unwrap(), b.nll_candidate.unwrap());
        assert!(
            (ca - cb).abs() <= 2e-5,
            "{name}: candidate nll {ca} vs {cb}"
        );
        let (ka, kb) = (a.kld.unwrap(), b.kld.unwrap());
        assert!(
            (ka - kb).abs() <= 1e-6 + 1e-3 * ka,
            "{name}: kld {ka} vs {kb} at {}:{}",
            a.chunk,
            a.pos
        );
        assert_eq!(a.top1_original, b.top1_original, "{name}");
        assert_eq!(a.top1_candidate, b.top1_candidate, "{name}");
    }
}

#[test]
fn block_by_block_equals_the_whole_model_on_every_fixture() {
    let cancel = AtomicBool::new(false);
    let none = BTreeMap::new();
    for name in FIXTURES {
        let m = open(name);
        let w = windows(&m, 32, 3);
        let rt = Roundtrip {
            base: &m,
            types: candidate_types(&m),
            importance: &none,
        };
        rt.check().unwrap();
        let whole = eval::text::evaluate(
            &Transformer::new(&m).unwrap(),
            Some(&Transformer::from_source(&rt).unwrap()),
            &w,
            &|_| {},
            &cancel,
        )
        .unwrap();
        assert!(
            whole.kld.unwrap().mean > 0.0,
            "{name}: the candidate differs"
        );
        // The default head chunking (one chunk at this vocabulary), and a
        // chunk that does not divide the vocabulary (online accumulation).
        for chunk in [None, Some(97)] {
            let s = eval::stream::evaluate_in_chunks(&m, Some(&rt), &w, chunk, &|_| {}, &cancel)
                .unwrap();
            close(name, &whole, &s);
        }
    }
}

#[test]
fn streamed_imatrix_equals_the_whole_model_one() {
    let cancel = AtomicBool::new(false);
    for name in FIXTURES {
        let m = open(name);
        let w = windows(&m, 32, 2);
        let mut a = Collector::new(true);
        eval::text::observe(
            &Transformer::new(&m).unwrap(),
            &w,
            &mut a,
            true,
            &|_| {},
            &cancel,
        )
        .unwrap();
        let mut b = Collector::new(true);
        eval::stream::observe(&m, &w, &mut b, true, &|_| {}, &cancel).unwrap();
        assert_eq!(a.entries.len(), b.entries.len(), "{name}");
        for (x, y) in a.entries.iter().zip(&b.entries) {
            assert_eq!(x.name, y.name, "{name}");
            assert_eq!(x.counts, y.counts, "{name}: {}", x.name);
            assert_eq!(x.sum2, y.sum2, "{name}: {}", x.name);
        }
    }
}

#[test]
fn a_probe_resumed_from_a_kept_block_equals_a_full_run() {
    let cancel = AtomicBool::new(false);
    let none = BTreeMap::new();
    for name in ["tiny-llama", "tiny-gemma3", "tiny-qwen2-moe"] {
        let m = open(name);
        let n_layer = m.arch().unwrap().n_layer;
        let w = windows(&m, 32, 2);
        let last = format!("blk.{}.ffn_down.weight", n_layer - 1);
        let last = if m.tensor(&last).is_some() {
            last
        } else {
            format!("blk.{}.ffn_down_exps.weight", n_layer - 1)
        };
        let reference = eval::stream::Reference::new(&m, &w, &[0, n_layer - 1], &cancel).unwrap();
        let rt = Roundtrip {
            base: &m,
            types: [(last.clone(), GgmlType::Q4_0)].into_iter().collect(),
            importance: &none,
        };
        let from = eval::planning::first_changed_layer(&m, [last.as_str()]);
        assert_eq!(from, n_layer - 1);
        let resumed = reference.kld(&rt, from, &cancel).unwrap();
        let full = eval::stream::evaluate(&m, Some(&rt), &w, &|_| {}, &cancel).unwrap();
        let full = full.kld.unwrap().mean;
        assert!(full > 0.0, "{name}");
        assert!(
            (resumed - full).abs() <= 1e-12 + 1e-9 * full,
            "{name}: {resumed} vs {full}"
        );
    }
}

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

#[test]
fn the_same_numbers_for_any_thread_count() {
    let cancel = AtomicBool::new(false);
    let none = BTreeMap::new();
    for name in ["tiny-qwen2", "tiny-mixtral"] {
        let m = open(name);
        let w = windows(&m, 32, 3);
        let rt = Roundtrip {
            base: &m,
            types: candidate_types(&m),
            importance: &none,
        };
        let run = || {
            let r = eval::stream::evaluate_in_chunks(
                &m as &dyn Source,
                Some(&rt),
                &w,
                Some(97),
                &|_| {},
                &cancel,
            )
            .unwrap();
            r.per_token
                .iter()
                .map(|t| (t.nll_original, t.nll_candidate, t.kld, t.top1_candidate))
                .collect::<Vec<_>>()
        };
        let one = in_pool(1, run);
        let four = in_pool(4, run);
        assert_eq!(one, four, "{name}");
    }
}

/// Pruning's block influence (ShortGPT) streamed block by block, as the
/// planner measures it, equals the whole-model calibration's.
#[test]
fn streamed_block_influence_equals_the_whole_model_one() {
    for name in ["tiny-llama", "tiny-qwen2", "tiny-gemma2"] {
        let m = open(name);
        let w = windows(&m, 64, 2);
        let cancel = AtomicBool::new(false);
        let whole = eval::prune::calibrate(&Transformer::new(&m).unwrap(), &w, &cancel).unwrap();
        let streamed = eval::prune::block_influence(&m, &w, &cancel).unwrap();
        assert_eq!(whole.block_influence.len(), streamed.len(), "{name}");
        for (a, b) in whole.block_influence.iter().zip(&streamed) {
            assert!((a - b).abs() <= 1e-9, "{name}: {a} vs {b}");
            assert!((0.0..=2.0).contains(b), "{name}: {b}");
        }
    }
}
