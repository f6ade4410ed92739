//! `kiln-fuzz`: the fuzz harness's command line.
//!
//! - `kiln-fuzz run [--kinds all|K,K] [--cases N] [--seed S] [--jobs J]
//!   [--out DIR] [--scratch DIR] [--mem-mib M] [--slow-ms MS] [--hang-s S]
//!   [--chunk C] [--keep K] [--quiet]`: fuzz, print the table, write
//!   `OUT/summary.json` and `OUT/findings/CLASS/KIND-INDEX/` reproducers;
//!   exit 1 if anything was found.
//! - `kiln-fuzz case --kind K --index I [--seed S] [--write DIR]`: run one
//!   case in this process (a panic shows its backtrace), or write its input.
//! - `kiln-fuzz worker ...`: what `run` starts (not for people).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use fuzz::driver::{self, Limits, RunOptions};
use fuzz::exec::Workspace;
use fuzz::seeds::Corpus;
use fuzz::Kind;

const USAGE: &str = "usage: kiln-fuzz run [--kinds all|K,K..] [--cases N] [--seed S] [--jobs J] [--out DIR] [--scratch DIR] [--mem-mib M] [--slow-ms MS] [--hang-s S] [--chunk C] [--keep K] [--quiet]
       kiln-fuzz case --kind K --index I [--seed S] [--write DIR]
kinds: gguf safetensors shard-index config tokenizer-json tokenizer-model tokenizer-config imatrix-dat imatrix-gguf target-toml";

struct Args(Vec<String>);

impl Args {
    fn take(&mut self, flag: &str) -> Option<String> {
        let i = self.0.iter().position(|a| a == flag)?;
        if i + 1 >= self.0.len() {
            return None;
        }
        let v = self.0.remove(i + 1);
        self.0.remove(i);
        Some(v)
    }

    fn flag(&mut self, flag: &str) -> bool {
        match self.0.iter().position(|a| a == flag) {
            Some(i) => {
                self.0.remove(i);
                true
            }
            None => false,
        }
    }

    fn num(&mut self, flag: &str, default: u64) -> Result<u64> {
        match self.take(flag) {
            Some(v) => v
                .parse()
                .with_context(|| format!("{flag} `{v}`: not a number")),
            None => Ok(default),
        }
    }

    fn kind(&mut self) -> Result<Kind> {
        let k = self.take("--kind").context("--kind is required")?;
        Kind::parse(&k).with_context(|| format!("unknown kind `{k}`"))
    }

    fn done(&self) -> Result<()> {
        if !self.0.is_empty() {
            bail!("unexpected arguments: {}\n{USAGE}", self.0.join(" "));
        }
        Ok(())
    }
}

/// A tmpfs when there is one: cases write their inputs and outputs there.
fn default_scratch() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm.join("kiln-fuzz")
    } else {
        std::env::temp_dir().join("kiln-fuzz")
    }
}

fn main() -> ExitCode {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let cmd = argv.remove(0);
    let r = match cmd.as_str() {
        "run" => run(Args(argv)),
        "case" => case(Args(argv)),
        "worker" => worker(Args(argv)).map(|()| true),
        _ => Err(anyhow::anyhow!("unknown command `{cmd}`\n{USAGE}")),
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(mut a: Args) -> Result<bool> {
    let kinds = match a.take("--kinds").as_deref() {
        None | Some("all") => Kind::ALL.to_vec(),
        Some(list) => list
            .split(',')
            .map(|k| Kind::parse(k).with_context(|| format!("unknown kind `{k}`")))
            .collect::<Result<_>>()?,
    };
    let opts = RunOptions {
        kinds,
        cases: a.num("--cases", 20_000)?,
        seed: a.num("--seed", 1)?,
        jobs: a.num(
            "--jobs",
            std::thread::available_parallelism().map_or(2, |n| n.get() as u64),
        )? as usize,
        out: a.take("--out").map_or("target/fuzz".into(), PathBuf::from),
        scratch: a
            .take("--scratch")
            .map_or_else(default_scratch, PathBuf::from),
        limits: Limits {
            mem_mib: a.num("--mem-mib", 512)?,
            slow_ms: a.num("--slow-ms", 2000)?,
            hang_s: a.num("--hang-s", 20)?,
        },
        chunk: a.num("--chunk", 2500)?,
        keep: a.num("--keep", 10)? as usize,
        verbose: !a.flag("--quiet"),
    };
    a.done()?;
    let s = driver::run(&opts)?;
    println!("{}", s.table());
    println!(
        "seed {}, {} cases per kind, {} workers, {:.1} s wall, {} findings",
        opts.seed,
        opts.cases,
        opts.jobs,
        s.wall_s,
        s.total_findings()
    );
    for f in &s.findings {
        println!(
            "  {} {} #{}: {}{}",
            f.class,
            f.kind.name(),
            f.index,
            f.message,
            f.reproducer
                .as_ref()
                .map(|p| format!(" ({})", p.display()))
                .unwrap_or_default()
        );
    }
    Ok(s.total_findings() == 0)
}

fn case(mut a: Args) -> Result<bool> {
    let kind = a.kind()?;
    let index = a.num("--index", 0)?;
    let seed = a.num("--seed", 1)?;
    let write = a.take("--write").map(PathBuf::from);
    a.done()?;
    let tmp = std::env::temp_dir().join(format!("kiln-fuzz-case-{}", std::process::id()));
    let corpus = Corpus::build(&tmp.join("corpus"))?;
    let c = fuzz::case(&corpus, kind, seed, index);
    if let Some(dir) = write {
        std::fs::create_dir_all(&dir)?;
        let p = dir.join(kind.file_name());
        std::fs::write(&p, &c.bytes)?;
        println!(
            "wrote {} (base {}, recipe {})",
            p.display(),
            c.base.name(),
            c.recipe
        );
        std::fs::remove_dir_all(&tmp).ok();
        return Ok(true);
    }
    let ws = Workspace::new(&tmp.join("work"), &corpus)?;
    ws.prepare(&c)?;
    let r = ws.run(&c);
    ws.reset(&c)?;
    std::fs::remove_dir_all(&tmp).ok();
    match r {
        Ok(()) => println!(
            "ok ({} {}, base {}, recipe {})",
            kind.name(),
            index,
            c.base.name(),
            c.recipe
        ),
        Err(e) => println!("refused: {}", driver::message(&e)),
    }
    Ok(true)
}

fn worker(mut a: Args) -> Result<()> {
    let kind = a.kind()?;
    let seed = a.num("--seed", 1)?;
    let from = a.num("--from", 0)?;
    let to = a.num("--to", 0)?;
    let slow_ms = a.num("--slow-ms", 2000)?;
    let corpus = PathBuf::from(a.take("--corpus").context("--corpus")?);
    let scratch = PathBuf::from(a.take("--scratch").context("--scratch")?);
    a.done()?;
    driver::worker(&corpus, &scratch, kind, seed, from, to, slow_ms)
}
