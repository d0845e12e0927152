//! Measuring (the process's CPU time and memory, medians) and reporting:
//! the checks, and the summary table that ends a run.

use std::time::Duration;

/// A failed correctness check is a finding, not a reason to stop measuring.
pub fn check(ok: bool, what: &str) {
    if !ok {
        println!("CHECK FAILED: {what}");
    }
}

/// CPU time of the whole process (user + system, every thread): server and
/// clients share it, so it is what the scenario cost the machine.
pub fn cpu_time() -> Duration {
    // /proc reports in USER_HZ, which Linux fixes at 100 for user space.
    const TICKS_PER_SEC: u64 = 100;
    let stat = read_trimmed("/proc/self/stat");
    // The command name may hold spaces; fields are counted after its ')'.
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default()
        .split_whitespace()
        .skip(11) // state .. cmajflt: utime is field 14 of the whole line
        .take(2)
        .filter_map(|field| field.parse().ok())
        .collect();
    let ticks: u64 = fields.iter().sum();
    Duration::from_millis(ticks * 1000 / TICKS_PER_SEC)
}

/// Resident set size in KiB.
pub fn rss_kib() -> u64 {
    read_trimmed("/proc/self/status")
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|_| "n/a".to_owned())
}

pub const MIB: f64 = 1024.0 * 1024.0;

pub fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

pub fn median<T: Copy + Ord>(values: &[T]) -> T {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted[sorted.len() / 2]
}

pub fn min<T: Copy + Ord>(values: &[T]) -> T {
    values.iter().copied().min().expect("some values")
}

pub fn max<T: Copy + Ord>(values: &[T]) -> T {
    values.iter().copied().max().expect("some values")
}

/// One line of the summary table.
pub struct Row {
    scenario: &'static str,
    metric: String,
    value: String,
    goal: &'static str,
    /// `None` for figures without a goal.
    met: Option<bool>,
}

impl Row {
    pub fn new(
        scenario: &'static str,
        metric: &str,
        value: String,
        goal: &'static str,
        met: bool,
    ) -> Self {
        Self {
            scenario,
            metric: metric.to_owned(),
            value,
            goal,
            met: Some(met),
        }
    }

    pub fn info(scenario: &'static str, metric: &str, value: String) -> Self {
        Self {
            scenario,
            metric: metric.to_owned(),
            value,
            goal: "",
            met: None,
        }
    }
}

pub fn print_summary(rows: &[Row]) {
    let width = |column: fn(&Row) -> usize| rows.iter().map(column).max().unwrap_or(0);
    let widths = [
        width(|row| row.scenario.len()),
        width(|row| row.metric.len()),
        width(|row| row.value.len()),
        width(|row| row.goal.len()),
    ];
    println!("\n== summary");
    for row in rows {
        let verdict = match row.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        println!(
            "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {verdict}",
            row.scenario,
            row.metric,
            row.value,
            row.goal,
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
        );
    }
}
