//! Checkers: pure functions from a recorded [`History`] to a verdict per
//! workload. They never talk to a cluster, so a saved history can be checked
//! again (`warden-chaos --check DIR`) and every checker is unit-tested on
//! small hand-made histories.

pub mod bank;
pub mod counter;
pub mod linearizable;
pub mod lock;
pub mod register;
pub mod watch;

use crate::history::{Call, History, Op, Outcome};

/// One violation and the smallest part of the history that shows it.
#[derive(Clone, Debug)]
pub struct Violation {
    pub what: String,
    pub window: Vec<Op>,
}

/// A checker's verdict.
#[derive(Clone, Debug)]
pub struct CheckResult {
    pub name: &'static str,
    /// What was checked, for the summary line.
    pub summary: String,
    /// How many operations (or events) were checked.
    pub checked: usize,
    pub violations: Vec<Violation>,
    /// Things that limit the verdict without being violations.
    pub notes: Vec<String>,
}

impl CheckResult {
    pub fn new(name: &'static str) -> CheckResult {
        CheckResult {
            name,
            summary: String::new(),
            checked: 0,
            violations: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// The one summary line.
    pub fn line(&self) -> String {
        let verdict = if self.violations.is_empty() {
            "ok".to_string()
        } else {
            format!("{} VIOLATION(S)", self.violations.len())
        };
        format!("{}: {verdict} — {}", self.name, self.summary)
    }

    /// The summary line, notes, and each violation with its window.
    pub fn report(&self) -> String {
        let mut out = self.line();
        for n in &self.notes {
            out.push_str(&format!("\n  note: {n}"));
        }
        for v in &self.violations {
            out.push_str(&format!("\n  violation: {}", v.what));
            if !v.window.is_empty() {
                out.push_str(&format!(
                    "\n  window ({} ops, times in ms since start):",
                    v.window.len()
                ));
                for op in &v.window {
                    out.push_str(&format!(
                        "\n    [{:>10.3} .. {:>10.3}] {}",
                        op.invoke_ns as f64 / 1e6,
                        op.complete_ns as f64 / 1e6,
                        op.render()
                    ));
                }
            }
        }
        out
    }
}

/// `op` and every operation satisfying `pred` whose time overlaps it (an
/// indeterminate one counts as lasting forever), in invocation order.
pub fn overlapping(h: &History, op: &Op, pred: impl Fn(&Call) -> bool) -> Vec<Op> {
    let mut w: Vec<Op> = h
        .ops
        .iter()
        .filter(|o| o.id == op.id || pred(&o.call))
        .filter(|o| {
            let end = if o.outcome == Outcome::Info {
                u64::MAX
            } else {
                o.complete_ns
            };
            o.id == op.id || (o.invoke_ns <= op.complete_ns && end >= op.invoke_ns)
        })
        .cloned()
        .collect();
    w.sort_by_key(|o| (o.invoke_ns, o.id));
    w
}

/// Runs the checkers of the workloads the run used.
pub fn run_all(h: &History) -> Vec<CheckResult> {
    let has = |w: &str| h.meta.workloads.iter().any(|x| x == w);
    let mut out = Vec::new();
    if has("register") {
        out.push(register::check(h, register::BUDGET));
    }
    if has("bank") {
        out.push(bank::check(h));
    }
    if has("lock") {
        out.push(lock::check(h));
    }
    if has("watch") {
        out.push(watch::check(h));
    }
    if has("counter") {
        out.push(counter::check(h));
    }
    out
}
