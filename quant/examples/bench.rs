//! Single-thread encoder throughput of `quant` (values/s per type, with and
//! without an importance matrix), optionally side by side with ggml's C
//! quantizers through a harness binary (see `quant/BENCH.md` for how to build
//! it: it is not part of kiln and holds no ggml code here).
//!
//! ```text
//! cargo run -p quant --release --example bench -- [--ggml PATH] [--secs S] [--rounds N] [TYPE...]
//! ```
//!
//! Data: 256 rows of 4096 weight-like values (normal, sigma 0.02, SplitMix64
//! seeded 42) and an importance vector of squared normals; the same bytes go
//! to the harness on stdin. Each type is timed `rounds` times, kiln and ggml
//! interleaved, for `secs` seconds of thread CPU time each (Linux
//! `/proc/thread-self/schedstat`; the harness uses `CLOCK_THREAD_CPUTIME_ID`),
//! so other processes sharing the cores do not count; the best round of each
//! is printed. Every kiln output is also compared with ggml's when the
//! harness is given.

use quant::{quantize_rows, GgmlType};
use std::io::Write;
use std::process::{Command, Stdio};

const ROW: usize = 4096;
const ROWS: usize = 256;

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn normal(&mut self) -> f32 {
        let mut s = 0.0f32;
        for _ in 0..4 {
            s += (self.next_u64() >> 40) as f32 / 16_777_216.0;
        }
        (s - 2.0) * 1.732_050_8
    }
}

/// CPU time this thread has run, in seconds (Linux).
fn cpu_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").expect("Linux schedstat");
    let ns: u64 = s
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("ns");
    ns as f64 * 1e-9
}

fn ggml(path: &str, args: &[String], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {path}: {e}"));
    let mut stdin = child.stdin.take().expect("piped");
    let data = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("harness output");
    writer.join().expect("writer").expect("write to harness");
    assert!(out.status.success(), "{path} {args:?} failed");
    out.stdout
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut harness: Option<String> = None;
    let mut secs = 1.0f64;
    let mut rounds = 3;
    let mut types: Vec<GgmlType> = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--ggml" => harness = args.next(),
            "--secs" => secs = args.next().and_then(|s| s.parse().ok()).expect("--secs S"),
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--rounds N")
            }
            t => types.push(t.parse().unwrap_or_else(|e| panic!("{e}"))),
        }
    }
    if types.is_empty() {
        types = GgmlType::ALL
            .iter()
            .copied()
            .filter(|t| t.is_quantized())
            .collect();
    }
    let mut rng = Rng(42);
    let x: Vec<f32> = (0..ROW * ROWS).map(|_| rng.normal() * 0.02).collect();
    let qw: Vec<f32> = (0..ROW)
        .map(|_| {
            let g = rng.normal();
            g * g + 1e-3
        })
        .collect();
    println!("single thread, {ROWS} rows x {ROW} values, best of {rounds} x {secs}s; Mvalues/s");
    println!(
        "{:<8} {:>8} {:>10} {:>10} {:>7}",
        "type", "imatrix", "kiln", "ggml", "ratio"
    );
    for ty in types {
        for with in [false, true] {
            if with && !ty.uses_imatrix() {
                continue;
            }
            let im = with.then_some(&qw[..]);
            let mut out = vec![0u8; ty.row_bytes(x.len()).expect("whole blocks")];
            let mut input: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
            if with {
                input.extend(qw.iter().flat_map(|v| v.to_le_bytes()));
            }
            let hargs = |mode: &str| -> Vec<String> {
                let mut v = vec![mode.to_string(), ty.name().to_string(), ROW.to_string()];
                v.push(if with { "1" } else { "0" }.to_string());
                if mode == "bench" {
                    v.push(secs.to_string());
                }
                v
            };
            if let Some(h) = &harness {
                quantize_rows(ty, &x, &mut out, ROW, im);
                let theirs = ggml(h, &hargs("chunk"), &input);
                assert!(
                    theirs == out,
                    "{ty} (imatrix {with}): kiln's bytes differ from ggml's"
                );
            }
            let (mut best_k, mut best_g) = (0.0f64, 0.0f64);
            for _ in 0..rounds {
                if let Some(h) = &harness {
                    let s = String::from_utf8(ggml(h, &hargs("bench"), &input)).expect("utf8");
                    best_g = best_g.max(s.trim().parse::<f64>().expect("values/s"));
                }
                let start = cpu_secs();
                let mut reps = 0u64;
                while cpu_secs() - start < secs {
                    quantize_rows(ty, &x, &mut out, ROW, im);
                    reps += 1;
                }
                let rate = reps as f64 * x.len() as f64 / (cpu_secs() - start);
                best_k = best_k.max(rate);
            }
            let g = if harness.is_some() {
                format!("{:>10.2}", best_g / 1e6)
            } else {
                format!("{:>10}", "-")
            };
            let r = if harness.is_some() {
                format!("{:>6.2}x", best_k / best_g)
            } else {
                String::new()
            };
            println!(
                "{:<8} {:>8} {:>10.2} {g} {r}",
                ty.name(),
                if with { "yes" } else { "no" },
                best_k / 1e6
            );
        }
    }
}
