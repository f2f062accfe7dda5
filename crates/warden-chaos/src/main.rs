//! `warden-chaos`: Jepsen-style fault injection for warden (see
//! `warden_chaos` and docs/testing.md). Exit status: 0 when every check
//! passed, 1 on a violation, 2 when the harness itself failed.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use clap::Parser;
use warden_chaos::args::Args;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warden-chaos: cannot start the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        if let Some(dir) = &args.check {
            return warden_chaos::check_dir(dir);
        }
        let opts = args.options()?;
        tokio::select! {
            r = warden_chaos::run(opts) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    match result {
        Ok(report) => {
            print!("{}", report.render());
            if report.violations() == 0 {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("warden-chaos: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
