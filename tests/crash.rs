//! Kill -9 while approvals are being written (test plan C3): after a restart nothing that
//! was approved with a 2xx is lost, each approval is in the audit log once, and nothing is
//! applied twice. Runs the embedded demo (its `demo/api` workload is in recommend mode) as a
//! child process on a data directory that survives the kills.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design
#![allow(clippy::disallowed_methods)] // pacing a child process from a test thread

mod common;

use std::time::{Duration, Instant};

use common::{http_get, start_demo as start};

fn post(port: u16, path: &str, token: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let body = "{}";
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.get(9..12)?.parse().ok()?;
    Some((
        status,
        buf.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    ))
}

fn json(port: u16, path: &str) -> serde_json::Value {
    let (status, body) = http_get(port, path).unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn kill_9_loses_no_approval_and_applies_nothing_twice() {
    let data = tempfile::tempdir().unwrap();
    let mut approved: Vec<String> = Vec::new();
    for round in 0..5u64 {
        let (mut child, port, token) = start(data.path());
        // Wait for a pending recommendation, approve it, and kill -9 soon after the 2xx
        // (at a different point of the loop each round), or in the middle of a burst.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut done = false;
        while !done && Instant::now() < deadline {
            let pending = json(
                port,
                "/api/v1/recommendations?state=pending&namespace=demo&workload=api",
            );
            if let Some(id) = pending
                .as_array()
                .unwrap()
                .first()
                .and_then(|r| r["id"].as_str())
            {
                let (status, body) = post(
                    port,
                    &format!("/api/v1/recommendations/{id}/approve"),
                    &token,
                )
                .unwrap();
                if status == 200 {
                    approved.push(id.to_string());
                    std::thread::sleep(Duration::from_millis(round * 230));
                    done = true;
                } else {
                    assert_eq!(status, 409, "{body}"); // superseded or expired in between
                }
            } else {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        assert!(done, "round {round}: no pending recommendation to approve");
        child.0.kill().unwrap(); // SIGKILL
        let _ = child.0.wait();
    }

    // Restart once more and let a few loops run: every approval is kept and applied once.
    let (_child, port, _) = start(data.path());
    std::thread::sleep(Duration::from_secs(3));
    // An approval is kept until it is applied, or refused as stale: another approval applied
    // first (after a restart they go in the order of their approval times) moved the workload
    // away from the replicas it was approved from, and a stale one is never forced.
    let stale = |rec: &serde_json::Value| {
        rec["state"] == "failed"
            && rec["outcome"]
                .as_str()
                .is_some_and(|o| o.starts_with("stale"))
    };
    let mut applied = 0;
    for id in &approved {
        let rec = json(port, &format!("/api/v1/recommendations/{id}"));
        let state = rec["state"].as_str().unwrap();
        assert!(
            matches!(state, "approved" | "applied") || stale(&rec),
            "{id} lost its approval: {rec}"
        );
        applied += usize::from(state == "applied");
        let audit = json(port, &format!("/api/v1/audit?target={id}&limit=100"));
        let count = |a: &str| {
            audit
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["action"] == a)
                .count()
        };
        assert_eq!(count("approve"), 1, "{id}: {audit}");
        assert!(count("apply") <= 1, "{id} applied twice: {audit}");
        if state == "applied" {
            assert_eq!(count("apply"), 1);
        }
    }
    // The newest approval is applied by now (older ones may have been applied or, if a newer
    // approval got there first, are still waiting their turn; none is lost), unless an older
    // one applied first made it stale.
    let last = json(
        port,
        &format!("/api/v1/recommendations/{}", approved.last().unwrap()),
    );
    assert!(
        last["state"] == "applied" || (stale(&last) && applied > 0),
        "{last}"
    );
}
