//! The KEDA external scaler (gRPC, tonic). Every answer comes from the in-memory [`Board`]:
//! no Prometheus call is on the RPC path.
//!
//! The metric is `desired_replicas` with an `AverageValue` target of 1, so KEDA's HPA computes
//! `ceil(desired_replicas / 1)`: exactly the replicas prescale wants.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{Board, Unpublished};

/// Code generated from `proto/externalscaler.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("externalscaler");
    /// The encoded descriptors, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("externalscaler_descriptor");
}

use pb::external_scaler_server::{ExternalScaler, ExternalScalerServer};
use pb::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec,
    MetricValue, ScaledObjectRef,
};

/// The one metric prescale serves (also its name in JSON and on `/metrics`).
pub const METRIC_NAME: &str = "desired_replicas";

/// `scalerMetadata` key naming the workload when it differs from the ScaledObject's name.
pub const META_WORKLOAD: &str = "workload";
/// `scalerMetadata` key naming the workload's namespace when it differs from the
/// ScaledObject's.
pub const META_NAMESPACE: &str = "namespace";

/// Bounds on what a caller may send.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Largest decoded message; larger ones get `RESOURCE_EXHAUSTED` from tonic.
    pub max_message_bytes: usize,
    /// Most `scalerMetadata` entries; more get `INVALID_ARGUMENT`.
    pub max_metadata_entries: usize,
    /// Longest `scalerMetadata` key or value; longer get `INVALID_ARGUMENT`.
    pub max_metadata_value_bytes: usize,
}

/// How often an open stream re-checks its workload even when nothing was published (so a
/// stalled loop turns into `UNAVAILABLE` on the stream too).
const STREAM_RECHECK: Duration = Duration::from_secs(5);

/// The gRPC service.
#[derive(Clone)]
pub struct KedaScaler {
    board: Arc<Board>,
    limits: RequestLimits,
    shutdown: CancellationToken,
}

impl KedaScaler {
    /// A scaler answering from `board`; open streams end when `shutdown` is cancelled.
    pub fn new(board: Arc<Board>, limits: RequestLimits, shutdown: CancellationToken) -> Self {
        Self {
            board,
            limits,
            shutdown,
        }
    }

    /// The tonic service with the decoding limit applied.
    pub fn into_service(self) -> ExternalScalerServer<Self> {
        let max = self.limits.max_message_bytes;
        ExternalScalerServer::new(self)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
    }

    /// `namespace/name` of the workload a ScaledObject refers to: the `workload` and
    /// `namespace` metadata keys when present, else the ScaledObject's own name and namespace.
    fn key(&self, r: &ScaledObjectRef) -> Result<String, Status> {
        let meta = &r.scaler_metadata;
        if meta.len() > self.limits.max_metadata_entries {
            return Err(Status::invalid_argument(format!(
                "scalerMetadata has {} entries; at most {} are accepted",
                meta.len(),
                self.limits.max_metadata_entries
            )));
        }
        let max = self.limits.max_metadata_value_bytes;
        if let Some((k, _)) = meta.iter().find(|(k, v)| k.len() > max || v.len() > max) {
            return Err(Status::invalid_argument(format!(
                "scalerMetadata entry `{}` is longer than {max} bytes",
                k.chars().take(64).collect::<String>()
            )));
        }
        let namespace = meta.get(META_NAMESPACE).unwrap_or(&r.namespace);
        let name = meta.get(META_WORKLOAD).unwrap_or(&r.name);
        if namespace.is_empty() || name.is_empty() {
            return Err(Status::invalid_argument(
                "the ScaledObject reference needs a name and a namespace",
            ));
        }
        if namespace.len() > 253 || name.len() > 253 {
            return Err(Status::invalid_argument(
                "name or namespace longer than 253 bytes",
            ));
        }
        Ok(format!("{namespace}/{name}"))
    }

    /// The key of a configured `auto` workload, whatever the state of its data.
    fn known(&self, r: &ScaledObjectRef) -> Result<String, Status> {
        let key = self.key(r)?;
        match self.board.get(&key) {
            Err(e @ (Unpublished::Unknown(_) | Unpublished::NotAuto { .. })) => Err(status(&e)),
            _ => Ok(key),
        }
    }

    fn lookup(&self, key: &str) -> Result<super::Publication, Status> {
        self.board.get(key).map_err(|e| status(&e))
    }
}

/// The gRPC status for a publication that cannot be served. `UNAVAILABLE` (never a zero or
/// `false`) for missing data, so KEDA counts a failure and its `fallback` can engage.
fn status(e: &Unpublished) -> Status {
    match e {
        Unpublished::Unknown(_) => Status::not_found(e.to_string()),
        Unpublished::NotAuto { .. } => Status::failed_precondition(e.to_string()),
        Unpublished::Unavailable { .. } => Status::unavailable(e.to_string()),
    }
}

fn spec() -> GetMetricSpecResponse {
    GetMetricSpecResponse {
        metric_specs: vec![MetricSpec {
            metric_name: METRIC_NAME.to_string(),
            #[allow(deprecated)]
            target_size: 1,
            target_size_float: 1.0,
        }],
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalScaler for KedaScaler {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        let key = self.key(request.get_ref())?;
        let p = self.lookup(&key)?;
        Ok(Response::new(IsActiveResponse {
            result: p.desired_replicas > 0,
        }))
    }

    type StreamIsActiveStream = ResponseStream<IsActiveResponse>;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        // Unknown workloads and bad modes fail the call itself; data problems end the stream.
        let key = self.known(request.get_ref())?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let board = self.board.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut version = board.subscribe();
            let mut last: Option<bool> = None;
            loop {
                match board.get(&key) {
                    Ok(p) => {
                        let active = p.desired_replicas > 0;
                        if last != Some(active) {
                            if tx
                                .send(Ok(IsActiveResponse { result: active }))
                                .await
                                .is_err()
                            {
                                break;
                            }
                            last = Some(active);
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(status(&e))).await;
                        break;
                    }
                }
                tokio::select! {
                    () = tx.closed() => break,
                    () = shutdown.cancelled() => break,
                    changed = version.changed() => if changed.is_err() { break },
                    () = tokio::time::sleep(STREAM_RECHECK) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        // The spec does not depend on data: only unknown workloads and bad modes fail here.
        self.known(request.get_ref())?;
        Ok(Response::new(spec()))
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        let req = request.get_ref();
        let r = req
            .scaled_object_ref
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("scaledObjectRef is required"))?;
        let key = self.key(r)?;
        if req.metric_name != METRIC_NAME {
            return Err(Status::not_found(format!(
                "no metric `{}`; prescale serves `{METRIC_NAME}`",
                req.metric_name.chars().take(64).collect::<String>()
            )));
        }
        let p = self.lookup(&key)?;
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name: METRIC_NAME.to_string(),
                #[allow(deprecated)]
                metric_value: i64::from(p.desired_replicas),
                metric_value_float: f64::from(p.desired_replicas),
            }],
        }))
    }

    type StreamMetricSpecStream = ResponseStream<GetMetricSpecResponse>;

    async fn stream_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamMetricSpecStream>, Status> {
        self.known(request.get_ref())?;
        // The spec never changes: send it at once, then hold the stream open until the
        // client leaves or the server stops.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            if tx.send(Ok(spec())).await.is_ok() {
                tokio::select! {
                    () = tx.closed() => {},
                    () = shutdown.cancelled() => {},
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// tonic reports a message over the decoding limit as `OUT_OF_RANGE`; gRPC's convention (and
/// what clients such as grpc-go expect) is `RESOURCE_EXHAUSTED`. Only that one error, which
/// tonic answers trailers-only (status in the headers), is rewritten.
fn oversized_is_resource_exhausted<B>(mut res: axum::http::Response<B>) -> axum::http::Response<B> {
    let h = res.headers_mut();
    let oversized = h.get("grpc-status").is_some_and(|v| v == "11")
        && h.get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| m.contains("message%20length%20too%20large"));
    if oversized {
        h.insert("grpc-status", axum::http::HeaderValue::from_static("8"));
    }
    res
}

/// TLS for the gRPC server, as PEM bytes.
pub struct TlsPem {
    /// Server certificate chain.
    pub cert: Vec<u8>,
    /// Server private key.
    pub key: Vec<u8>,
    /// CA that client certificates must chain to; set means mutual TLS is required.
    pub client_ca: Option<Vec<u8>>,
}

/// Serves the scaler (and gRPC reflection, v1 and v1alpha) on `listener` until `shutdown`.
///
/// # Errors
/// TLS material tonic cannot use, or a transport failure.
pub async fn serve(
    listener: tokio::net::TcpListener,
    scaler: KedaScaler,
    tls: Option<TlsPem>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .ok();
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .ok();
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        let mut cfg = ServerTlsConfig::new().identity(Identity::from_pem(tls.cert, tls.key));
        if let Some(ca) = tls.client_ca {
            cfg = cfg.client_ca_root(Certificate::from_pem(ca));
        }
        builder = builder.tls_config(cfg)?;
    }
    builder
        .layer(tower::util::MapResponseLayer::new(
            oversized_is_resource_exhausted,
        ))
        .add_service(scaler.into_service())
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(
            // Small answers: without TCP_NODELAY, Nagle and delayed ACKs add ~40 ms stalls.
            tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(Duration::from_secs(60))),
            shutdown.cancelled_owned(),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actuator::Publication;
    use crate::config::Mode;
    use std::collections::HashMap;
    use std::time::Instant;
    use tokio_stream::StreamExt;

    fn publish(board: &Board, desired: u32, unavailable: Option<&str>) {
        let mut m = HashMap::new();
        m.insert(
            "ns/w".to_string(),
            Publication {
                unavailable: unavailable.map(str::to_string),
                refreshed: Some(Instant::now()),
                ..Publication::new(Mode::Auto, desired)
            },
        );
        board.publish(m);
    }

    fn scaler(board: &Arc<Board>) -> KedaScaler {
        let limits = RequestLimits {
            max_message_bytes: 65_536,
            max_metadata_entries: 8,
            max_metadata_value_bytes: 64,
        };
        KedaScaler::new(board.clone(), limits, CancellationToken::new())
    }

    fn object() -> ScaledObjectRef {
        ScaledObjectRef {
            name: "w".into(),
            namespace: "ns".into(),
            scaler_metadata: HashMap::new(),
        }
    }

    async fn next(
        s: &mut ResponseStream<IsActiveResponse>,
    ) -> Option<Result<IsActiveResponse, Status>> {
        tokio::time::timeout(Duration::from_secs(2), s.next())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn stream_is_active_pushes_changes_then_ends_on_missing_data() {
        let board = Arc::new(Board::new(Duration::from_secs(60)));
        publish(&board, 0, None);
        let s = scaler(&board);
        let mut stream = s
            .stream_is_active(Request::new(object()))
            .await
            .unwrap()
            .into_inner();
        assert!(!next(&mut stream).await.unwrap().unwrap().result);
        // Unchanged activity is not pushed again; a change is.
        publish(&board, 0, None);
        publish(&board, 3, None);
        assert!(next(&mut stream).await.unwrap().unwrap().result);
        publish(&board, 0, Some("empty"));
        let err = next(&mut stream).await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(
            next(&mut stream).await.is_none(),
            "the stream ends; KEDA redials"
        );
    }

    #[tokio::test]
    async fn a_client_leaving_ends_its_stream_task() {
        let board = Arc::new(Board::new(Duration::from_secs(60)));
        publish(&board, 2, None);
        let s = scaler(&board);
        let base = Arc::strong_count(&board);
        let streams: Vec<_> =
            futures::future::join_all((0..50).map(|_| s.stream_is_active(Request::new(object()))))
                .await;
        tokio::task::yield_now().await;
        assert_eq!(Arc::strong_count(&board), base + 50, "one task per stream");
        drop(streams);
        for _ in 0..100 {
            if Arc::strong_count(&board) == base {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "stream tasks outlived their clients: {}",
            Arc::strong_count(&board) - base
        );
    }

    #[tokio::test]
    async fn requests_over_the_metadata_limits_are_invalid() {
        let board = Arc::new(Board::new(Duration::from_secs(60)));
        publish(&board, 2, None);
        let s = scaler(&board);
        let mut r = object();
        r.scaler_metadata = (0..9).map(|i| (format!("k{i}"), "v".into())).collect();
        let e = s.is_active(Request::new(r)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let mut r = object();
        r.scaler_metadata.insert("k".into(), "x".repeat(65));
        let e = s.is_active(Request::new(r)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let mut r = object();
        r.scaler_metadata
            .insert("scalerAddress".into(), "prescale:9090".into());
        assert!(
            s.is_active(Request::new(r))
                .await
                .unwrap()
                .into_inner()
                .result
        );
    }
}
