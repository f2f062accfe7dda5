//! The pure arithmetic of `warden bench` reports: medians and ratios of
//! `--against` pairs, percentile curves of a latency histogram, the
//! `--failover` timeline (successes and failures per time bucket) and the
//! longest gap without a success.
//!
//! Owns: nothing but these functions. Must never: touch the network, the
//! clock or files (everything here is computed from numbers it is given, so
//! it is unit-tested directly).

use hdrhistogram::Histogram;

/// The median of `values` (the mean of the two middle ones when there is an
/// even number); `None` when there are none or one is not a number.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// `a / b`, or `None` when `b` is zero (or either is not finite).
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    let r = a / b;
    (b != 0.0 && r.is_finite()).then_some(r)
}

/// Where a percentile sits on the HdrHistogram-style x axis: the number of
/// nines, `-log10(1 - p/100)` (0 at 0 %, 1 at 90 %, 2 at 99 %, 3 at 99.9 %).
pub fn nines(percentile: f64) -> f64 {
    let rest = (1.0 - percentile / 100.0).max(1e-12);
    -rest.log10()
}

/// The percentile at `x` nines (the inverse of [`nines`]).
pub fn percentile_at(x: f64) -> f64 {
    100.0 * (1.0 - 10f64.powf(-x))
}

/// The latency percentile curve of `h` (values in microseconds): points
/// (percentile, latency in ms) every 0.05 nines from 0 % up to the deepest
/// percentile the sample supports (`log10(count)` nines, at most 5 =
/// 99.999 %), then the maximum at 100 %.
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let deepest = (h.len() as f64).log10().clamp(0.0, 5.0);
    let steps = (deepest / 0.05).floor() as u64;
    let mut points: Vec<(f64, f64)> = (0..=steps)
        .map(|i| {
            let p = percentile_at(i as f64 * 0.05);
            (p, h.value_at_quantile(p / 100.0) as f64 / 1000.0)
        })
        .collect();
    points.push((100.0, h.max() as f64 / 1000.0));
    points
}

/// One `--timeline` bucket: its start (ms from the run's start), requests
/// that succeeded and that failed in it (by completion time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub start_ms: u64,
    pub ok: u64,
    pub failed: u64,
}

/// Counts `events` ((completion time in µs from the start, succeeded)) in
/// buckets of `bucket_ms`, covering `0..run_us` with no bucket left out
/// (empty ones included, so a stall shows as zeros).
pub fn timeline(events: &[(u64, bool)], bucket_ms: u64, run_us: u64) -> Vec<Bucket> {
    let width = bucket_ms.max(1) * 1000;
    let last = events.iter().map(|e| e.0).max().unwrap_or(0).max(run_us);
    let n = last.div_ceil(width).max(1);
    let mut out: Vec<Bucket> = (0..n)
        .map(|i| Bucket {
            start_ms: i * bucket_ms.max(1),
            ok: 0,
            failed: 0,
        })
        .collect();
    for &(t, ok) in events {
        // An event exactly at the end belongs to the last bucket.
        let i = (t / width).min(n - 1) as usize;
        if let Some(b) = out.get_mut(i) {
            if ok {
                b.ok += 1;
            } else {
                b.failed += 1;
            }
        }
    }
    out
}

/// The longest time without a successful request: (start µs, end µs) from
/// the run's start, between consecutive successes; the run's start and end
/// (`run_us`) count as bounds, so a run that never recovers has its gap run
/// to the end.
pub fn longest_gap(events: &[(u64, bool)], run_us: u64) -> (u64, u64) {
    let mut ok: Vec<u64> = events.iter().filter(|e| e.1).map(|e| e.0).collect();
    ok.sort_unstable();
    let mut best = (0, 0);
    let mut prev = 0;
    for t in ok.into_iter().chain(std::iter::once(run_us)) {
        let t = t.max(prev);
        if t - prev > best.1 - best.0 {
            best = (prev, t);
        }
        prev = t;
    }
    best
}

/// The timeline as CSV: `time_s,successes,failures`, one line per bucket.
pub fn timeline_csv(buckets: &[Bucket]) -> String {
    let mut s = String::from("time_s,successes,failures\n");
    for b in buckets {
        s.push_str(&format!(
            "{:.1},{},{}\n",
            b.start_ms as f64 / 1000.0,
            b.ok,
            b.failed
        ));
    }
    s
}

/// A wall-clock time (ms since the Unix epoch) as `HH:MM:SS.mmm` UTC.
pub fn utc_time_of_day(unix_ms: u64) -> String {
    let ms = unix_ms % 1000;
    let s = (unix_ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}.{ms:03}", s / 3600, (s / 60) % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(6.0, 3.0), Some(2.0));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(0.0, 0.0), None);
        assert_eq!(ratio(0.0, 2.0), Some(0.0));
    }

    #[test]
    fn nines_axis() {
        assert!((nines(0.0) - 0.0).abs() < 1e-9);
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-6);
        assert!((percentile_at(2.0) - 99.0).abs() < 1e-9);
        assert!(nines(100.0).is_finite());
    }

    #[test]
    fn curve_is_monotonic_and_bounded_by_the_sample() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            h.record(v * 10).unwrap();
        }
        let c = percentile_curve(&h);
        // 1000 values support 3 nines: 0.05 steps from 0 to 3, then max.
        assert_eq!(c.len(), 61 + 1);
        assert!(c.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(c.last().unwrap().0, 100.0);
        assert!((c.last().unwrap().1 - 10.0).abs() < 0.01);
        assert!(percentile_curve(&Histogram::<u64>::new(3).unwrap()).is_empty());
    }

    #[test]
    fn timeline_buckets_include_empty_ones() {
        let ev = [
            (10_000, true),
            (99_999, true),
            (100_000, false),
            (350_000, true),
        ];
        let b = timeline(&ev, 100, 400_000);
        assert_eq!(
            b,
            vec![
                Bucket {
                    start_ms: 0,
                    ok: 2,
                    failed: 0
                },
                Bucket {
                    start_ms: 100,
                    ok: 0,
                    failed: 1
                },
                Bucket {
                    start_ms: 200,
                    ok: 0,
                    failed: 0
                },
                Bucket {
                    start_ms: 300,
                    ok: 1,
                    failed: 0
                },
            ]
        );
        assert_eq!(
            timeline_csv(&b[..2]),
            "time_s,successes,failures\n0.0,2,0\n0.1,0,1\n"
        );
        // A partial last bucket is kept.
        assert_eq!(timeline(&ev, 100, 450_000).len(), 5);
        assert_eq!(timeline(&[], 100, 0).len(), 1);
    }

    #[test]
    fn gaps() {
        let ev = [(100, true), (500, false), (900, true), (1000, true)];
        assert_eq!(longest_gap(&ev, 1100), (100, 900));
        // Unordered input, and a run that never recovers.
        let ev = [(300, true), (100, true), (400, false)];
        assert_eq!(longest_gap(&ev, 2000), (300, 2000));
        // Nothing succeeded: the whole run.
        assert_eq!(longest_gap(&[(5, false)], 50), (0, 50));
    }

    #[test]
    fn time_of_day() {
        assert_eq!(utc_time_of_day(0), "00:00:00.000");
        assert_eq!(utc_time_of_day(86_400_000 + 3_723_045), "01:02:03.045");
    }
}
