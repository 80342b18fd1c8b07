//! A built-in source that plays back a recorded trace on a repeating timeline: the demo of
//! `prescale serve` without Prometheus.

use crate::sim::Trace;

use super::{CollectError, MetricSource, Sample, TimeWindow};

/// Plays `trace` back in a loop: the sample at time `t` is row `(t / cadence + offset) mod
/// rows`. The query names the row offset (`demo:<rows>`), so several demo workloads can play
/// different parts of one trace.
#[derive(Debug, Clone)]
pub struct TraceSource {
    values: Vec<f64>,
    cadence: u64,
}

impl TraceSource {
    /// A source over `trace`'s values at its cadence.
    pub fn new(trace: &Trace) -> Self {
        Self {
            values: trace.values.clone(),
            cadence: trace.cadence(),
        }
    }

    /// The trace cadence, seconds.
    pub fn cadence(&self) -> u64 {
        self.cadence
    }
}

#[async_trait::async_trait]
impl MetricSource for TraceSource {
    async fn fetch(&self, query: &str, window: TimeWindow) -> Result<Vec<Sample>, CollectError> {
        let offset: i64 = query
            .strip_prefix("demo:")
            .and_then(|o| o.trim().parse().ok())
            .ok_or_else(|| {
                CollectError::BadResponse(format!(
                    "demo source expects `demo:<offset>`, got `{query}`"
                ))
            })?;
        let n = self.values.len() as i64;
        if n == 0 {
            return Err(CollectError::Empty);
        }
        let step = window.step.max(1) as i64;
        let first = window.start.div_euclid(step) * step;
        let mut out = Vec::new();
        let mut t = if first < window.start {
            first + step
        } else {
            first
        };
        while t <= window.end {
            let row = (t / self.cadence as i64 + offset).rem_euclid(n) as usize;
            out.push(Sample {
                at: t,
                value: self.values[row],
            });
            t += step;
        }
        if out.is_empty() {
            return Err(CollectError::Empty);
        }
        Ok(out)
    }
}
