//! The standard Prometheus process metrics, as Go's client (and so etcd)
//! exports them: `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`. Read from `/proc/self` at each scrape
//! (Linux only: elsewhere, and for any file that cannot be read or parsed,
//! the metric is left out rather than reported wrong).
//!
//! Must never: panic on what `/proc` holds, or cache a value across scrapes.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second in `/proc` times (the kernel's `USER_HZ`, 100 on
/// every architecture Linux exports to user space this way).
const USER_HZ: f64 = 100.0;

/// What one scrape read.
#[derive(Debug, Default, PartialEq)]
struct Process {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<f64>,
    virtual_bytes: Option<f64>,
    start_time: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
}

/// Fields of `/proc/self/stat` after the command name, which is in
/// parentheses and may itself hold spaces or parentheses: field 3 (state)
/// is index 0 of the result.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// Reads `/proc/self/stat` (CPU, virtual memory, start) against
/// `/proc/stat`'s boot time.
fn parse_stat(stat: &str, proc_stat: &str) -> Process {
    let mut p = Process::default();
    let Some(f) = stat_fields(stat) else {
        return p;
    };
    // Field n of proc(5) is f[n - 3].
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    if let (Some(u), Some(s)) = (num(14), num(15)) {
        p.cpu_seconds = Some((u + s) / USER_HZ);
    }
    p.virtual_bytes = num(23);
    let boot = proc_stat.lines().find_map(|l| {
        l.strip_prefix("btime ")
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    if let (Some(boot), Some(start)) = (boot, num(22)) {
        p.start_time = Some(boot + start / USER_HZ);
    }
    p
}

/// The soft "Max open files" limit in `/proc/self/limits`.
fn parse_max_fds(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resident memory in bytes: `VmRSS` (kB) in `/proc/self/status`.
fn parse_rss(status: &str) -> Option<f64> {
    status.lines().find_map(|l| {
        let kb: f64 = l
            .strip_prefix("VmRSS:")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(kb * 1024.0)
    })
}

fn read() -> Process {
    let file = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mut p = parse_stat(&file("/proc/self/stat"), &file("/proc/stat"));
    p.resident_bytes = parse_rss(&file("/proc/self/status"));
    p.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as f64);
    p.max_fds = parse_max_fds(&file("/proc/self/limits"));
    p
}

/// Encodes the process metrics at each scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let p = read();
        if let Some(v) = p.cpu_seconds {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                p.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                p.virtual_bytes,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                p.start_time,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                p.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                p.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let g = ConstGauge::new(v);
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real line, with a command name holding a space and a parenthesis.
    const STAT: &str = "4242 (warden (x) s) S 1 4242 4242 0 -1 4194560 1513 0 0 0 \
        250 50 0 0 20 0 9 0 12345 1000000 2000 18446744073709551615 1 1 0 0 0 0 0 \
        4096 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_is_parsed_past_an_odd_command_name() {
        let p = parse_stat(STAT, "cpu 1 2 3\nbtime 1700000000\n");
        assert_eq!(p.cpu_seconds, Some(3.0));
        assert_eq!(p.virtual_bytes, Some(1_000_000.0));
        assert_eq!(p.start_time, Some(1_700_000_000.0 + 123.45));
    }

    #[test]
    fn garbage_gives_nothing_rather_than_a_wrong_value() {
        assert_eq!(parse_stat("", ""), Process::default());
        assert_eq!(parse_stat("1 (x) S", ""), Process::default());
        let p = parse_stat("1 (x) S a b c", "btime x");
        assert_eq!(p, Process::default());
        assert_eq!(parse_max_fds("nothing here"), None);
        assert_eq!(parse_rss("VmRSS: lots"), None);
    }

    #[test]
    fn limits_and_rss() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024.0));
        assert_eq!(
            parse_rss("Name:\tx\nVmRSS:\t    8000 kB\n"),
            Some(8_192_000.0)
        );
    }

    /// On this (Linux) machine every metric is read.
    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_whole() {
        let p = read();
        assert!(p.cpu_seconds.is_some_and(|v| v >= 0.0), "{p:?}");
        assert!(p.resident_bytes.is_some_and(|v| v > 0.0), "{p:?}");
        assert!(p.open_fds.is_some_and(|v| v >= 3.0), "{p:?}");
        assert!(p.start_time.is_some_and(|v| v > 1.5e9), "{p:?}");
        assert!(p.max_fds.is_some(), "{p:?}");
    }
}
