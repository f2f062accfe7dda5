//! Helpers shared by the long-lived client commands (`lease keep-alive`,
//! `watch`, `elect`, `lock`): printing that reaches the terminal at once, and
//! the pause before a failed stream is retried on the next endpoint.
//!
//! Owns: nothing but these two helpers. Must never: hold state, talk to the
//! network, or buffer output (these commands run until interrupted, so what
//! they print has to show up as it happens).

use std::io::Write;
use std::time::Duration;

use anyhow::Context;

/// Pause between attempts when a stream's endpoint fails.
pub(super) const RETRY: Duration = Duration::from_millis(300);

/// Writes `s` to stdout and flushes it.
pub(super) fn print(s: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())
        .and_then(|()| out.flush())
        .context("writing output")
}
