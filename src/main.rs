//! The `prescale` binary: parses arguments and runs a subcommand; nothing else lives here.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use prescale::forecast::ModelPreset;
use prescale::policy::Headroom;
use prescale::sim::{self, PolicyName, ReplayConfig, Trace};

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
    /// Replay a recorded demand trace through the forecaster and policies (the replay
    /// contract); with no --trace or --suite, replays a bundled 14-day NASA-HTTP trace.
    Replay(ReplayArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PolicyChoice {
    Predictive,
    Hpa,
    Oracle,
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
    /// Demand one ready replica serves. Default: the trace's 99th percentile / 20.
    #[arg(long)]
    capacity: Option<f64>,
    /// Pod startup time, e.g. `120s` or `3m`. Default: 120s for cadences up to 60 s, else 180s.
    #[arg(long, value_parser = parse_duration)]
    startup: Option<u64>,
    /// Output directory.
    #[arg(long, default_value = "out/replay")]
    out: PathBuf,
    /// Policies to run.
    #[arg(long, value_enum, default_value = "all")]
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
    /// First scored row (earlier rows are warm-up). Default: rows / 5, as in the suite.
    #[arg(long)]
    score_from_row: Option<usize>,
    /// Traces replayed in parallel with --suite.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn parse_duration(s: &str) -> Result<u64, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(secs);
    }
    humantime::parse_duration(s)
        .map(|d| d.as_secs())
        .map_err(|e| format!("`{s}` is not a duration like 120s or 3m: {e}"))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Replay(args) => replay(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let preset = ModelPreset::load(&args.model)?;
    let policies = match args.policy {
        PolicyChoice::All => vec![PolicyName::Predictive, PolicyName::Hpa, PolicyName::Oracle],
        PolicyChoice::Predictive => vec![PolicyName::Predictive],
        PolicyChoice::Hpa => vec![PolicyName::Hpa],
        PolicyChoice::Oracle => vec![PolicyName::Oracle],
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
            "predictive wins on both unserved and replica-hours: {}/{}; median cost vs oracle: predictive {:.3}, hpa {:.3}; median coverage {:.3}",
            agg.predictive_wins,
            agg.traces,
            agg.median_cost_predictive,
            agg.median_cost_hpa,
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
