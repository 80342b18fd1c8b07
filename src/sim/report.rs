//! Replay outputs: `decisions.csv` per policy and `summary.json`.

use std::io::Write;
use std::path::Path;

use super::{Row, Summary};

/// Writes a policy's rows as CSV: `timestamp,demand,desired_replicas,ready_replicas` and then
/// `total_replicas,unserved,forecast_point_peak,forecast_upper_peak,model,term,quantile,
/// headroom_scale`.
///
/// # Errors
/// I/O errors.
pub fn write_decisions(path: &Path, rows: &[Row]) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        w,
        "timestamp,demand,desired_replicas,ready_replicas,total_replicas,unserved,\
         forecast_point_peak,forecast_upper_peak,model,term,quantile,headroom_scale"
    )?;
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
    for r in rows {
        writeln!(
            w,
            "{},{},{},{},{},{:.6},{},{},{},{},{},{}",
            r.timestamp,
            r.demand,
            r.desired_replicas,
            r.ready_replicas,
            r.total_replicas,
            r.unserved,
            opt(r.forecast_point),
            opt(r.forecast_upper),
            r.model,
            r.term.as_str(),
            r.quantile,
            r.headroom_scale
        )?;
    }
    w.flush()
}

/// Writes `summary.json`.
///
/// # Errors
/// I/O or serialisation errors.
pub fn write_summary(path: &Path, summary: &Summary) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(summary).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}
