//! schemathesis (PyPI) against the served OpenAPI document of a running demo with reads
//! behind tokens: no 5xx, every status code, content type, header and body as documented,
//! 401 without a token. Not checked: that every schema-valid input is accepted (a cron
//! expression or a time in the future cannot be expressed in JSON Schema), and the KEDA
//! endpoint, whose 503 for missing data is its contract.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design
#![allow(clippy::disallowed_methods)] // waiting for a child process

mod common;

use std::process::Command;

use common::start_demo_with;

#[test]
fn the_api_matches_its_openapi_document() {
    let data = tempfile::tempdir().unwrap();
    let (_child, port, token) = start_demo_with(
        data.path(),
        // A rate high enough that the examples reach the handlers, not the 429 (documented,
        // so it would pass, but it would test nothing).
        &[
            ("PRESCALE_API_ANONYMOUS_READ", "false"),
            ("PRESCALE_API_RATE_PER_CALLER", "100000"),
        ],
        "1s",
    );
    // schemathesis keeps a cache where it runs (not in the checkout), and reads its config
    // there: a body over the size limit is refused with 413, which is a rejection too.
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(
        cwd.path().join("schemathesis.toml"),
        "[checks.negative_data_rejection]\nexpected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]\n",
    )
    .unwrap();
    let out = Command::new("schemathesis")
        .current_dir(cwd.path())
        .arg("run")
        .arg(format!("http://127.0.0.1:{port}/api/v1/openapi.json"))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--exclude-path", "/api/v1/keda/{namespace}/{name}"])
        .args(["--max-examples", "60", "--generation-deterministic"])
        .env("NO_COLOR", "1")
        .output()
        .expect("schemathesis (pip install schemathesis; .ci/run does)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains(" passed"), "{text}");
}
