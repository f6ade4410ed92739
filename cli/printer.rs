//! The one owner of stdout, stderr and the progress-bar target.
//!
//! Data goes to stdout, everything else (messages, warnings, progress) to
//! stderr. Progress bars are hidden when stderr is not a terminal, when
//! `NO_COLOR` is set, or with `--quiet`. [`Bars`] draws the library's
//! [`planner::Progress`] stages with these bars.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Clone, Copy)]
pub struct Printer {
    quiet: bool,
    progress: bool,
}

impl Printer {
    pub fn new(quiet: bool) -> Printer {
        let progress =
            !quiet && std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Printer { quiet, progress }
    }

    /// Data for the user or a machine: always printed, to stdout.
    pub fn data(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        // A closed pipe (`kiln inspect m | head`) is not an error worth a panic.
        let _ = out.write_all(text.as_bytes());
        if !text.ends_with('\n') {
            let _ = out.write_all(b"\n");
        }
        let _ = out.flush();
    }

    /// A status message, to stderr; silenced by `--quiet`.
    pub fn info(&self, text: &str) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }

    /// A warning, to stderr; printed even with `--quiet`.
    pub fn warn(&self, text: &str) {
        eprintln!("warning: {text}");
    }

    /// A progress bar counting items (windows, tensors), or a hidden one.
    pub fn count_bar(&self, total: u64, msg: &str) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(msg.to_string());
        bar
    }

    /// A byte-counting progress bar, or a hidden one.
    pub fn bytes_bar(&self, total: u64, msg: &str) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {prefix}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(msg.to_string());
        bar
    }
}

/// The planner's progress as bars and status lines of a [`Printer`].
pub struct Bars {
    printer: Printer,
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    pub fn new(printer: &Printer) -> Bars {
        Bars {
            printer: *printer,
            bar: Mutex::new(None),
        }
    }

    fn with(&self, f: impl FnOnce(&mut Option<ProgressBar>)) {
        let mut bar = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut bar)
    }
}

impl planner::Progress for Bars {
    fn start(&self, stage: &str, len: u64, unit: planner::Unit) {
        let bar = match unit {
            planner::Unit::Items => self.printer.count_bar(len, stage),
            planner::Unit::Bytes => self.printer.bytes_bar(len, stage),
        };
        self.with(|b| *b = Some(bar));
    }

    fn advance(&self, n: u64) {
        self.with(|b| {
            if let Some(b) = b {
                b.inc(n)
            }
        });
    }

    fn finish(&self) {
        self.with(|b| {
            if let Some(b) = b.take() {
                b.finish_and_clear()
            }
        });
    }

    fn status(&self, text: &str) {
        self.printer.info(text);
    }
}
