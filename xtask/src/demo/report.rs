//! The demo's report, written for someone who has never seen a service mesh: numbered
//! sections, one `do:` line per action, and one marked line per thing observed.
//!
//! ```text
//! 1. Two enrolled pods talk; the node proxy carries the connection
//!    do:   from shop/client, connect to shop/web at 10.244.1.2:8080 and send "hello"
//!    [ok]   web answered and echoed "hello"
//!    [FAIL] the proxy counted it leaving client: ... stayed at 0
//! ```
//!
//! Invariant: a check is only printed from an observed outcome; a check whose outcome may have
//! been spoiled by Ctrl-C (which also reaches the proxy and the pods' processes) is not printed
//! at all: [`Report::check`] returns [`Interrupted`] instead.

use std::fmt::Display;

use marrow_tests::stop::{Interrupted, Stop};

/// Marker of a check that held.
const OK: &str = "[ok]  ";
/// Marker of a check that did not.
const FAIL: &str = "[FAIL]";
/// Indentation of the lines under a section title.
const INDENT: &str = "   ";

/// Collects and prints the demo's checks.
#[derive(Debug)]
pub struct Report<'a> {
    stop: &'a Stop,
    sections: usize,
    passed: usize,
    failed: Vec<String>,
}

impl<'a> Report<'a> {
    /// An empty report whose checks give way to `stop`.
    pub fn new(stop: &'a Stop) -> Report<'a> {
        Report {
            stop,
            sections: 0,
            passed: 0,
            failed: Vec::new(),
        }
    }

    /// Starts the next numbered section.
    pub fn section(&mut self, title: &str) {
        self.sections += 1;
        println!("\n{}. {title}", self.sections);
    }

    /// Prints what the demo does next.
    pub fn action(&self, what: impl Display) {
        println!("{INDENT}do:    {what}");
    }

    /// Prints a line of context under the current section (no verdict).
    pub fn note(&self, text: impl Display) {
        println!("{INDENT}       {text}");
    }

    /// Prints and records what was observed, unless a signal arrived meanwhile.
    ///
    /// # Errors
    /// [`Interrupted`] when the demo was asked to stop: the outcome may be the signal's doing.
    pub fn check(&mut self, passed: bool, saw: impl Display) -> Result<(), Interrupted> {
        self.stop.check()?;
        self.record(passed, saw);
        Ok(())
    }

    /// Prints and records an observation regardless of signals (used after clean-up).
    pub fn record(&mut self, passed: bool, saw: impl Display) {
        let saw = saw.to_string();
        println!("{INDENT}{} {saw}", if passed { OK } else { FAIL });
        if passed {
            self.passed += 1;
        } else {
            self.failed.push(saw);
        }
    }

    /// Whether any check failed so far.
    pub fn any_failed(&self) -> bool {
        !self.failed.is_empty()
    }

    /// Prints the tally and returns an error naming the failed checks, if any.
    ///
    /// # Errors
    /// When a check failed.
    pub fn finish(&self) -> anyhow::Result<()> {
        let total = self.passed + self.failed.len();
        if self.failed.is_empty() {
            println!("\nAll {total} checks passed.");
            return Ok(());
        }
        println!("\n{} of {total} checks FAILED:", self.failed.len());
        for saw in &self.failed {
            println!("{INDENT}{FAIL} {saw}");
        }
        anyhow::bail!("{} of {total} demo checks failed", self.failed.len())
    }
}
