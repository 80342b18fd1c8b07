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
        series
            .into_iter()
            .map(|rv| {
                let mut labels: Vec<(String, String)> = rv.metric().clone().into_iter().collect();
                labels.sort();
                let key = format!("{labels:?}");
                let samples = rv
                    .samples()
                    .iter()
                    .map(|s| {
                        let (at, value) = (s.timestamp().round() as i64, s.value());
                        if value.is_finite() && value >= 0.0 {
                            Ok(Sample { at, value })
                        } else {
                            Err(CollectError::InvalidSample { value, at })
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((key, samples))
            })
            .collect()
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
        let mut out: Vec<Sample> = Vec::new();
        let mut identity: Option<String> = None;
        let mut start = window.start;
        while start <= window.end {
            let end = (start + span).min(window.end);
            let series = self.request_with_retries(query, start, end, step).await?;
            if series.len() > 1 {
                return Err(CollectError::MultiSeries(series.len()));
            }
            if let Some((key, samples)) = series.into_iter().next() {
                // The same one series in every chunk: a different label set is a second series.
                match &identity {
                    Some(k) if *k != key => return Err(CollectError::MultiSeries(2)),
                    Some(_) => {}
                    None => identity = Some(key),
                }
                out.extend(samples);
            }
            start = end + step as i64;
        }
        let Some(newest) = out.last().map(|s| s.at) else {
            return Err(CollectError::Empty);
        };
        if newest < window.end - self.stale_after.as_secs() as i64 {
            return Err(CollectError::Stale {
                newest,
                end: window.end,
            });
        }
        // Be strict about what comes back: in order, once per time, inside the window.
        out.retain(|s| s.at >= window.start && s.at <= window.end);
        out.sort_by_key(|s| s.at);
        out.dedup_by_key(|s| s.at);
        Ok(out)
    }
}
