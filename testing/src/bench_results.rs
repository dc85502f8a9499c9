//! Machine-readable benchmark results, for `scripts/bench-all.sh`.
//!
//! The repository's benchmarks print their tables for people; when the environment variable
//! `BENCH_RESULTS` names a file, each also appends one JSON object per measured line to it, which
//! the report script (`scripts/bench-report.py`) turns into the README's tables and the charts in
//! `docs/`. Nothing is written when the variable is unset.

use std::io::Write;

/// The variable naming the file results are appended to.
pub const BENCH_RESULTS: &str = "BENCH_RESULTS";

/// One measured line: ours against the raw client or peer it replaces (`raw`), in `unit`
/// (higher is better for rates such as `events/s`; lower for times such as `ns`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BenchLine<'a> {
    /// The benchmark (`postgres_append`, `zenoh_bus`, ...).
    pub bench: &'a str,
    /// The line within it (`1 writer`, `publish`, ...).
    pub case: &'a str,
    /// Our figure.
    pub ours: f64,
    /// The raw client's figure in the same run, if the line has one.
    pub raw: Option<f64>,
    /// The unit of both figures.
    pub unit: &'a str,
}

/// Appends `line` to the file named by `BENCH_RESULTS`, if set. A file that cannot be written is
/// logged (`tracing`) and otherwise ignored: the benchmark's printed table still stands.
pub fn record(line: &BenchLine<'_>) {
    let Some(path) = std::env::var_os(BENCH_RESULTS) else { return };
    let written = serde_json::to_string(line).map_err(std::io::Error::other).and_then(|json| {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        writeln!(file, "{json}")
    });
    if let Err(e) = written {
        tracing::warn!(path = %path.to_string_lossy(), error = %e, "cannot append to {BENCH_RESULTS}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_serializes_with_every_field() {
        let line = BenchLine { bench: "b", case: "1 writer", ours: 2.5, raw: Some(5.0), unit: "events/s" };
        assert_eq!(serde_json::to_string(&line).unwrap(), r#"{"bench":"b","case":"1 writer","ours":2.5,"raw":5.0,"unit":"events/s"}"#);
    }
}
