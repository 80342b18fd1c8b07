//! The `prescale` binary: parses arguments and runs a subcommand; nothing else lives here.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use std::sync::Arc;
use std::time::Duration;

use prescale::actuator::keda;
use prescale::api::ApiSettings;
use prescale::api::auth::{Role, Tokens};
use prescale::app::{Service, Timeline};
use prescale::collector::{MetricSource, PrometheusSource, TraceSource};
use prescale::config::{ActuatorKind, Config, LogFormat, Mode};
use prescale::forecast::ModelPreset;
use prescale::policy::Headroom;
use prescale::sim::{self, PolicyName, ReplayConfig, Trace};
use prescale::store::Store;
use tokio_util::sync::CancellationToken;

/// The trace `prescale replay` uses when given none: NASA-HTTP requests per 5 minutes,
/// 14 days of July 1995 (freely redistributable; see tests/fixtures/README.md).
const DEMO_TRACE: &str = include_str!("../tests/fixtures/nasa_5min_14d.csv");

#[derive(Parser)]
#[command(
    name = "prescale",
    version,
    about = "Predictive autoscaler for Kubernetes"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `prescale=debug`.
    #[arg(long, global = true, env = "PRESCALE_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: collect, forecast, decide, export. With no --config, runs a demo on a
    /// bundled trace (no Prometheus, no cluster) with a dry-run actuator.
    Serve(ServeArgs),
    /// Prints the OpenAPI document of the HTTP API (committed as docs/openapi.json).
    Openapi,
    /// Validate a config file; exits 64 with a message naming the field when it is invalid.
    CheckConfig {
        /// The config file.
        file: PathBuf,
    },
    /// Replay a recorded demand trace through the forecaster and policies (the replay
    /// contract); with no --trace or --suite, replays a bundled 14-day NASA-HTTP trace.
    Replay(ReplayArgs),
    /// Forecast benchmark: prescale's models at fixed origins of every suite trace (the
    /// protocol of bench/statsforecast_peer.py), written as JSON.
    BenchForecast(BenchForecastArgs),
    /// Latency of the KEDA scaler's GetMetrics on loopback at several concurrency levels,
    /// against a baseline (an unimplemented method: transport only), as a markdown table.
    BenchKeda {
        /// Workloads on the board.
        #[arg(long, default_value_t = 1000)]
        workloads: usize,
        /// Concurrency levels (calls in flight at once).
        #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
        levels: Vec<usize>,
        /// Calls per level and kind.
        #[arg(long, default_value_t = 20_000)]
        calls: usize,
        /// HTTP/2 connections the callers share.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Open-loop row: this many ScaledObjects...
        #[arg(long, default_value_t = 1000)]
        open_callers: usize,
        /// ...calling this many times per second in all (0: no open-loop row)...
        #[arg(long, default_value_t = 2000.0)]
        open_rate: f64,
        /// ...for this many seconds.
        #[arg(long, default_value_t = 10)]
        open_seconds: u64,
    },
    /// Loop benchmark: the service loop with N synthetic workloads (no network), printing
    /// warm-up and steady loop times and resident memory per workload as JSON.
    BenchLoop {
        /// Workloads.
        #[arg(long, default_value_t = 1000)]
        workloads: usize,
        /// History per workload.
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        history: u64,
        /// Sampling step and loop interval.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        step: u64,
        /// Steady loops after the warm-up loop.
        #[arg(long, default_value_t = 5)]
        loops: usize,
        /// Workloads processed at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// The loop's warm-up budget (`loop.warmup_budget`); the default lets the first loop
        /// warm every workload, so that the steady loops and the restart are measured warm.
        #[arg(long, default_value = "1d", value_parser = parse_duration)]
        warmup_budget: u64,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Config file (YAML). Without it, the embedded demo runs.
    #[arg(long, env = "PRESCALE_CONFIG")]
    config: Option<PathBuf>,
    /// Demo only: real time per loop; each loop plays one step (5 minutes) of the trace.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    demo_tick: u64,
}

#[derive(clap::Args)]
struct BenchForecastArgs {
    /// Suite file (format of shared/datasets/suite.json).
    #[arg(long)]
    suite: PathBuf,
    /// Origins per trace.
    #[arg(long, default_value_t = 24)]
    origins: usize,
    /// Output JSON file.
    #[arg(long, default_value = "out/prescale_forecast.json")]
    out: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PolicyChoice {
    Predictive,
    Hpa,
    Oracle,
    Foresight,
    All,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum HeadroomChoice {
    Quantile,
    HpaParity,
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// Trace CSV (`timestamp,value`).
    #[arg(long, conflicts_with = "suite")]
    trace: Option<PathBuf>,
    /// Suite file (JSON, format of shared/datasets/suite.json): replays every trace in it.
    #[arg(long)]
    suite: Option<PathBuf>,
    /// Demand one ready replica serves. Default: the trace's 99th percentile / 20. With
    /// --suite, each trace's comes from the suite file.
    #[arg(long, conflicts_with = "suite")]
    capacity: Option<f64>,
    /// Pod startup time, e.g. `120s` or `3m`. Default: 120s for cadences up to 60 s, else 180s.
    /// With --suite, each trace's comes from the suite file.
    #[arg(long, value_parser = parse_duration, conflicts_with = "suite")]
    startup: Option<u64>,
    /// Output directory.
    #[arg(long, default_value = "out/replay")]
    out: PathBuf,
    /// Policies to run (--suite always runs all).
    #[arg(long, value_enum, default_value = "all", conflicts_with = "suite")]
    policy: PolicyChoice,
    /// Lowest replica count (predictive and hpa).
    #[arg(long, default_value_t = 1)]
    min_replicas: u32,
    /// Highest replica count (predictive and hpa).
    #[arg(long, default_value_t = 100)]
    max_replicas: u32,
    /// The HPA baseline's target utilisation.
    #[arg(long, default_value_t = 0.7)]
    target_utilization: f64,
    /// Model preset: a built-in name (auto, seasonal, reactive, conservative) or a YAML path.
    #[arg(long, default_value = "auto")]
    model: String,
    /// Headroom rule of the predictive policy: `hpa-parity` (the cheapest headroom that was at
    /// least as reliable as the HPA on this workload's recent demand) or `quantile` (the
    /// preset's calibrated quantile).
    #[arg(long, value_enum, default_value = "hpa-parity")]
    headroom: HeadroomChoice,
    /// First scored row (earlier rows are warm-up). Default: rows / 5, as in the suite. With
    /// --suite, each trace's comes from the suite file.
    #[arg(long, conflicts_with = "suite")]
    score_from_row: Option<usize>,
    /// Traces replayed in parallel with --suite.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn parse_duration(s: &str) -> Result<u64, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(secs);
    }
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 120s or 3m: {e}"))?;
    if d.subsec_nanos() != 0 {
        return Err(format!("`{s}` is not a whole number of seconds"));
    }
    Ok(d.as_secs())
}

/// Exit code for an invalid configuration (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // One TLS crypto provider for every client and server (kube, reqwest, tonic).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // `serve` with a config file takes its log format from the config (after environment
    // overrides); everything else from PRESCALE_LOG_FORMAT.
    // The config is read once, here; `serve` receives it.
    let loaded = match &cli.command {
        Command::Serve(ServeArgs {
            config: Some(path), ..
        }) => Some(Config::load(path, &env_var)),
        _ => None,
    };
    let json_logs = match &loaded {
        Some(Ok(c)) => c.log_format == LogFormat::Json,
        _ => std::env::var("PRESCALE_LOG_FORMAT").is_ok_and(|v| v == "json"),
    };
    init_logs(&cli.log, json_logs);
    let result = match cli.command {
        Command::Replay(args) => replay(args),
        Command::BenchForecast(args) => bench_forecast(&args),
        Command::CheckConfig { file } => return check_config(&file),
        Command::Openapi => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", prescale::api::openapi_json()).map_err(anyhow::Error::from)
        }
        Command::Serve(args) => match loaded.transpose() {
            Ok(cfg) => serve(&args, cfg),
            Err(e) => Err(e.into()),
        },
        Command::BenchKeda {
            workloads,
            levels,
            calls,
            connections,
            open_callers,
            open_rate,
            open_seconds,
        } => bench_keda(
            workloads,
            &levels,
            calls,
            connections,
            (open_rate > 0.0).then_some((open_callers, open_rate, open_seconds)),
        ),
        Command::BenchLoop {
            workloads,
            history,
            step,
            loops,
            concurrency,
            warmup_budget,
        } => bench_loop(workloads, history, step, loops, concurrency, warmup_budget),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logs(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn check_config(file: &Path) -> std::process::ExitCode {
    match Config::load(file, &env_var) {
        Ok(cfg) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "{}: ok ({} workloads)",
                file.display(),
                cfg.workloads.len()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(EX_USAGE)
        }
    }
}

/// The embedded demo: two workloads playing different days of the bundled trace.
fn demo_config(trace: &Trace) -> anyhow::Result<Config> {
    let capacity = (trace.value_quantile(0.99) / 20.0).max(f64::MIN_POSITIVE);
    let cadence = trace.cadence();
    let yaml = format!(
        "prometheus:\n  url: http://127.0.0.1:9\n\
         loop:\n  interval: {cadence}s\n  history: 7d\n\
         data_dir: {data}\n\
         api:\n  anonymous_read: true\n\
         workloads:\n\
         - {{namespace: demo, name: web, demand_query: 'demo:0', capacity_per_replica: {capacity}, max_replicas: 60, startup: 3m, mode: auto}}\n\
         - {{namespace: demo, name: api, demand_query: 'demo:1000', capacity_per_replica: {capacity}, max_replicas: 60, startup: 3m, mode: recommend, recommendation_ttl: 7d}}\n",
        data = std::env::temp_dir().join("prescale-demo").display(),
    );
    Ok(Config::parse(
        Path::new("embedded demo config"),
        &yaml,
        &env_var,
    )?)
}

/// Runs the service on `cfg` (already loaded from `--config`), or the demo without one.
fn serve(args: &ServeArgs, cfg: Option<Config>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Before anything slow (restore, the store, binds): a SIGHUP while starting must not
        // kill the service either, and a SIGTERM then is kept for when it serves.
        let signals = Signals::register();
        let (cfg, source, timeline, step, tick): (Config, Arc<dyn MetricSource>, Timeline, u64, Duration) =
            match cfg {
                Some(cfg) => {
                    let source = Arc::new(PrometheusSource::new(&cfg.prometheus)?);
                    let step = cfg.loop_.interval.as_secs();
                    let tick = cfg.loop_.interval;
                    (cfg, source, Timeline::Wall, step, tick)
                }
                None => {
                    let trace = Trace::parse(Path::new("embedded:nasa_5min_14d.csv"), DEMO_TRACE.as_bytes())?;
                    let cfg = demo_config(&trace)?;
                    let cadence = trace.cadence();
                    // Start a week into the trace so the backfill has history to learn from.
                    let start = trace.timestamps[0] + 7 * 86_400;
                    let timeline = Timeline::Virtual {
                        now: std::sync::atomic::AtomicI64::new(start - cadence as i64),
                        per_tick: cadence as i64,
                    };
                    let source = Arc::new(TraceSource::new(&trace));
                    (cfg, source, timeline, cadence, Duration::from_secs(args.demo_tick.max(1)))
                }
            };
        let listen = cfg.listen.http;
        let grpc_listen = cfg.listen.grpc;
        let demo = args.config.is_none();
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        let needs_kube = cfg
            .workloads
            .iter()
            .any(|w| w.mode != Mode::Observe && w.actuator == ActuatorKind::Scale);
        let actuator = if needs_kube {
            let (actuator, leader) = prescale::app::scale_actuator(&cfg.kubernetes).await?;
            if let Some(leader) = leader {
                let token = shutdown.clone();
                tasks.push(tokio::spawn(async move { leader.run(token).await }));
            }
            Some(actuator)
        } else {
            None
        };
        let tls = match &cfg.keda.tls {
            Some(t) => Some(keda::TlsPem {
                cert: std::fs::read(&t.cert_file).with_context(|| format!("keda.tls.cert_file {}", t.cert_file.display()))?,
                key: std::fs::read(&t.key_file).with_context(|| format!("keda.tls.key_file {}", t.key_file.display()))?,
                client_ca: match &t.client_ca_file {
                    Some(p) => Some(std::fs::read(p).with_context(|| format!("keda.tls.client_ca_file {}", p.display()))?),
                    None => None,
                },
            }),
            None => None,
        };
        let limits = keda::RequestLimits {
            max_message_bytes: cfg.keda.max_message_bytes,
            max_metadata_entries: cfg.keda.max_metadata_entries,
            max_metadata_value_bytes: cfg.keda.max_metadata_value_bytes,
        };
        let store_url = cfg.store.url.clone().unwrap_or_else(|| Store::sqlite_url(&cfg.data_dir));
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating data_dir {}", cfg.data_dir.display()))?;
        let (tokens, demo_token) = match (&cfg.api.tokens_file, demo) {
            (Some(path), _) => (Tokens::load(path).map_err(anyhow::Error::msg)?, None),
            (None, true) => {
                let token = format!("demo-{}", prescale::store::new_id());
                let list = vec![(token.clone(), "demo".to_string(), Role::Admin)];
                (Tokens::from_list(list), Some(token))
            }
            (None, false) => (Tokens::none(), None),
        };
        let anonymous_read = cfg.api.anonymous_read;
        let settings = ApiSettings {
            tokens: tokens.with_anonymous_read(anonymous_read),
            max_body_bytes: cfg.api.max_body_bytes,
            max_page_size: cfg.api.max_page_size,
            max_in_flight: cfg.api.max_in_flight,
            request_timeout: cfg.api.request_timeout,
            rate_per_caller: cfg.api.rate_per_caller,
            burst_per_caller: cfg.api.burst_per_caller,
        };
        let service = Arc::new(Service::with_actuator(cfg, source, timeline, step, tick, actuator)?);
        let restored = service.restore()?;
        let store = Store::open(&store_url)
            .await
            .map_err(|e| anyhow::anyhow!("opening the store: {e}"))?;
        service.attach_store(store).await?;
        let grpc_listener = tokio::net::TcpListener::bind(grpc_listen)
            .await
            .with_context(|| format!("binding {grpc_listen}"))?;
        {
            let scaler = keda::KedaScaler::new(service.shared().board.clone(), limits, shutdown.clone());
            let token = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = keda::serve(grpc_listener, scaler, tls, token.clone()).await {
                    tracing::error!(error = %e, "gRPC server failed");
                    token.cancel();
                }
            }));
        }
        let signal = shutdown.clone();
        tokio::spawn(async move {
            signals.wait().await;
            signal.cancel();
        });
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "prescale serving on http://{listen} (/metrics, /healthz, /readyz, /api/v1/workloads, /api/v1/keda)")?;
            writeln!(out, "KEDA external scaler (gRPC) on {grpc_listen}")?;
            if demo {
                writeln!(out, "demo: two workloads replay a bundled NASA-HTTP trace, 5 minutes of it per loop")?;
                writeln!(out, "demo: demo/web is in auto mode, published to KEDA: gRPC on {grpc_listen}, JSON at http://{listen}/api/v1/keda/demo/web")?;
                writeln!(out, "demo: demo/api is in recommend mode: review its recommendations at http://{listen}/")?;
                if let Some(t) = &demo_token {
                    writeln!(out, "demo: token (role admin) for approving: {t}")?;
                    writeln!(out, "demo:   curl -s 'http://{listen}/api/v1/recommendations?state=pending'")?;
                    writeln!(out, "demo:   curl -s -X POST -H 'Authorization: Bearer {t}' -H 'Content-Type: application/json' -d '{{\"comment\":\"ok\"}}' http://{listen}/api/v1/recommendations/ID/approve")?;
                }
            }
            if restored.views > 0 {
                writeln!(out, "restored {} workload(s) from the last snapshot", restored.views)?;
            }
            if restored.models > 0 {
                writeln!(out, "restored the forecasting state of {} workload(s)", restored.models)?;
            }
        }
        let app = prescale::api::router_with(service.shared(), settings);
        // The client's address keys the rate limit of requests without a valid token.
        let server = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let looping = {
            let service = service.clone();
            let token = shutdown.clone();
            tokio::spawn(async move { service.run(token).await })
        };
        server.await?;
        shutdown.cancel();
        looping.await?;
        for t in tasks {
            t.await?;
        }
        tracing::info!("Shut down cleanly");
        Ok(())
    })
}

/// The signals `serve` answers, each registered on its own so that one that cannot be
/// registered leaves the others working.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let register = |kind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, signal = name, "cannot handle this signal");
                    None
                }
            };
            Self {
                term: register(SignalKind::terminate(), "SIGTERM"),
                int: register(SignalKind::interrupt(), "SIGINT"),
                hup: register(SignalKind::hangup(), "SIGHUP"),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Waits for SIGTERM or SIGINT. SIGHUP, which many daemons take as "reload", is logged
    /// and ignored: its default action would kill the service without its shutdown snapshot.
    async fn wait(self) {
        #[cfg(unix)]
        {
            /// Resolves on the next delivery of `s`; never when it is not registered.
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                if let Some(s) = s
                    && s.recv().await.is_some()
                {
                    return;
                }
                std::future::pending::<()>().await;
            }
            let Self {
                mut term,
                mut int,
                mut hup,
            } = self;
            if term.is_some() || int.is_some() {
                loop {
                    tokio::select! {
                        () = next(&mut term) => return,
                        () = next(&mut int) => return,
                        () = next(&mut hup) => tracing::warn!(
                            "SIGHUP ignored: there is no live config reload; restart to apply a new config"
                        ),
                    }
                }
            }
        }
        #[cfg(not(unix))]
        let _ = self;
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn bench_keda(
    workloads: usize,
    levels: &[usize],
    calls: usize,
    connections: usize,
    open_loop: Option<(usize, f64, u64)>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rows = runtime.block_on(prescale::loadtest::bench_keda(
        workloads,
        levels,
        calls,
        connections,
        open_loop,
    ))?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "| concurrency | call | calls | p50 µs | p99 µs | max µs | calls/s | p99 / baseline p99 |"
    )?;
    writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|")?;
    for r in &rows {
        let base = rows
            .iter()
            .find(|b| {
                b.concurrency == r.concurrency
                    && b.offered_per_second == r.offered_per_second
                    && b.call == "baseline"
            })
            .map_or(f64::NAN, |b| b.p99_us);
        let mode = match r.offered_per_second {
            Some(rate) => format!(", open loop at {rate:.0}/s"),
            None => String::new(),
        };
        writeln!(
            out,
            "| {} | {}{mode} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} |",
            r.concurrency,
            r.call,
            r.calls,
            r.p50_us,
            r.p99_us,
            r.max_us,
            r.calls_per_second,
            r.p99_us / base
        )?;
    }
    Ok(())
}

fn bench_loop(
    workloads: usize,
    history: u64,
    step: u64,
    loops: usize,
    concurrency: usize,
    warmup_budget: u64,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let r = runtime.block_on(prescale::loadtest::run(
        workloads,
        Duration::from_secs(history),
        step,
        loops,
        concurrency,
        Duration::from_secs(warmup_budget),
        None,
    ))?;
    writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string_pretty(&r)?
    )?;
    Ok(())
}

fn bench_forecast(args: &BenchForecastArgs) -> anyhow::Result<()> {
    let rows = sim::forecast_bench(&args.suite, args.origins)?;
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json = serde_json::to_string_pretty(&serde_json::json!({ "rows": rows }))?;
    std::fs::write(&args.out, json + "\n")?;
    let mut stdout = std::io::stdout().lock();
    for r in &rows {
        writeln!(
            stdout,
            "{:45} {:15} mase={} t={:.3}s",
            r.trace,
            r.model,
            r.mase.map_or_else(|| "-".into(), |m| format!("{m:.3}")),
            r.fit_predict_seconds_per_series
        )?;
    }
    writeln!(stdout, "wrote {}", args.out.display())?;
    Ok(())
}

fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let preset = ModelPreset::load(&args.model)?;
    let policies = match args.policy {
        PolicyChoice::All => PolicyName::ALL.to_vec(),
        PolicyChoice::Predictive => vec![PolicyName::Predictive],
        PolicyChoice::Hpa => vec![PolicyName::Hpa],
        PolicyChoice::Oracle => vec![PolicyName::Oracle],
        PolicyChoice::Foresight => vec![PolicyName::Foresight],
    };
    if !(args.target_utilization > 0.0 && args.target_utilization <= 1.0) {
        bail!("--target-utilization must be in (0, 1]");
    }
    if args.min_replicas > args.max_replicas {
        bail!("--min-replicas must not exceed --max-replicas");
    }
    let mut cfg = ReplayConfig {
        capacity: 1.0,
        startup: 0,
        min_replicas: args.min_replicas,
        max_replicas: args.max_replicas,
        hpa_target_utilization: args.target_utilization,
        preset,
        headroom: match args.headroom {
            HeadroomChoice::Quantile => Headroom::Quantile,
            HeadroomChoice::HpaParity => Headroom::HpaParity,
        },
        policies,
        score_from_row: 0,
    };
    let mut stdout = std::io::stdout().lock();
    if let Some(suite) = &args.suite {
        let (_, agg) = sim::run_suite(suite, &args.out, &cfg, args.threads)?;
        let table = std::fs::read_to_string(args.out.join("suite.md"))?;
        writeln!(stdout, "{table}")?;
        writeln!(
            stdout,
            "predictive wins on both unserved and replica-hours: {}/{}; median cost vs oracle: predictive {:.3}, hpa {:.3}, foresight {:.3}; median coverage {:.3}",
            agg.predictive_wins,
            agg.traces,
            agg.median_cost_predictive,
            agg.median_cost_hpa,
            agg.median_cost_foresight,
            agg.median_coverage
        )?;
        writeln!(stdout, "wrote {}", args.out.display())?;
        return Ok(());
    }
    let trace = match &args.trace {
        Some(path) => Trace::read(path)?,
        None => Trace::parse(
            Path::new("embedded:nasa_5min_14d.csv"),
            DEMO_TRACE.as_bytes(),
        )?,
    };
    let cadence = trace.cadence();
    cfg.capacity = match args.capacity {
        Some(c) if c.is_finite() && c > 0.0 => c,
        Some(c) => bail!("--capacity must be a positive number, got {c}"),
        None => (trace.value_quantile(0.99) / 20.0).max(f64::MIN_POSITIVE),
    };
    cfg.startup = args
        .startup
        .unwrap_or(if cadence <= 60 { 120 } else { 180 });
    cfg.score_from_row = args.score_from_row.unwrap_or(trace.len() / 5);
    let result = sim::replay(&trace, &cfg)?;
    let title = trace.path.file_name().map_or_else(
        || "replay".to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    sim::write_outputs(&args.out, &result, &title)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let s = &result.summary;
    writeln!(
        stdout,
        "{}: {} rows, cadence {}s, capacity {}, startup {}s, scored from row {}",
        s.trace, s.rows, s.cadence_seconds, s.capacity, s.startup_seconds, s.score_from_row
    )?;
    writeln!(
        stdout,
        "{:<11} {:>10} {:>11} {:>14} {:>9}",
        "policy", "unserved", "overloaded", "replica-hours", "cost"
    )?;
    for (name, sc) in &s.policies {
        writeln!(
            stdout,
            "{:<11} {:>9.3}% {:>10.2}% {:>14.1} {:>9}",
            name,
            100.0 * sc.unserved_fraction,
            100.0 * sc.overloaded_time_fraction,
            sc.replica_hours,
            sc.cost_vs_oracle
                .map_or_else(|| "-".into(), |c| format!("{c:.3}"))
        )?;
    }
    if let Some(st) = &s.forecast_status {
        writeln!(
            stdout,
            "forecast: model {}, periods {:?}, coverage {}, demoted {}",
            st.model,
            st.periods,
            st.coverage
                .map_or_else(|| "-".into(), |c| format!("{c:.3}")),
            st.demoted
        )?;
    }
    writeln!(
        stdout,
        "wrote {}/decisions.csv, summary.json, replay.svg",
        args.out.display()
    )?;
    Ok(())
}
