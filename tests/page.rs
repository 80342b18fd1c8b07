//! The review page in headless Chromium (Debian's `chromium`): the DOM has the pending
//! recommendation with its reason and buttons, and a chart per workload; the screenshot
//! shows the approve and reject buttons, the forecast band, the forecast and the demand.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design
#![allow(clippy::disallowed_methods)] // waiting for the demo to make a recommendation

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{http_get, start_demo};

fn chromium(args: &[&str], url: &str, profile: &std::path::Path) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium (apt-get install chromium; .ci/run does)")
}

/// Pixels within `tol` of `rgb` in an RGB(A) PNG.
fn count(png_path: &std::path::Path, rgb: [u8; 3], tol: u8) -> usize {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png_path).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    buf[..info.buffer_size()]
        .chunks(channels)
        .filter(|p| (0..3).all(|i| p[i].abs_diff(rgb[i]) <= tol))
        .count()
}

#[test]
fn the_review_page_shows_recommendations_and_charts() {
    let data = tempfile::tempdir().unwrap();
    let (_child, port, _token) = start_demo(data.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    let _id = loop {
        let (_, body) = http_get(port, "/api/v1/recommendations?state=pending").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if let Some(id) = v.as_array().unwrap().first().and_then(|r| r["id"].as_str()) {
            break id.to_string();
        }
        assert!(Instant::now() < deadline, "no pending recommendation");
        std::thread::sleep(Duration::from_millis(200));
    };
    let url = format!("http://127.0.0.1:{port}/");
    let profile = tempfile::tempdir().unwrap();

    // The DOM, as the browser built it.
    let out = chromium(&["--dump-dom"], &url, profile.path());
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && dom.contains("<h1>prescale</h1>"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // (The loop runs every second, so the pending one may have been superseded since.)
    assert!(
        dom.contains("<tr class=\"rec\" data-id=\""),
        "pending row missing"
    );
    assert!(
        dom.contains("button class=\"approve\" data-id=")
            && dom.contains("button class=\"reject\" data-id=")
    );
    assert!(
        dom.contains("demand up to") && dom.contains("lead 480 s; model "),
        "reason missing"
    );
    for w in ["demo/web", "demo/api"] {
        assert!(dom.contains(&format!("<h3>{w}</h3>")), "{w} card missing");
    }
    assert_eq!(
        dom.matches("<svg class=\"chart\"").count(),
        2,
        "one chart per workload"
    );
    assert!(
        !dom.contains("class=\"actual\" points=\"\""),
        "demand line empty"
    );

    // The screenshot: the elements are drawn, not only present.
    let shot = profile.path().join("page.png");
    let out = chromium(
        &[&format!("--screenshot={}", shot.display())],
        &url,
        profile.path(),
    );
    assert!(
        out.status.success() && shot.exists(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let approve = count(&shot, [0x2c, 0xa2, 0x5f], 6);
    let reject = count(&shot, [0xde, 0x2d, 0x26], 6);
    let band = count(&shot, [187, 219, 234], 8); // #9ecae1 at 70% over white
    let forecast = count(&shot, [0xe6, 0x55, 0x0d], 30);
    let demand = count(&shot, [0x22, 0x22, 0x22], 30);
    assert!(approve > 500, "approve button: {approve} px");
    assert!(reject > 500, "reject button: {reject} px");
    assert!(band > 20_000, "forecast band: {band} px");
    assert!(forecast > 200, "forecast line: {forecast} px");
    assert!(demand > 1_000, "demand line and text: {demand} px");
}

/// Installs playwright-core (npm registry) once per target dir, beside the click script.
fn click_script() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("playwright");
    if !dir.join("node_modules/playwright-core").exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg("playwright-core@1.64.1")
            .output()
            .expect("npm (Debian's nodejs and npm)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let script = dir.join("page_click.mjs");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/page_click.mjs"),
        &script,
    )
    .unwrap();
    script
}

/// Runs the demo (`env` added), waits for a pending recommendation, clicks Approve in
/// `mode`, and checks the recommendation was approved by the demo token. Returns what the
/// page reported.
fn approve_on_the_page(env: &[(&str, &str)], mode: &str) -> serde_json::Value {
    let script = click_script();
    // A slow loop (one every 10 s), so the pending recommendation is still the newest one
    // when the button is clicked.
    let data = tempfile::tempdir().unwrap();
    let (_child, port, token) = common::start_demo_with(data.path(), env, "10s");
    let get = |path: &str| common::http_get_as(port, path, Some(&token)).map(|(_, b)| b);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get("/api/v1/recommendations?state=pending").is_some_and(|b| b.contains("\"id\"")) {
        assert!(Instant::now() < deadline, "no pending recommendation");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = Command::new("node")
        .arg(&script)
        .arg(format!("http://127.0.0.1:{port}/"))
        .arg(&token)
        .arg(mode)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["id"].as_str().unwrap();
    assert_eq!(
        v["approved"].as_str().unwrap(),
        format!("approved: {id}"),
        "{v}"
    );
    assert_eq!(
        v["errors"],
        serde_json::json!([]),
        "script errors on the page: {v}"
    );
    let rec: serde_json::Value =
        serde_json::from_str(&get(&format!("/api/v1/recommendations/{id}")).unwrap()).unwrap();
    assert!(
        matches!(rec["state"].as_str(), Some("approved" | "applied")),
        "{rec}"
    );
    assert_eq!(rec["decided_by"], "demo");
    v
}

#[test]
fn approving_on_the_page_approves_with_the_typed_token() {
    let v = approve_on_the_page(&[], "open");
    assert!(v["refused"].as_str().unwrap().starts_with("401"), "{v}");
}

#[test]
fn without_read_access_the_page_asks_for_a_token_first() {
    let v = approve_on_the_page(&[("PRESCALE_API_ANONYMOUS_READ", "false")], "shell");
    assert!(v["locked"].as_str().unwrap().contains("token"), "{v}");
    assert_eq!(v["data_before_token"], false, "{v}");
    assert!(!v["token_kept"].as_str().unwrap().is_empty(), "{v}");
}
