//! Helpers shared by the long-lived client commands (`lease keep-alive`,
//! `watch`, `elect`, `lock`): printing that reaches the terminal at once.
//! (Moving a failed stream to the next endpoint is the client library's.)
//!
//! Owns: nothing but this helper. Must never: hold state, talk to the
//! network, or buffer output (these commands run until interrupted, so what
//! they print has to show up as it happens).

use std::io::Write;

use anyhow::Context;

/// Writes `s` to stdout and flushes it.
pub(super) fn print(s: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())
        .and_then(|()| out.flush())
        .context("writing output")
}
