//! The Prometheus source (prometheus-http-query): chunked range queries, strict parsing,
//! retries with backoff, a per-request timeout and a body size cap.

use std::time::Duration;

use base64::Engine as _;
use prometheus_http_query::response::Data;
use serde::Deserialize;

use crate::config::PrometheusConfig;

use super::{CollectError, MetricSource, Sample, TimeWindow};

/// Prometheus refuses more than 11,000 points per series in one range query; stay below.
const MAX_POINTS: i64 = 10_000;
/// Largest response body accepted (a 10,000-point matrix of one series is ~400 KB).
const MAX_BODY: usize = 8 << 20;
/// First retry delay; doubles on each retry.
const BACKOFF: Duration = Duration::from_millis(100);

/// Time slept between the attempts of one request that fails `retries + 1` times.
pub fn retry_backoff_total(retries: u32) -> Duration {
    BACKOFF.saturating_mul(2_u32.saturating_pow(retries).saturating_sub(1))
}

/// Points per range query (both ends inclusive) the source never exceeds.
pub fn max_points_per_query() -> i64 {
    MAX_POINTS
}

/// Reads demand from a Prometheus server.
#[derive(Clone)]
pub struct PrometheusSource {
    client: prometheus_http_query::Client,
    timeout: Duration,
    retries: u32,
    stale_after: Duration,
}

/// The JSON envelope of every Prometheus API answer.
#[derive(Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    warnings: Vec<String>,
}

impl PrometheusSource {
    /// A source for `cfg`; reads the token, password and CA files now.
    ///
    /// # Errors
    /// An unreadable credential or CA file, or an invalid URL.
    pub fn new(cfg: &PrometheusConfig) -> anyhow::Result<Self> {
        use anyhow::Context;
        let mut headers = reqwest::header::HeaderMap::new();
        let secret = |v: String| -> anyhow::Result<reqwest::header::HeaderValue> {
            let mut h = reqwest::header::HeaderValue::from_str(&v)
                .context("credential is not a valid header value")?;
            h.set_sensitive(true);
            Ok(h)
        };
        if let Some(path) = &cfg.bearer_token_file {
            let token = std::fs::read_to_string(path)
                .with_context(|| format!("prometheus.bearer_token_file {}", path.display()))?;
            headers.insert(
                reqwest::header::AUTHORIZATION,
                secret(format!("Bearer {}", token.trim()))?,
            );
        }
        if let Some(auth) = &cfg.basic_auth {
            let password = std::fs::read_to_string(&auth.password_file).with_context(|| {
                format!(
                    "prometheus.basic_auth.password_file {}",
                    auth.password_file.display()
                )
            })?;
            let pair = format!(
                "{}:{}",
                auth.username,
                password.trim_end_matches(['\n', '\r'])
            );
            let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
            headers.insert(
                reqwest::header::AUTHORIZATION,
                secret(format!("Basic {encoded}"))?,
            );
        }
        let mut builder = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .default_headers(headers);
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("prometheus.ca_file {}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .context("prometheus.ca_file is not PEM")?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().context("building the HTTP client")?;
        let client =
            prometheus_http_query::Client::from(http, &cfg.url).context("prometheus.url")?;
        Ok(Self {
            client,
            timeout: cfg.timeout,
            retries: cfg.retries,
            stale_after: cfg.stale_after,
        })
    }

    async fn request(
        &self,
        query: &str,
        start: i64,
        end: i64,
        step: u64,
    ) -> Result<Vec<(String, Vec<Sample>)>, CollectError> {
        let response = self
            .client
            .query_range(query, start, end, step as f64)
            .timeout(i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX))
            .post_raw()
            .await
            .map_err(|e| match e {
                prometheus_http_query::Error::Client(c) => match c.inner() {
                    Some(r) if r.is_timeout() => CollectError::Timeout,
                    Some(r) if r.is_connect() => CollectError::Connect(r.to_string()),
                    Some(r) => CollectError::Connect(r.to_string()),
                    None => CollectError::BadResponse(c.to_string()),
                },
                other => CollectError::BadResponse(other.to_string()),
            })?;
        let status = response.status();
        let body = read_capped(response).await?;
        let envelope: Result<Envelope, _> = serde_json::from_slice(&body);
        if !status.is_success() {
            let message = match &envelope {
                Ok(e) => e.error.clone().unwrap_or_default(),
                Err(_) => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            };
            return Err(CollectError::Http {
                status: status.as_u16(),
                message,
            });
        }
        let envelope = envelope.map_err(|e| CollectError::BadResponse(e.to_string()))?;
        if envelope.status != "success" {
            return Err(CollectError::BadResponse(format!(
                "status {}: {}",
                envelope.status,
                envelope.error.unwrap_or_default()
            )));
        }
        if !envelope.warnings.is_empty() {
            return Err(CollectError::Partial(envelope.warnings.join("; ")));
        }
        let Some(Data::Matrix(series)) = envelope.data else {
            return Err(CollectError::BadResponse("expected a matrix result".into()));
        };
        Ok(series
            .into_iter()
            .map(|rv| {
                let mut labels: Vec<(String, String)> = rv.metric().clone().into_iter().collect();
                labels.sort();
                let key = format!("{labels:?}");
                let samples = rv
                    .samples()
                    .iter()
                    .map(|s| Sample {
                        at: s.timestamp().round() as i64,
                        value: s.value(),
                    })
                    .collect();
                (key, samples)
            })
            .collect())
    }

    async fn request_with_retries(
        &self,
        query: &str,
        start: i64,
        end: i64,
        step: u64,
    ) -> Result<Vec<(String, Vec<Sample>)>, CollectError> {
        let mut delay = BACKOFF;
        let mut attempt = 0;
        loop {
            match self.request(query, start, end, step).await {
                Err(e) if e.is_retryable() && attempt < self.retries => {
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                other => return other,
            }
        }
    }
}

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, CollectError> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(CollectError::TooLarge { limit: MAX_BODY });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) if e.is_timeout() => return Err(CollectError::Timeout),
            Err(e) => return Err(CollectError::BadResponse(format!("reading body: {e}"))),
        }
    }
}

#[async_trait::async_trait]
impl MetricSource for PrometheusSource {
    async fn fetch(&self, query: &str, window: TimeWindow) -> Result<Vec<Sample>, CollectError> {
        let step = window.step.max(1);
        let span = (MAX_POINTS - 1) * step as i64;
        let mut answers = Vec::new();
        let mut start = window.start;
        while start <= window.end {
            let end = (start + span).min(window.end);
            answers.extend(self.request_with_retries(query, start, end, step).await?);
            start = end + step as i64;
        }
        let (mut out, repairs) = assemble(answers, window)?;
        let newest = out.last().map_or(window.start, |s| s.at);
        if newest < window.end - self.stale_after.as_secs() as i64 {
            return Err(CollectError::Stale {
                newest,
                end: window.end,
            });
        }
        out.retain(|s| s.at >= window.start);
        if out.is_empty() {
            return Err(CollectError::Empty);
        }
        if repairs.invalid > 0 || repairs.retired > 0 {
            tracing::warn!(
                query,
                invalid_samples = repairs.invalid,
                retired_series = repairs.retired,
                "older samples left out as gaps"
            );
        }
        Ok(out)
    }
}

/// What [`assemble`] left out of the history it returned.
#[derive(Debug, Default, PartialEq)]
struct Repairs {
    /// NaN, infinite or negative samples older than the newest one.
    invalid: usize,
    /// Series that overlap a newer series in time.
    retired: usize,
}

/// One demand series out of every chunk's answer, oldest first, none after `window.end`.
///
/// Only the newest sample decides whether the data can be used now: when it is invalid, or
/// when several series report at the newest time, the fetch fails. Older faults become gaps
/// in the history instead, because the next fetch starts after them (or a backfill reads
/// them again) and an error there would hold the workload for as long as the fault stays in
/// the history: a single 0/0 once, or a relabelled series, must not do that. A series that
/// ended before the newest one began is the same demand under its old labels and is kept;
/// one that overlaps a newer series is dropped.
fn assemble(
    answers: Vec<(String, Vec<Sample>)>,
    window: TimeWindow,
) -> Result<(Vec<Sample>, Repairs), CollectError> {
    let mut by_labels: std::collections::BTreeMap<String, Vec<Sample>> = Default::default();
    for (key, samples) in answers {
        by_labels.entry(key).or_default().extend(samples);
    }
    let mut series: Vec<Vec<Sample>> = by_labels
        .into_values()
        .map(|mut s| {
            // Be strict about what comes back: in order, once per time, nothing from the
            // future (the caller cuts the window's start after its staleness check).
            s.retain(|x| x.at <= window.end);
            s.sort_by_key(|x| x.at);
            s.dedup_by_key(|x| x.at);
            s
        })
        .filter(|s| !s.is_empty())
        .collect();
    series.sort_by_key(|s| std::cmp::Reverse(s.last().map_or(i64::MIN, |x| x.at)));
    let newest_at = |s: &Vec<Sample>| s.last().map(|x| x.at);
    let Some(newest) = series.first().and_then(newest_at) else {
        return Err(CollectError::Empty);
    };
    let live = series
        .iter()
        .filter(|s| newest_at(s) == Some(newest))
        .count();
    if live > 1 {
        return Err(CollectError::MultiSeries(live));
    }
    let mut repairs = Repairs::default();
    let mut kept = Vec::with_capacity(series.len());
    let mut begins = i64::MAX;
    for s in series {
        match (s.first(), s.last()) {
            (Some(first), Some(last)) if last.at < begins => {
                begins = first.at;
                kept.push(s);
            }
            _ => repairs.retired += 1,
        }
    }
    let mut out: Vec<Sample> = kept.into_iter().rev().flatten().collect();
    let valid = |x: &Sample| x.value.is_finite() && x.value >= 0.0;
    if let Some(last) = out.last().filter(|x| !valid(x)) {
        return Err(CollectError::InvalidSample {
            value: last.value,
            at: last.at,
        });
    }
    let before = out.len();
    out.retain(valid);
    repairs.invalid = before - out.len();
    Ok((out, repairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: TimeWindow = TimeWindow {
        start: 0,
        end: 600,
        step: 60,
    };

    fn run(labels: &str, from: i64, to: i64, value: f64) -> (String, Vec<Sample>) {
        let samples = (from..=to)
            .step_by(60)
            .map(|at| Sample { at, value })
            .collect();
        (labels.to_string(), samples)
    }

    #[test]
    fn an_invalid_sample_in_the_history_is_a_gap_but_fails_the_fetch_when_newest() {
        let mut answer = run("{}", 0, 600, 5.0);
        answer.1[3].value = f64::NAN;
        answer.1[4].value = -1.0;
        let (got, repairs) = assemble(vec![answer.clone()], W).unwrap();
        assert_eq!(got.len(), 9);
        assert!(
            got.iter()
                .all(|s| s.value == 5.0 && s.at != 180 && s.at != 240)
        );
        assert_eq!(repairs.invalid, 2);
        answer.1[10].value = f64::INFINITY;
        let err = assemble(vec![answer], W).unwrap_err();
        assert_eq!(err.kind(), "invalid_sample");
    }

    #[test]
    fn a_relabelled_series_is_one_history_but_two_live_series_fail() {
        // Old labels until 240, new labels from 300 (split across two chunks), one stray
        // series that overlaps the new one.
        let answers = vec![
            run("{a}", 0, 240, 1.0),
            run("{b}", 300, 420, 2.0),
            run("{b}", 480, 600, 2.0),
            run("{c}", 360, 420, 9.0),
        ];
        let (got, repairs) = assemble(answers, W).unwrap();
        let times: Vec<i64> = got.iter().map(|s| s.at).collect();
        assert_eq!(times, (0..=600).step_by(60).collect::<Vec<_>>());
        assert!(
            got.iter()
                .all(|s| s.value == if s.at < 300 { 1.0 } else { 2.0 })
        );
        assert_eq!(repairs.retired, 1);
        let both_live = vec![run("{a}", 0, 600, 1.0), run("{b}", 300, 600, 2.0)];
        assert_eq!(
            assemble(both_live, W).unwrap_err(),
            CollectError::MultiSeries(2)
        );
        assert_eq!(assemble(vec![], W).unwrap_err(), CollectError::Empty);
    }
}
