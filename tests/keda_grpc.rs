//! The KEDA external scaler against an independent client: Python `grpcio` with stubs that
//! `grpcio-tools` generates from `proto/externalscaler.proto`. Covers every RPC, the
//! metrics-api JSON, hostile sizes, Prometheus down (UNAVAILABLE, never zero or false) and
//! mutual TLS.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design
#![allow(clippy::disallowed_methods)] // polling a child process from a test thread

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::{Kill, free_port, http_get};

const PYTHON_HELP: &str =
    "needs Python grpcio and grpcio-tools (pip install grpcio grpcio-tools; .ci/run does)";

/// Generates the Python stubs from the project's proto into `dir`.
fn stubs(dir: &Path) {
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let out = Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto)
        .arg(format!("--python_out={}", dir.display()))
        .arg(format!("--grpc_python_out={}", dir.display()))
        .arg(proto.join("externalscaler.proto"))
        .output()
        .expect(PYTHON_HELP);
    assert!(
        out.status.success(),
        "{PYTHON_HELP}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_ready(http: u16, child: &mut Kill) {
    for _ in 0..300 {
        if http_get(http, "/readyz").is_some_and(|(s, _)| s == 200) {
            return;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("prescale exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("prescale never became ready");
}

fn client(stubs: &Path, grpc: u16, http: u16, scenario: &str, extra: &[String]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keda_client.py");
    let out = Command::new("python3")
        .arg(script)
        .arg("--stubs")
        .arg(stubs)
        .args(["--grpc", &format!("127.0.0.1:{grpc}")])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .args(["--scenario", scenario])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scenario {scenario}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ok: "), "{stdout}");
}

fn spawn(args: &[&str], http: u16, grpc: u16, data: &Path) -> Kill {
    Kill(
        Command::new(env!("CARGO_BIN_EXE_prescale"))
            .args(args)
            .env("PRESCALE_LISTEN_HTTP", format!("127.0.0.1:{http}"))
            .env("PRESCALE_LISTEN_GRPC", format!("127.0.0.1:{grpc}"))
            .env("PRESCALE_DATA_DIR", data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A config whose Prometheus is down (a closed port), with `demo/web` in auto mode.
fn down_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let closed = free_port();
    let path = dir.join("prescale.yaml");
    std::fs::write(
        &path,
        format!(
            "prometheus: {{url: 'http://127.0.0.1:{closed}', timeout: 1s, retries: 0}}\n\
             loop: {{interval: 2s, history: 1h}}\n{extra}\
             workloads:\n\
             - {{namespace: demo, name: web, demand_query: 'up', capacity_per_replica: 10, max_replicas: 5, mode: auto}}\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn every_rpc_agrees_with_the_api_on_the_demo() {
    let dir = tempfile::tempdir().unwrap();
    stubs(dir.path());
    let (http, grpc) = (free_port(), free_port());
    let mut child = spawn(&["serve", "--demo-tick", "1s"], http, grpc, dir.path());
    wait_ready(http, &mut child);
    client(dir.path(), grpc, http, "healthy", &[]);
    // The value also shows on /metrics under the same name.
    let (_, metrics) = http_get(http, "/metrics").unwrap();
    assert!(metrics.contains("prescale_desired_replicas{namespace=\"demo\",workload=\"web\"}"));
}

#[test]
fn prometheus_down_gives_unavailable_never_zero() {
    let dir = tempfile::tempdir().unwrap();
    stubs(dir.path());
    let cfg = down_config(dir.path(), "");
    let (http, grpc) = (free_port(), free_port());
    let mut child = spawn(
        &["serve", "--config", cfg.to_str().unwrap()],
        http,
        grpc,
        dir.path(),
    );
    wait_ready(http, &mut child);
    client(dir.path(), grpc, http, "down", &[]);
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn mutual_tls_requires_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    stubs(d);
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=prescale-test-ca",
        ],
    );
    std::fs::write(
        d.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for who in ["server", "client"] {
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
                "-subj",
                &format!("/CN={who}"),
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{who}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{who}.ext"),
            ],
        );
    }
    let tls = format!(
        "keda:\n  tls: {{cert_file: '{0}/server.pem', key_file: '{0}/server.key', client_ca_file: '{0}/ca.pem'}}\n",
        d.display()
    );
    let cfg = down_config(d, &tls);
    let (http, grpc) = (free_port(), free_port());
    let mut child = spawn(&["serve", "--config", cfg.to_str().unwrap()], http, grpc, d);
    wait_ready(http, &mut child);
    let p = |f: &str| d.join(f).display().to_string();
    client(
        d,
        grpc,
        http,
        "tls",
        &[
            "--ca".into(),
            p("ca.pem"),
            "--client-cert".into(),
            p("client.pem"),
            "--client-key".into(),
            p("client.key"),
        ],
    );
}
