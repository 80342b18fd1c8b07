//! The review page at `/`: plain server-rendered HTML and SVG. Workloads with a chart of
//! recent demand against the forecast band, and pending recommendations with their reasons
//! and approve and reject buttons (which call the API with the token typed on the page).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::auth::{Identity, Role};
use crate::app::WorkloadView;
use crate::store::{RecFilter, RecState, Recommendation};

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn time(t: i64) -> String {
    jiff::Timestamp::from_second(t).map_or_else(
        |_| t.to_string(),
        |ts| ts.strftime("%Y-%m-%d %H:%M UTC").to_string(),
    )
}

const W: f64 = 560.0;
const H: f64 = 160.0;

/// An SVG chart: the last `actual` values, then the forecast's point and upper band.
fn chart(actual: &[f64], point: &[f64], upper: &[f64], quantile: f64) -> String {
    let n = actual.len() + point.len();
    if n < 2 {
        return "<p class=\"muted\">no data yet</p>".to_string();
    }
    let top = actual.iter().chain(upper).copied().fold(1e-9_f64, f64::max) * 1.1;
    let x = |i: usize| i as f64 / (n - 1) as f64 * W;
    let y = |v: f64| H - (v / top).clamp(0.0, 1.0) * H;
    let line = |vals: &[f64], offset: usize| -> String {
        vals.iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i + offset), y(*v)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let off = actual.len().saturating_sub(1);
    let mut band = String::new();
    if !upper.is_empty() {
        let _ = write!(band, "{:.1},{:.1} ", x(off), H);
        band += &line(upper, actual.len());
        let _ = write!(band, " {:.1},{:.1}", x(n - 1), H);
    }
    format!(
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"demand and forecast\">\
         <rect width=\"{W}\" height=\"{H}\" fill=\"#ffffff\" stroke=\"#cccccc\"/>\
         <polygon class=\"band\" points=\"{band}\" fill=\"#9ecae1\" fill-opacity=\"0.7\"><title>forecast up to the {q} quantile</title></polygon>\
         <polyline class=\"actual\" points=\"{a}\" fill=\"none\" stroke=\"#222222\" stroke-width=\"2\"><title>observed demand</title></polyline>\
         <polyline class=\"forecast\" points=\"{f}\" fill=\"none\" stroke=\"#e6550d\" stroke-width=\"2\"><title>forecast</title></polyline>\
         <line x1=\"{nx:.1}\" y1=\"0\" x2=\"{nx:.1}\" y2=\"{H}\" stroke=\"#888888\" stroke-dasharray=\"4 3\"/>\
         </svg>",
        q = quantile,
        a = line(actual, 0),
        f = line(point, actual.len()),
        nx = x(off),
    )
}

fn workload_card(out: &mut String, w: &WorkloadView, recent: Option<(i64, Vec<f64>)>) {
    let key = format!("{}/{}", w.namespace, w.name);
    let id = format!("w-{}-{}", w.namespace, w.name).replace('.', "-");
    let num = |v: Option<u32>| v.map_or("–".to_string(), |v| v.to_string());
    let _ = write!(
        out,
        "<article class=\"workload\" id=\"{id}\"><h3>{key}</h3><p><span class=\"mode\">{mode}</span> · \
         <span class=\"state state-{state}\">{state}</span>{paused} · replicas <b class=\"current\">{cur}</b> → \
         <b class=\"desired\">{des}</b> · term {term} · model {model}</p>",
        id = esc(&id),
        key = esc(&key),
        mode = w.mode.as_str(),
        state = w.state.as_str(),
        paused = if w.paused { " · <b>paused</b>" } else { "" },
        cur = num(w.current_replicas),
        des = num(w.desired_replicas),
        term = esc(w.term.as_deref().unwrap_or("–")),
        model = esc(w.model.as_deref().unwrap_or("–")),
    );
    if let Some(e) = w.last_error.as_ref().or(w.actuator_error.as_ref()) {
        let _ = write!(out, "<p class=\"error\">{}</p>", esc(e));
    }
    let actual = recent.map(|(_, v)| v).unwrap_or_default();
    let (point, upper, q) = w
        .forecast
        .as_ref()
        .map_or((Vec::new(), Vec::new(), 0.9), |f| {
            let wide = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
            (wide(&f.point), wide(&f.upper), f.quantile)
        });
    out.push_str(&chart(&actual, &point, &upper, q));
    out.push_str("</article>");
}

fn rec_row(out: &mut String, r: &Recommendation) {
    let peak_at = r.reason.forecast_peak_at.map_or("–".to_string(), time);
    let _ = write!(
        out,
        "<tr class=\"rec\" data-id=\"{id}\"><td>{ns}/{wl}</td><td class=\"change\">{from} → {to}</td>\
         <td>{created}</td><td>{until}</td><td class=\"reason\">{term}: demand up to {peak:.1} (q{q}) \
         at {peak_at}; lead {lead} s; model {model}</td><td>\
         <button class=\"approve\" data-id=\"{id}\">Approve</button> \
         <button class=\"reject\" data-id=\"{id}\">Reject</button></td></tr>",
        id = esc(&r.id),
        ns = esc(&r.namespace),
        wl = esc(&r.workload),
        from = if r.reason.from_known {
            r.from_replicas.to_string()
        } else {
            "? (not known yet)".to_string()
        },
        to = r.to_replicas,
        created = time(r.created_at),
        until = time(r.valid_until),
        term = esc(&r.reason.term),
        peak = r.reason.forecast_peak,
        q = r.reason.quantile,
        peak_at = peak_at,
        lead = r.reason.lead_seconds,
        model = esc(&r.reason.model),
    );
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222;background:#f7f7f7}\
h1{margin:0 0 .3em}header{display:flex;gap:2em;align-items:baseline}\
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ccc;padding:.3em .5em;text-align:left}\
.workload{background:#fff;border:1px solid #ccc;padding:.5em 1em;margin:.8em 0;display:inline-block;vertical-align:top;margin-right:1em}\
button.approve{background:#2ca25f;color:#fff;border:0;padding:.4em .8em}button.reject{background:#de2d26;color:#fff;border:0;padding:.4em .8em}\
.error{color:#de2d26}.muted{color:#888}#message{font-weight:bold}";

const SCRIPT: &str = r#"
{
const tokenInput = document.getElementById('token');
tokenInput.value = sessionStorage.getItem('prescale-token') || '';
tokenInput.addEventListener('change', () => sessionStorage.setItem('prescale-token', tokenInput.value));
async function decide(id, verb) {
  const comment = verb === 'reject' ? (prompt('Why reject?') || '') : '';
  const res = await fetch(`/api/v1/recommendations/${id}/${verb}`, {
    method: 'POST',
    headers: {'Content-Type': 'application/json', 'Authorization': `Bearer ${tokenInput.value}`},
    body: JSON.stringify({comment}),
  });
  const body = await res.json().catch(() => ({}));
  document.getElementById('message').textContent =
    res.ok ? `${verb}d: ${id}` : `${res.status}: ${body.error || 'failed'}`;
  if (res.ok) setTimeout(() => location.reload(), 800);
}
for (const b of document.querySelectorAll('button.approve')) b.onclick = () => decide(b.dataset.id, 'approve');
for (const b of document.querySelectorAll('button.reject')) b.onclick = () => decide(b.dataset.id, 'reject');
}
"#;

/// The start of both pages, down to the header: title, style, the token field and the
/// status line (with `message`).
fn head(message: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>prescale: review</title>\
         <style>{STYLE}</style></head><body><header><h1>prescale</h1>\
         <label>API token <input id=\"token\" type=\"password\" autocomplete=\"off\"></label>\
         <span id=\"message\" role=\"status\">{}</span></header>",
        esc(message)
    )
}

/// What is served, with status 401, to a browser without read access: a token field and
/// nothing else; the token typed is kept for the session and the page is loaded with it.
/// Both scripts are blocks: `document.write` keeps the shell's globals, and a second
/// top-level `const` of the same name would stop the page's script.
const SHELL_SCRIPT: &str = r#"
{
const shellToken = document.getElementById('token');
async function load(t) {
  const res = await fetch('/', {headers: {'Authorization': `Bearer ${t}`}});
  if (!res.ok) { document.getElementById('message').textContent = `${res.status}: token refused`; return; }
  sessionStorage.setItem('prescale-token', t);
  const html = await res.text();
  document.open(); document.write(html); document.close();
}
shellToken.addEventListener('change', () => load(shellToken.value));
const saved = sessionStorage.getItem('prescale-token');
if (saved) load(saved);
}
"#;

/// The page. Read access follows the API's (`api.anonymous_read`, the viewer role): a
/// caller without it gets a shell that asks for a token and shows no data; decisions always
/// need a token.
pub async fn index(State(s): State<Arc<ApiState>>, caller: Identity) -> Response {
    if s.tokens.permit(&caller, Role::Viewer).is_err() {
        let mut body = head("a token with the viewer role is needed to read");
        let _ = write!(body, "<script>{SHELL_SCRIPT}</script></body></html>");
        return (
            StatusCode::UNAUTHORIZED,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response();
    }
    let views: Vec<WorkloadView> = s
        .shared
        .views
        .read()
        .map(|v| v.values().cloned().collect())
        .unwrap_or_default();
    let pending = match s.shared.store.get() {
        Some(store) => store
            .list(&RecFilter {
                state: Some(RecState::Pending),
                limit: 100,
                ..RecFilter::default()
            })
            .await
            .ok(),
        None => None,
    };
    let mut out = head("");
    out.push_str("<section id=\"pending\"><h2>Pending recommendations</h2>");
    match pending {
        None => out.push_str("<p class=\"error\">the store is unavailable</p>"),
        Some(recs) if recs.is_empty() => {
            out.push_str("<p class=\"muted\">nothing waiting for a decision</p>")
        }
        Some(recs) => {
            out.push_str(
                "<table><thead><tr><th>workload</th><th>replicas</th><th>created</th>\
                <th>valid until</th><th>why</th><th>decision</th></tr></thead><tbody>",
            );
            for r in &recs {
                rec_row(&mut out, r);
            }
            out.push_str("</tbody></table>");
        }
    }
    out.push_str("</section><section id=\"workloads\"><h2>Workloads</h2>");
    for w in &views {
        let key = format!("{}/{}", w.namespace, w.name);
        let recent = s.shared.recent.get().and_then(|f| f(&key, 144));
        workload_card(&mut out, w, recent);
    }
    let _ = write!(out, "</section><script>{SCRIPT}</script></body></html>");
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        out,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
    }

    #[test]
    fn chart_draws_actual_forecast_and_band() {
        let svg = chart(&[1.0, 2.0, 3.0], &[3.0, 4.0], &[4.0, 5.0], 0.9);
        assert!(svg.contains("class=\"band\"") && svg.contains("class=\"actual\""));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(chart(&[], &[], &[], 0.9).contains("no data"));
    }
}
