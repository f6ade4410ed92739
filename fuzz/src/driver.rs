//! Workers and their supervisor.
//!
//! A worker (`kiln-fuzz worker`) runs a range of case indices of one kind
//! in-process, each under `catch_unwind`, and prints one line per case:
//! `INDEX CLASS MICROS MESSAGE`. It runs under a data-segment limit
//! (`ulimit -d`, the memory cap: an allocation past it fails and Rust aborts
//! with "memory allocation of N bytes failed"), with one rayon thread.
//!
//! The supervisor (`kiln-fuzz run`) splits every kind's cases into chunks,
//! keeps `jobs` workers busy, and classifies:
//! - `ok`, `refused`: kiln converted the input, or refused it with an error
//!   (both are correct behaviour);
//! - `panic`: a Rust panic (message and location kept);
//! - `oom`: the worker died on an allocation past the cap;
//! - `abort`: the worker died any other way (abort, signal, stack overflow);
//! - `hang`: no result within `hang` seconds (the worker is killed);
//! - `slow`: a result, but after more than `slow` milliseconds;
//! - `message`: a refusal whose message is not one line of printable text
//!   (a newline, an escape sequence), which would break the one-`error:`-line
//!   contract on a terminal.
//!
//! A dead or killed worker is replaced from the case after the one that
//! killed it. Every finding is written as a reproducer directory. What must
//! stay true: the counts depend only on (kinds, cases, seed) and the caps,
//! never on the number of workers or the chunking.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::json;

use crate::exec::{Case, Workspace};
use crate::seeds::Corpus;
use crate::{case, Kind};

/// Outcome classes, findings last.
pub const CLASSES: [&str; 9] = [
    "ok", "refused", "panic", "abort", "oom", "hang", "slow", "message", "",
];
/// The classes that are findings.
pub const FINDINGS: [&str; 6] = ["panic", "abort", "oom", "hang", "slow", "message"];

/// Limits a run enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Memory cap per worker (data segment), MiB.
    pub mem_mib: u64,
    /// A case slower than this is a finding (`slow`).
    pub slow_ms: u64,
    /// A case with no result after this is killed (`hang`).
    pub hang_s: u64,
}

/// The message of the last panic on this thread, set by the hook.
static PANIC: Mutex<Option<String>> = Mutex::new(None);

/// `s` on one line of printable text, at most 600 characters (a finding's
/// message can hold a 70 KB tensor name).
fn one_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(600)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().nth(600).is_some() {
        out.push_str("...");
    }
    out
}

/// The refusal as `kiln` prints it: the chain, outermost first, joined.
pub fn message(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

/// Run one prepared case under `catch_unwind`: (class, micros, message).
pub fn run_one(ws: &Workspace, case: &Case, slow_ms: u64) -> (&'static str, u128, String) {
    let t = Instant::now();
    let r = panic::catch_unwind(AssertUnwindSafe(|| ws.run(case)));
    let us = t.elapsed().as_micros();
    let (class, msg) = match r {
        Ok(Ok(())) => ("ok", String::new()),
        Ok(Err(e)) => {
            let m = message(&e);
            if m.chars().any(char::is_control) {
                ("message", m)
            } else {
                ("refused", m)
            }
        }
        Err(_) => (
            "panic",
            PANIC
                .lock()
                .map(|mut p| p.take().unwrap_or_default())
                .unwrap_or_default(),
        ),
    };
    if matches!(class, "ok" | "refused") && us > u128::from(slow_ms) * 1000 {
        return ("slow", us, format!("{} ms", us / 1000));
    }
    (class, us, msg)
}

/// `kiln-fuzz worker`: run cases `from..to` of `kind`, one line each.
pub fn worker(
    corpus_dir: &Path,
    scratch: &Path,
    kind: Kind,
    seed: u64,
    from: u64,
    to: u64,
    slow_ms: u64,
) -> Result<()> {
    panic::set_hook(Box::new(|info| {
        let loc = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-string panic)".into());
        if let Ok(mut p) = PANIC.lock() {
            *p = Some(format!("{msg}{loc}"));
        }
    }));
    // One rayon thread, and it is this one: kiln's parallel loops run
    // inline instead of handing every chunk to another thread and waiting.
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .use_current_thread()
        .build_global()
        .context("the worker's thread pool")?;
    let corpus = Corpus::load(corpus_dir)?;
    let root = scratch.join(format!("w{}", std::process::id()));
    let ws = Workspace::new(&root, &corpus)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for i in from..to {
        // Generated outside catch_unwind: a mutator that panics kills the
        // worker, and the run reports it (as an abort), never hides it.
        let c = case(&corpus, kind, seed, i);
        ws.prepare(&c)?;
        let (class, us, msg) = run_one(&ws, &c, slow_ms);
        ws.reset(&c)?;
        let msg = if matches!(class, "ok" | "refused") {
            String::new()
        } else {
            one_line(&msg)
        };
        writeln!(out, "{i} {class} {us} {msg}")?;
        out.flush()?;
    }
    drop(out);
    std::fs::remove_dir_all(&root).ok();
    Ok(())
}

/// One finding.
#[derive(Debug, Clone)]
pub struct Finding {
    pub kind: Kind,
    pub index: u64,
    pub class: &'static str,
    pub message: String,
    /// Where its reproducer was written (None past the per-class limit).
    pub reproducer: Option<PathBuf>,
}

/// Per-kind tallies.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub counts: BTreeMap<&'static str, u64>,
    /// Time spent inside cases, summed over workers.
    pub busy_us: u128,
    pub slowest_us: u128,
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Summary {
    pub tallies: BTreeMap<Kind, Tally>,
    pub findings: Vec<Finding>,
    pub wall_s: f64,
}

impl Summary {
    pub fn total_findings(&self) -> u64 {
        self.tallies
            .values()
            .flat_map(|t| {
                FINDINGS
                    .iter()
                    .map(|c| t.counts.get(c).copied().unwrap_or(0))
            })
            .sum()
    }

    /// The table printed at the end of a run (Markdown).
    pub fn table(&self) -> String {
        let mut s = String::from(
            "| kind | cases | ok | refused | panic | abort | oom | hang | slow | message | execs/s per worker | slowest ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for (k, t) in &self.tallies {
            let n: u64 = t.counts.values().sum();
            let c = |name: &str| t.counts.get(name).copied().unwrap_or(0);
            s += &format!(
                "| {} | {n} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.1} |\n",
                k.name(),
                c("ok"),
                c("refused"),
                c("panic"),
                c("abort"),
                c("oom"),
                c("hang"),
                c("slow"),
                c("message"),
                n as f64 / (t.busy_us as f64 / 1e6).max(1e-9),
                t.slowest_us as f64 / 1000.0
            );
        }
        s
    }

    pub fn json(&self, seed: u64, cases: u64, jobs: usize, limits: &Limits) -> serde_json::Value {
        json!({
            "seed": seed,
            "cases_per_kind": cases,
            "jobs": jobs,
            "mem_mib": limits.mem_mib,
            "slow_ms": limits.slow_ms,
            "hang_s": limits.hang_s,
            "wall_seconds": self.wall_s,
            "findings": self.total_findings(),
            "kinds": self.tallies.iter().map(|(k, t)| (k.name().to_string(), json!({
                "counts": t.counts,
                "busy_seconds": t.busy_us as f64 / 1e6,
                "slowest_ms": t.slowest_us as f64 / 1000.0,
            }))).collect::<serde_json::Map<_, _>>(),
            "list": self.findings.iter().map(|f| json!({
                "kind": f.kind.name(),
                "index": f.index,
                "class": f.class,
                "message": f.message,
                "reproducer": f.reproducer,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Options of `kiln-fuzz run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub kinds: Vec<Kind>,
    pub cases: u64,
    pub seed: u64,
    pub jobs: usize,
    /// Findings, the summary and the corpus go here.
    pub out: PathBuf,
    /// Per-worker scratch space (a tmpfs is best).
    pub scratch: PathBuf,
    pub limits: Limits,
    /// Cases per worker start.
    pub chunk: u64,
    /// Reproducers kept per (kind, class).
    pub keep: usize,
    /// Print progress to stderr.
    pub verbose: bool,
}

enum Event {
    Line(usize, String),
    Eof(usize),
}

struct Running {
    child: Child,
    kind: Kind,
    /// The next index without a result.
    next: u64,
    to: u64,
    last: Instant,
    killed_for_hang: bool,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// The thread reading stderr: joined before the tail is read, so a
    /// dying worker's last words are in it.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

fn spawn(
    id: usize,
    opts: &RunOptions,
    corpus_dir: &Path,
    kind: Kind,
    from: u64,
    to: u64,
    tx: &mpsc::Sender<Event>,
) -> Result<Running> {
    let exe = std::env::current_exe()?;
    let kb = opts.limits.mem_mib * 1024;
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "ulimit -d {kb} 2>/dev/null || ulimit -v {kb}; exec \"$0\" \"$@\""
        ))
        .arg(&exe)
        .arg("worker")
        .args(["--kind", kind.name()])
        .args(["--seed", &opts.seed.to_string()])
        .args(["--from", &from.to_string()])
        .args(["--to", &to.to_string()])
        .args(["--slow-ms", &opts.limits.slow_ms.to_string()])
        .arg("--corpus")
        .arg(corpus_dir)
        .arg("--scratch")
        .arg(&opts.scratch)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning a worker")?;
    let stdout = child.stdout.take().context("worker stdout")?;
    let tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(l) => {
                    if tx.send(Event::Line(id, l)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(Event::Eof(id));
    });
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let mut pipe = child.stderr.take().context("worker stderr")?;
    let keep = stderr.clone();
    let stderr_reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut k) = keep.lock() {
                k.extend_from_slice(&buf[..n]);
                let len = k.len();
                if len > 16384 {
                    k.drain(..len - 16384);
                }
            }
        }
    });
    Ok(Running {
        child,
        kind,
        next: from,
        to,
        last: Instant::now(),
        killed_for_hang: false,
        stderr,
        stderr_reader: Some(stderr_reader),
    })
}

/// Write the reproducer of case `index` of `kind` into `dir`.
fn write_reproducer(corpus: &Corpus, opts: &RunOptions, f: &Finding, dir: &Path) -> Result<()> {
    // A mutator that panics is a harness bug: report it, keep running.
    let c = panic::catch_unwind(AssertUnwindSafe(|| {
        case(corpus, f.kind, opts.seed, f.index)
    }))
    .map_err(|_| anyhow::anyhow!("the case generator panicked (a harness bug)"))?;
    std::fs::create_dir_all(dir)?;
    let (input, model) = if f.kind.in_checkpoint() {
        let model = dir.join("model");
        std::fs::create_dir_all(&model)?;
        for ((b, name), bytes) in &corpus.files {
            if *b == c.base {
                std::fs::write(model.join(name), bytes)?;
            }
        }
        (model.join(f.kind.file_name()), model.clone())
    } else {
        let input = dir.join(f.kind.file_name());
        let model = if f.kind == Kind::Gguf {
            input.clone()
        } else {
            let model = dir.join("model");
            std::fs::create_dir_all(&model)?;
            for ((b, name), bytes) in &corpus.files {
                if *b == c.base {
                    std::fs::write(model.join(name), bytes)?;
                }
            }
            model
        };
        (input, model)
    };
    std::fs::write(&input, &c.bytes)?;
    let cli = match f.kind {
        Kind::TargetToml => format!(
            "kiln estimate model --target-file {} --target <id in the file> --batch {}",
            f.kind.file_name(),
            c.batch
        ),
        Kind::ImatrixDat | Kind::ImatrixGguf => format!(
            "kiln convert model -t {} --allow-requantize --imatrix {} -o /tmp/fuzz-out.gguf",
            c.recipe,
            f.kind.file_name()
        ),
        _ => {
            let m = model
                .strip_prefix(dir)
                .unwrap_or(&model)
                .display()
                .to_string();
            let mut s = format!(
                "kiln convert {m} -t {} --allow-requantize -o /tmp/fuzz-out.gguf",
                c.recipe
            );
            if matches!(f.kind, Kind::Config | Kind::Gguf) {
                s += &format!("\nkiln estimate {m} --target h100-sxm --batch {}", c.batch);
            }
            s
        }
    };
    std::fs::write(
        dir.join("README.txt"),
        format!(
            "class: {}\nkind: {}\nseed: {}\nindex: {}\nrecipe: {}\nmessage: {}\n\nin-process (panics show their backtrace):\n  kiln-fuzz case --kind {} --seed {} --index {}\nwith the kiln binary, from this directory:\n  {}\n",
            f.class,
            f.kind.name(),
            opts.seed,
            f.index,
            c.recipe,
            f.message,
            f.kind.name(),
            opts.seed,
            f.index,
            cli
        ),
    )?;
    Ok(())
}

/// `kiln-fuzz run`.
pub fn run(opts: &RunOptions) -> Result<Summary> {
    let t0 = Instant::now();
    std::fs::create_dir_all(&opts.out)?;
    std::fs::create_dir_all(&opts.scratch)?;
    let corpus_dir = opts.scratch.join(format!("corpus-{}", std::process::id()));
    let corpus = Corpus::build(&corpus_dir)?;
    let findings_dir = opts.out.join("findings");
    let mut queue: VecDeque<(Kind, u64, u64)> = VecDeque::new();
    for &k in &opts.kinds {
        let mut a = 0;
        while a < opts.cases {
            let b = (a + opts.chunk.max(1)).min(opts.cases);
            queue.push_back((k, a, b));
            a = b;
        }
    }
    let mut summary = Summary::default();
    for &k in &opts.kinds {
        summary.tallies.insert(k, Tally::default());
    }
    let mut kept: BTreeMap<(Kind, &'static str), usize> = BTreeMap::new();
    let (tx, rx) = mpsc::channel();
    let mut running: BTreeMap<usize, Running> = BTreeMap::new();
    let mut next_id = 0;
    let mut done_cases = 0u64;
    let total = opts.cases * opts.kinds.len() as u64;
    let mut last_report = Instant::now();
    let mut record =
        |summary: &mut Summary, kind: Kind, index: u64, class: &'static str, message: String| {
            let n = kept.entry((kind, class)).or_default();
            let reproducer = (*n < opts.keep).then(|| {
                *n += 1;
                findings_dir
                    .join(class)
                    .join(format!("{}-{index}", kind.name()))
            });
            let f = Finding {
                kind,
                index,
                class,
                message,
                reproducer,
            };
            if let Some(dir) = &f.reproducer {
                if let Err(e) = write_reproducer(&corpus, opts, &f, dir) {
                    eprintln!("kiln-fuzz: could not write {}: {e:#}", dir.display());
                }
            }
            if opts.verbose {
                eprintln!(
                    "finding: {} {} #{}: {}",
                    f.class,
                    kind.name(),
                    index,
                    f.message
                );
            }
            summary.findings.push(f);
        };
    loop {
        while running.len() < opts.jobs.max(1) {
            let Some((k, a, b)) = queue.pop_front() else {
                break;
            };
            let w = spawn(next_id, opts, &corpus_dir, k, a, b, &tx)?;
            running.insert(next_id, w);
            next_id += 1;
        }
        if running.is_empty() {
            break;
        }
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(Event::Line(id, line)) => {
                let Some(w) = running.get_mut(&id) else {
                    continue;
                };
                let mut parts = line.splitn(4, ' ');
                let index: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(w.next);
                let class = parts.next().unwrap_or("");
                let us: u128 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                let msg = parts.next().unwrap_or("").to_string();
                let Some(class) = CLASSES
                    .iter()
                    .copied()
                    .find(|c| *c == class && !c.is_empty())
                else {
                    bail!("worker printed an unexpected line: {line}");
                };
                w.next = index + 1;
                w.last = Instant::now();
                let kind = w.kind;
                let t = summary.tallies.entry(kind).or_default();
                *t.counts.entry(class).or_default() += 1;
                t.busy_us += us;
                t.slowest_us = t.slowest_us.max(us);
                done_cases += 1;
                if FINDINGS.contains(&class) {
                    record(&mut summary, kind, index, class, msg);
                }
            }
            Ok(Event::Eof(id)) => {
                let Some(mut w) = running.remove(&id) else {
                    continue;
                };
                let status = w.child.wait()?;
                if let Some(h) = w.stderr_reader.take() {
                    let _ = h.join();
                }
                std::fs::remove_dir_all(opts.scratch.join(format!("w{}", w.child.id()))).ok();
                if w.next < w.to {
                    // The case w.next killed the worker.
                    let tail = w
                        .stderr
                        .lock()
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default();
                    // The allocation failure if there was one, else the last line.
                    let last = tail
                        .lines()
                        .find(|l| l.contains("memory allocation of"))
                        .or_else(|| tail.lines().rev().find(|l| !l.trim().is_empty()))
                        .unwrap_or("");
                    let (class, msg) = if w.killed_for_hang {
                        ("hang", format!("no result after {} s", opts.limits.hang_s))
                    } else if tail.contains("memory allocation of") {
                        ("oom", one_line(last))
                    } else {
                        ("abort", one_line(&format!("{status}: {last}")))
                    };
                    let t = summary.tallies.entry(w.kind).or_default();
                    *t.counts.entry(class).or_default() += 1;
                    done_cases += 1;
                    record(&mut summary, w.kind, w.next, class, msg);
                    if w.next + 1 < w.to {
                        queue.push_front((w.kind, w.next + 1, w.to));
                    }
                } else if !status.success() {
                    bail!("a worker exited with {status} after its last case");
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("workers' channel closed"),
        }
        let hang = Duration::from_secs(opts.limits.hang_s);
        for w in running.values_mut() {
            if !w.killed_for_hang && w.last.elapsed() > hang {
                w.killed_for_hang = true;
                let _ = w.child.kill();
            }
        }
        if opts.verbose && last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!(
                "kiln-fuzz: {done_cases}/{total} cases, {} findings, {:.0} s",
                summary.findings.len(),
                t0.elapsed().as_secs_f64()
            );
        }
    }
    std::fs::remove_dir_all(&corpus_dir).ok();
    summary.wall_s = t0.elapsed().as_secs_f64();
    std::fs::write(
        opts.out.join("summary.json"),
        serde_json::to_vec_pretty(&summary.json(opts.seed, opts.cases, opts.jobs, &opts.limits))?,
    )?;
    Ok(summary)
}
