//! The `warden` binary: parses the command line, runs the command on a tokio
//! runtime, and turns a failure into one `Error: …` line on stderr and exit
//! code 1. Logging (`WARDEN_LOG`, default `info`, to stderr) is set up only
//! for `server` and `dev`; client commands print nothing but their output.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
mod cli;

/// mimalloc instead of glibc's malloc: a put allocates and frees dozens of
/// small buffers on several threads, and glibc's arenas spent about a sixth
/// of a member's CPU on them (docs/benchmarks.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.is_server() {
        init_tracing(cli.log_json());
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // A task woken by the running one (the HTTP/2 connection woken by a
    // finished response) otherwise runs next, before the other ready
    // requests, and flushes each response with its own write: without the
    // LIFO slot it runs after them and writes their responses together
    // (docs/benchmarks.md, "The runtime's LIFO slot": 1.1-1.3x on loaded
    // reads and writes). Needs tokio's unstable API, which
    // .cargo/config.toml turns on.
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.on_thread_park(collect_when_idle);
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::anyhow!("starting the async runtime: {e}")),
    };
    match runtime.block_on(cli.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Lets mimalloc give back what this thread freed, at most once a second,
/// when a runtime worker runs out of work (tokio's `on_thread_park`).
///
/// mimalloc returns freed pages to the system a delay after they are freed
/// (`purge_delay`, 1 s), but only when the thread that owns them allocates
/// or frees again: a member that goes quiet after a burst of writes, or
/// after a compaction freed most of its history, kept those pages resident.
/// Purging at once on every free (`MIMALLOC_PURGE_DELAY=0`) cost 0.89-0.95x
/// of put throughput. A rate-limited `mi_collect` on park costs one
/// clock read per park and returned 3 MB after 300 000 puts and 15 MB after
/// compacting them (docs/benchmarks.md, "Memory: a smaller log cache and
/// idle collection").
fn collect_when_idle() {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    LAST.with(|last| {
        if last
            .get()
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        last.set(Some(now));
        // SAFETY: mi_collect takes no pointers and has no preconditions: it
        // collects the calling thread's heap (mimalloc is the global
        // allocator) and purges expired arena ranges process-wide under
        // mimalloc's own guard.
        unsafe { libmimalloc_sys::mi_collect(false) };
    });
}

/// Prints `Error: <message>` as a single line and returns exit code 1.
fn fail(e: &anyhow::Error) -> ExitCode {
    let message = format!("{e:#}");
    let one_line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    // Not eprintln!: it panics when stderr is closed.
    let _ = writeln!(std::io::stderr(), "Error: {one_line}");
    ExitCode::from(1)
}

fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("WARDEN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // try_init: a subscriber set elsewhere is not worth dying over.
    if json {
        // One JSON object per line, as etcd logs: a slow request's id is
        // in "fields" ("request_id"); at debug, the request spans' fields
        // (id, method) are in "spans".
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .try_init();
        return;
    }
    // Colour only on a terminal: logs usually go to files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}
