//! Collection: demand samples from a metric source, strictly parsed (bad data is an error,
//! never zero).

mod demo;
mod prometheus;

pub use demo::TraceSource;
pub use prometheus::{PrometheusSource, max_points_per_query, retry_backoff_total};

use crate::domain::Timestamp;

/// One demand sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Unix seconds.
    pub at: Timestamp,
    /// Demand, finite and non-negative.
    pub value: f64,
}

/// A range of time to fetch, both ends inclusive, sampled every `step` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    /// First sample time.
    pub start: Timestamp,
    /// Last sample time.
    pub end: Timestamp,
    /// Seconds between samples.
    pub step: u64,
}

/// Why a fetch failed. Each is treated as missing data: never as zero demand.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum CollectError {
    /// The request did not complete within the timeout.
    #[error("request timed out")]
    Timeout,
    /// The server could not be reached.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The server answered with an HTTP error status.
    #[error("HTTP {status}: {message}")]
    Http {
        /// Status code.
        status: u16,
        /// Error text (Prometheus' `error` field when present).
        message: String,
    },
    /// The body is not a Prometheus API answer (truncated, not JSON, wrong result type).
    #[error("bad response: {0}")]
    BadResponse(String),
    /// The body exceeded the size limit.
    #[error("response larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The query returned no series.
    #[error("query returned no data")]
    Empty,
    /// Several series report at the newest time, where one was expected.
    #[error("query returned {0} series; exactly one is expected")]
    MultiSeries(usize),
    /// The newest sample was NaN, infinite or negative (older ones are gaps).
    #[error("invalid sample {value} at {at}")]
    InvalidSample {
        /// The value as Prometheus sent it.
        value: f64,
        /// Its time.
        at: Timestamp,
    },
    /// The newest sample is too old.
    #[error("stale: newest sample at {newest}, window ends at {end}")]
    Stale {
        /// Newest sample time.
        newest: Timestamp,
        /// End of the requested window.
        end: Timestamp,
    },
    /// Prometheus answered with warnings: the data may be partial.
    #[error("partial data: {0}")]
    Partial(String),
}

impl CollectError {
    /// Every value `kind()` can return.
    pub const KINDS: [&'static str; 11] = [
        "timeout",
        "connect",
        "http_5xx",
        "http_4xx",
        "bad_response",
        "too_large",
        "empty",
        "multi_series",
        "invalid_sample",
        "stale",
        "partial",
    ];

    /// Bounded label for metrics (`prescale_errors_total{stage="collector",kind=...}`).
    pub fn kind(&self) -> &'static str {
        match self {
            CollectError::Timeout => "timeout",
            CollectError::Connect(_) => "connect",
            CollectError::Http { status, .. } if *status >= 500 => "http_5xx",
            CollectError::Http { .. } => "http_4xx",
            CollectError::BadResponse(_) => "bad_response",
            CollectError::TooLarge { .. } => "too_large",
            CollectError::Empty => "empty",
            CollectError::MultiSeries(_) => "multi_series",
            CollectError::InvalidSample { .. } => "invalid_sample",
            CollectError::Stale { .. } => "stale",
            CollectError::Partial(_) => "partial",
        }
    }

    /// Whether trying again within the same loop can help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CollectError::Timeout | CollectError::Connect(_))
            || matches!(self, CollectError::Http { status, .. } if *status >= 500)
    }
}

/// Reads the demand signal of one workload over a time window.
#[async_trait::async_trait]
pub trait MetricSource: Send + Sync {
    /// Samples of `query` over `window`, oldest first.
    ///
    /// # Errors
    /// [`CollectError`]; an empty, NaN, stale or multi-series answer is an error.
    async fn fetch(&self, query: &str, window: TimeWindow) -> Result<Vec<Sample>, CollectError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_lists_every_kind() {
        let all = [
            CollectError::Timeout,
            CollectError::Connect(String::new()),
            CollectError::Http {
                status: 503,
                message: String::new(),
            },
            CollectError::Http {
                status: 400,
                message: String::new(),
            },
            CollectError::BadResponse(String::new()),
            CollectError::TooLarge { limit: 1 },
            CollectError::Empty,
            CollectError::MultiSeries(2),
            CollectError::InvalidSample {
                value: f64::NAN,
                at: 0,
            },
            CollectError::Stale { newest: 0, end: 1 },
            CollectError::Partial(String::new()),
        ];
        let kinds: Vec<&str> = all.iter().map(CollectError::kind).collect();
        assert_eq!(kinds, CollectError::KINDS.to_vec());
        assert!(all[0].is_retryable() && all[2].is_retryable() && !all[3].is_retryable());
    }
}
