//! Helpers shared by the integration tests: free loopback ports, a minimal HTTP GET, and a
//! guard that kills a child process.

#![allow(dead_code)] // each test binary uses a subset
#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::io::{Read, Write};
use std::process::Child;
use std::time::Duration;

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on 127.0.0.1:`port` over HTTP/1.0: (status, body), or `None` when nothing
/// answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_as(port, path, None)
}

/// As [`http_get`], with a bearer token when given.
pub fn http_get_as(port: u16, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n{auth}\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.get(9..12)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Kills and reaps the child when dropped.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A PostgreSQL server started for one test: `initdb` in a temporary directory, listening on
/// a loopback port, stopped and removed on drop. Debian's binaries run as the `postgres` user
/// when the test runs as root (the server refuses root).
pub struct Postgres {
    /// `postgres://` URL of the `postgres` database.
    pub url: String,
    child: Child,
    data: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn pg_bin(name: &str) -> std::path::PathBuf {
    let mut dirs: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| std::path::PathBuf::from(name))
}

fn as_postgres_user(bin: &std::path::Path) -> std::process::Command {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        std::process::Command::new(bin)
    }
}

#[allow(clippy::disallowed_methods)] // waiting for a child process
impl Postgres {
    /// Starts a server; panics with what to install when the binaries are missing.
    pub fn start() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let data = dir.path().join("data");
        let _ = std::process::Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status();
        let out = as_postgres_user(&pg_bin("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .output()
            .expect("initdb (apt-get install postgresql; .ci/run does)");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let child = as_postgres_user(&pg_bin("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(dir.path())
            .args(["-c", "fsync=on"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pg = Postgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            child,
            data,
            _dir: dir,
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Accepting connections is not yet accepting queries; give it a moment.
                std::thread::sleep(Duration::from_millis(300));
                return pg;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("postgres did not start on port {port}");
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT to the postmaster itself (runuser does not forward it): fast shutdown.
        let pid = std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().map(str::to_string));
        if let Some(pid) = pid {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &pid])
                .status();
        } else {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Starts the embedded demo on `data` (free ports): the child, its HTTP port, and the demo
/// token it printed. Its stdout is drained in the background.
#[allow(clippy::disallowed_methods)] // waiting for a child process
pub fn start_demo(data: &std::path::Path) -> (Kill, u16, String) {
    start_demo_with(data, &[], "1s")
}

/// As [`start_demo`], with extra environment variables and a given loop tick.
#[allow(clippy::disallowed_methods)] // waiting for a child process
pub fn start_demo_with(
    data: &std::path::Path,
    env: &[(&str, &str)],
    tick: &str,
) -> (Kill, u16, String) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let (http, grpc) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_prescale"))
        .args(["serve", "--demo-tick", tick])
        .env("PRESCALE_LISTEN_HTTP", format!("127.0.0.1:{http}"))
        .env("PRESCALE_LISTEN_GRPC", format!("127.0.0.1:{grpc}"))
        .env("PRESCALE_DATA_DIR", data)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut token = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(t) = line.strip_prefix("demo: token (role admin) for approving: ") {
            token = Some(t.trim().to_string());
            break;
        }
    }
    // Keep draining stdout: a closed pipe would make the service's next line fail.
    std::thread::spawn(move || lines.for_each(drop));
    let child = Kill(child);
    for _ in 0..300 {
        if http_get(http, "/readyz").is_some_and(|(s, _)| s == 200) {
            return (child, http, token.unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("not ready");
}

/// The committed 14-day NASA-HTTP fixture at 5-minute steps.
pub fn nasa_fixture() -> prescale::sim::Trace {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nasa_5min_14d.csv");
    prescale::sim::Trace::parse(&path, &std::fs::read(&path).unwrap()).unwrap()
}

/// The head of a service config for tests: no real Prometheus, 5-minute loops over 7 days
/// of history, `data` as the data directory; workloads follow.
pub fn test_config_head(data: &std::path::Path) -> String {
    format!(
        "prometheus: {{url: 'http://127.0.0.1:9', timeout: 1s}}\n\
         loop: {{interval: 300s, history: 7d}}\n\
         data_dir: '{}'\n\
         workloads:\n",
        data.display()
    )
}

/// A pending recommendation of `namespace/workload` from `from` to `to` replicas, made at
/// `created_at` and valid for ten minutes, with a forecast reason. Tests change the fields
/// they care about with struct update syntax.
pub fn recommendation(
    namespace: &str,
    workload: &str,
    from: u32,
    to: u32,
    created_at: i64,
) -> prescale::store::Recommendation {
    prescale::store::Recommendation {
        id: prescale::store::new_id(),
        namespace: namespace.into(),
        workload: workload.into(),
        from_replicas: from,
        to_replicas: to,
        created_at,
        valid_until: created_at + 600,
        state: prescale::store::RecState::Pending,
        reason: prescale::store::RecommendationReason {
            term: "forecast".into(),
            forecast_peak: 412.5,
            forecast_peak_at: Some(created_at + 240),
            quantile: 0.9,
            lead_seconds: 180,
            model: "mstl_ets".into(),
            from_known: true,
        },
        decided_by: None,
        decided_at: None,
        comment: None,
        outcome: None,
    }
}
