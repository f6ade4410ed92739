//! The one owner of stdout, stderr and the progress-bar target.
//!
//! Data goes to stdout, everything else (messages, warnings, progress) to
//! stderr. Progress bars are drawn when stderr is a terminal and `--quiet`
//! is not given (`NO_COLOR` only removes colour, and the bars have none);
//! each finished planner stage leaves one line with its amount of work and
//! its time (in place of its bar on a terminal, as the only sign of progress
//! when stderr is not one). Bars show units
//! (bytes in KiB/MiB/GiB, rates in MiB/s, counts with thousands
//! separators) and an ETA from the work done so far over the whole time
//! elapsed (the total work is known up front), not from the last seconds'
//! speed. [`Bars`] draws the library's [`planner::Progress`] stages and
//! prints its warnings the moment they are known. Every message and warning
//! is escaped (`passes::printable`), as errors are.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Instant;

use formats::human;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

#[derive(Debug, Clone, Copy)]
pub struct Printer {
    quiet: bool,
    progress: bool,
}

/// Remaining time from the average rate since the start: elapsed x left / done.
fn eta(state: &ProgressState) -> Option<f64> {
    let done = state.pos();
    let total = state.len()?;
    if done == 0 || done > total {
        return None;
    }
    let elapsed = state.elapsed().as_secs_f64();
    Some(elapsed * (total - done) as f64 / done as f64)
}

/// A bar style: `stage [=====>    ] 12/219 tensors  3.1 tensors/s  eta 1 min 10 s`.
fn style(bytes: bool, unit: &'static str) -> ProgressStyle {
    ProgressStyle::with_template("{msg:>10} [{bar:30}] {amount} {rate} eta {work_eta}")
        .expect("valid template")
        .progress_chars("=> ")
        .with_key(
            "amount",
            move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let len = s.len().unwrap_or(0);
                let _ = if bytes {
                    write!(w, "{}/{}", human::bytes(s.pos()), human::bytes(len))
                } else {
                    write!(w, "{}/{} {unit}", human::count(s.pos()), human::count(len))
                };
            },
        )
        .with_key(
            "rate",
            move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let secs = s.elapsed().as_secs_f64();
                if secs <= 0.0 {
                    return;
                }
                let r = s.pos() as f64 / secs;
                let _ = if bytes {
                    write!(w, "{}", human::byte_rate(r))
                } else {
                    write!(w, "{} {unit}/s", human::sig(r, 3))
                };
            },
        )
        .with_key(
            "work_eta",
            |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{}", eta(s).map_or("-".into(), human::seconds));
            },
        )
}

impl Printer {
    pub fn new(quiet: bool) -> Printer {
        let progress = !quiet && std::io::stderr().is_terminal();
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

    /// A status message, to stderr; silenced by `--quiet`. Escaped like an
    /// error (`passes::printable`): file, tensor and target names in it are
    /// the user's or an attacker's, and one line stays one line.
    pub fn info(&self, text: &str) {
        if !self.quiet {
            eprintln!("{}", passes::printable(text));
        }
    }

    /// A warning, to stderr; printed even with `--quiet`; escaped as `info`.
    pub fn warn(&self, text: &str) {
        eprintln!("warning: {}", passes::printable(text));
    }

    /// A progress bar counting `unit`s (windows, tensors), or a hidden one.
    pub fn count_bar(&self, total: u64, msg: &str, unit: &'static str) -> ProgressBar {
        self.bar(total, msg, false, unit)
    }

    /// A byte-counting progress bar, or a hidden one.
    pub fn bytes_bar(&self, total: u64, msg: &str) -> ProgressBar {
        self.bar(total, msg, true, "")
    }

    fn bar(&self, total: u64, msg: &str, bytes: bool, unit: &'static str) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(style(bytes, unit));
        bar.set_message(msg.to_string());
        bar
    }
}

/// The line a finished stage prints when no bar is drawn: `measuring: 1,234 values in 3.2 s`.
pub fn stage_line(stage: &str, len: u64, unit: planner::Unit, seconds: f64) -> String {
    let amount = match unit {
        planner::Unit::Bytes => human::bytes(len),
        planner::Unit::Items(u) => format!("{} {u}", human::count(len)),
    };
    format!("{stage}: {amount} in {}", human::seconds(seconds))
}

/// A stage in flight: its bar (hidden when not drawn), and what its line says.
struct Stage {
    bar: ProgressBar,
    name: String,
    len: u64,
    unit: planner::Unit,
    t0: Instant,
}

/// The planner's progress as bars and status lines of a [`Printer`].
pub struct Bars {
    printer: Printer,
    stage: Mutex<Option<Stage>>,
}

impl Bars {
    pub fn new(printer: &Printer) -> Bars {
        Bars {
            printer: *printer,
            stage: Mutex::new(None),
        }
    }

    fn with(&self, f: impl FnOnce(&mut Option<Stage>)) {
        let mut stage = self.stage.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut stage)
    }
}

impl planner::Progress for Bars {
    fn start(&self, stage: &str, len: u64, unit: planner::Unit) {
        let bar = match unit {
            planner::Unit::Items(u) => self.printer.count_bar(len, stage, u),
            planner::Unit::Bytes => self.printer.bytes_bar(len, stage),
        };
        self.with(|s| {
            *s = Some(Stage {
                bar,
                name: stage.to_string(),
                len,
                unit,
                t0: Instant::now(),
            })
        });
    }

    fn advance(&self, n: u64) {
        self.with(|s| {
            if let Some(s) = s {
                s.bar.inc(n)
            }
        });
    }

    fn finish(&self) {
        let printer = self.printer;
        self.with(|s| {
            if let Some(s) = s.take() {
                s.bar.finish_and_clear();
                printer.info(&stage_line(
                    &s.name,
                    s.len,
                    s.unit,
                    s.t0.elapsed().as_secs_f64(),
                ));
            }
        });
    }

    fn status(&self, text: &str) {
        self.printer.info(text);
    }

    fn warn(&self, text: &str) {
        let printer = self.printer;
        self.with(|s| match s {
            Some(s) => s.bar.suspend(|| printer.warn(text)),
            None => printer.warn(text),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_line_has_its_unit_and_time() {
        assert_eq!(
            stage_line(
                "measuring",
                1_980_760_064,
                planner::Unit::Items("values"),
                63.2
            ),
            "measuring: 1,980,760,064 values in 1 min 03 s"
        );
        assert_eq!(
            stage_line("writing", 3 << 30, planner::Unit::Bytes, 4.04),
            "writing: 3.00 GiB in 4.0 s"
        );
    }
}
