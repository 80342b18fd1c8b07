//! Reading demand traces (`timestamp,value` CSV) with errors that name the file and line.

use std::path::{Path, PathBuf};

use crate::domain::Timestamp;

/// A validated trace: strictly increasing unix-second timestamps in `0..1e11`, demand
/// finite and in `0..=1e18`.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// Where it was read from (for messages and reports).
    pub path: PathBuf,
    /// Row timestamps, unix seconds, strictly increasing.
    pub timestamps: Vec<Timestamp>,
    /// Demand per row, finite and `>= 0`.
    pub values: Vec<f64>,
}

/// Why a trace could not be read. Every variant names the file; row errors name the line.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be opened or read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The trace file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file has no content at all.
    #[error("{path}: file is empty (expected a header `timestamp,value` and rows)")]
    Empty {
        /// The trace file.
        path: PathBuf,
    },
    /// The first line is not `timestamp,value`.
    #[error("{path}:1: header must be `timestamp,value`, found `{found}`")]
    Header {
        /// The trace file.
        path: PathBuf,
        /// The header that was found.
        found: String,
    },
    /// A row is malformed or holds a value prescale cannot use.
    #[error("{path}:{line}: {message}")]
    Row {
        /// The trace file.
        path: PathBuf,
        /// 1-based line number in the file.
        line: u64,
        /// What is wrong with it.
        message: String,
    },
    /// Fewer than two rows: no cadence can be derived.
    #[error("{path}: only {rows} data row(s); a trace needs at least 2")]
    TooShort {
        /// The trace file.
        path: PathBuf,
        /// Rows found.
        rows: usize,
    },
}

impl TraceError {
    /// Bounded label for metrics and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            TraceError::Io { .. } => "io",
            TraceError::Empty { .. } => "empty",
            TraceError::Header { .. } => "header",
            TraceError::Row { .. } => "row",
            TraceError::TooShort { .. } => "too_short",
        }
    }
}

impl Trace {
    /// Reads and validates a trace file.
    ///
    /// # Errors
    /// A [`TraceError`] naming the file (and line) for: unreadable or empty files, a wrong header,
    /// a wrong number of fields, non-numeric, NaN, infinite or negative values or values above
    /// 1e18, timestamps that are not whole unix seconds in `0..1e11` (milliseconds), and
    /// timestamps that are duplicated or go backwards.
    pub fn read(path: &Path) -> Result<Trace, TraceError> {
        let bytes = std::fs::read(path).map_err(|source| TraceError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &bytes)
    }

    /// Parses trace CSV content; `path` is only used in messages.
    ///
    /// # Errors
    /// As [`Trace::read`].
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Trace, TraceError> {
        let p = || path.to_path_buf();
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(TraceError::Empty { path: p() });
        }
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(bytes);
        let header = rdr.headers().map_err(|e| TraceError::Row {
            path: p(),
            line: 1,
            message: e.to_string(),
        })?;
        let names: Vec<&str> = header
            .iter()
            .map(|h| h.trim_start_matches('\u{feff}'))
            .collect();
        if names != ["timestamp", "value"] {
            return Err(TraceError::Header {
                path: p(),
                found: names.join(","),
            });
        }
        let mut timestamps = Vec::new();
        let mut values = Vec::new();
        for rec in rdr.records() {
            let rec = rec.map_err(|e| TraceError::Row {
                path: p(),
                line: e.position().map_or(0, csv::Position::line),
                message: format!("unreadable row: {e}"),
            })?;
            let line = rec.position().map_or(0, csv::Position::line);
            let row_err = |message: String| TraceError::Row {
                path: p(),
                line,
                message,
            };
            if rec.len() != 2 {
                return Err(row_err(format!("expected 2 fields, found {}", rec.len())));
            }
            let ts = parse_timestamp(&rec[0]).map_err(&row_err)?;
            let value = parse_value(&rec[1]).map_err(&row_err)?;
            if let Some(&prev) = timestamps.last() {
                if ts == prev {
                    return Err(row_err(format!("duplicate timestamp {ts}")));
                }
                if ts < prev {
                    return Err(row_err(format!(
                        "timestamp {ts} is before the previous row's {prev} (rows must be sorted)"
                    )));
                }
            }
            timestamps.push(ts);
            values.push(value);
        }
        if timestamps.len() < 2 {
            return Err(TraceError::TooShort {
                path: p(),
                rows: timestamps.len(),
            });
        }
        Ok(Trace {
            path: path.to_path_buf(),
            timestamps,
            values,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when the trace has no rows (never the case for a parsed trace).
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The trace's cadence: the median spacing between rows, in seconds.
    pub fn cadence(&self) -> u64 {
        let mut d: Vec<i64> = self.timestamps.windows(2).map(|w| w[1] - w[0]).collect();
        d.sort_unstable();
        d.get(d.len() / 2).copied().unwrap_or(1).max(1) as u64
    }

    /// The value at a quantile `q` of demand (nearest rank), used by the suite's capacity rule.
    pub fn value_quantile(&self, q: f64) -> f64 {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        let idx = ((v.len() as f64 - 1.0) * q).round() as usize;
        v.get(idx.min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    }
}

/// Timestamps from here on are not unix seconds (this is the year 5138): most likely
/// milliseconds, which would otherwise read as a cadence a thousand times too long.
const MAX_UNIX_SECONDS: i64 = 100_000_000_000;

/// Largest demand a row may carry: far above any real rate, far below where the sums of a
/// long trace would overflow to infinity and the scores become NaN.
const MAX_VALUE: f64 = 1e18;

fn parse_timestamp(s: &str) -> Result<Timestamp, String> {
    let t = match s.parse::<i64>() {
        Ok(t) => t,
        Err(_) => match s.parse::<f64>() {
            // Out-of-range floats saturate and are refused by the range check below.
            Ok(f) if f.is_finite() && f.fract() == 0.0 => f as i64,
            _ => return Err(format!("timestamp `{s}` is not whole unix seconds")),
        },
    };
    if !(0..MAX_UNIX_SECONDS).contains(&t) {
        return Err(format!(
            "timestamp `{s}` is not unix seconds in 0..{MAX_UNIX_SECONDS} (milliseconds?)"
        ));
    }
    Ok(t)
}

fn parse_value(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("value `{s}` is not a number"))?;
    if v.is_nan() {
        return Err("value is NaN".into());
    }
    if v.is_infinite() {
        return Err(format!("value `{s}` is infinite"));
    }
    if v > MAX_VALUE {
        return Err(format!(
            "value {v:e} is above {MAX_VALUE:e}: sums of such values overflow the scores"
        ));
    }
    if v < 0.0 {
        return Err(format!("value {v} is negative (demand cannot be)"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Trace, TraceError> {
        Trace::parse(Path::new("t.csv"), s.as_bytes())
    }

    #[test]
    fn good_trace_parses_with_its_cadence() {
        let t = parse("timestamp,value\n0,1\n60,2.5\n120,0\n240,3\n").unwrap();
        assert_eq!(t.timestamps, vec![0, 60, 120, 240]);
        assert_eq!(t.values, vec![1.0, 2.5, 0.0, 3.0]);
        assert_eq!(t.cadence(), 60);
    }

    #[test]
    fn each_bad_input_names_file_and_line() {
        let cases = [
            ("", "empty", None),
            ("   \n", "empty", None),
            ("time,value\n0,1\n", "header", None),
            ("timestamp,value\n0,1\n60,abc\n", "row", Some(":3:")),
            ("timestamp,value\n0,1\n60,NaN\n", "row", Some(":3:")),
            ("timestamp,value\n0,1\n60,inf\n", "row", Some(":3:")),
            ("timestamp,value\n0,1\n60,-2\n", "row", Some(":3:")),
            ("timestamp,value\n0,1\n60,1\n60,2\n", "row", Some(":4:")),
            ("timestamp,value\n0,1\n60,1\n30,2\n", "row", Some(":4:")),
            ("timestamp,value\n0,1\nx,2\n", "row", Some(":3:")),
            ("timestamp,value\n0,1\n60,1,5\n", "row", Some(":3:")),
            ("timestamp,value\n0,1\n", "too_short", None),
            // A millisecond timestamp (here the last row, so still sorted), and a negative one.
            (
                "timestamp,value\n0,1\n60,1\n1700000000000,2\n",
                "row",
                Some(":4:"),
            ),
            ("timestamp,value\n-60,1\n0,1\n", "row", Some(":2:")),
            ("timestamp,value\n0,1\n60,1e300\n", "row", Some(":3:")),
        ];
        for (input, kind, loc) in cases {
            let err = parse(input).unwrap_err();
            assert_eq!(err.kind(), kind, "{input:?}: {err}");
            let msg = err.to_string();
            assert!(msg.starts_with("t.csv"), "{msg}");
            if let Some(loc) = loc {
                assert!(msg.contains(loc), "{input:?} -> {msg}");
            }
        }
    }

    #[test]
    fn damaged_traces_parse_valid_or_fail_naming_a_line_of_the_file() {
        // Random byte edits of a good trace (digits, separators, signs, newlines, invalid
        // UTF-8): never a panic; what parses keeps the invariants the replay relies on, and
        // a row error points at a line that exists.
        let good: String = std::iter::once("timestamp,value\n".to_string())
            .chain((0..12).map(|i| format!("{},{}.5\n", i * 60, i % 5)))
            .collect();
        let alphabet = b"0123456789,.-+eE \n\r\tx\xff";
        let mut seed = 17_u64;
        let mut next = |n: usize| (crate::testutil::next_u64(&mut seed) >> 33) as usize % n;
        let (mut parsed, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let mut bytes = good.clone().into_bytes();
            for _ in 0..1 + next(3) {
                let at = next(bytes.len() + 1);
                let b = alphabet[next(alphabet.len())];
                match next(3) {
                    0 => bytes.insert(at, b),
                    1 if at < bytes.len() => drop(bytes.remove(at)),
                    _ if at < bytes.len() => bytes[at] = b,
                    _ => bytes.push(b),
                }
            }
            let text = String::from_utf8_lossy(&bytes).into_owned();
            match Trace::parse(Path::new("t.csv"), &bytes) {
                Ok(t) => {
                    parsed += 1;
                    assert!(t.len() >= 2 && t.timestamps.len() == t.len(), "{text:?}");
                    assert!(t.timestamps.windows(2).all(|w| w[0] < w[1]), "{text:?}");
                    assert!(
                        t.timestamps
                            .iter()
                            .all(|t| (0..MAX_UNIX_SECONDS).contains(t)),
                        "{text:?}"
                    );
                    assert!(
                        t.values.iter().all(|v| (0.0..=MAX_VALUE).contains(v)),
                        "{text:?}"
                    );
                }
                Err(TraceError::Row { line, .. }) => {
                    refused += 1;
                    // Lines of the file: a final newline ends the last line, it opens none.
                    let newlines = bytes.iter().filter(|&&b| b == b'\n').count();
                    let lines = (newlines + usize::from(!bytes.ends_with(b"\n"))) as u64;
                    assert!(
                        (1..=lines).contains(&line),
                        "line {line} of {lines}: {text:?}"
                    );
                }
                Err(e) => {
                    refused += 1;
                    assert!(e.to_string().starts_with("t.csv"), "{e}");
                }
            }
        }
        // Both outcomes are exercised.
        assert!(
            parsed > 1000 && refused > 1000,
            "{parsed} parsed, {refused} refused"
        );
    }

    #[test]
    fn missing_file_is_an_io_error_naming_it() {
        let err = Trace::read(Path::new("/nonexistent/trace.csv")).unwrap_err();
        assert_eq!(err.kind(), "io");
        assert!(err.to_string().contains("/nonexistent/trace.csv"));
    }
}
