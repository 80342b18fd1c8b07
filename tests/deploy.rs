//! deploy/: the kustomize base renders, passes `kubernetes-validate --strict`, is hardened
//! and least-privilege; the example ScaledObjects validate against KEDA's CRD schema and point
//! at workloads the ConfigMap publishes; the ConfigMap's config passes `check-config`; the
//! Dockerfile is multi-stage and non-root.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// KEDA's ScaledObject CRD: `$PRESCALE_KEDA_CRDS`, else the shared reference copy next to
/// the checkout (not part of the project, so it may be absent).
fn keda_crd() -> Option<PathBuf> {
    let dirs = [
        std::env::var_os("PRESCALE_KEDA_CRDS").map(PathBuf::from),
        Some(root().join("../shared/reference/keda-crds")),
        Some(PathBuf::from("/work/shared/reference/keda-crds")),
    ];
    dirs.into_iter()
        .flatten()
        .map(|d| d.join("keda.sh_scaledobjects.yaml"))
        .find(|p| p.exists())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_kustomize_base_renders_validates_and_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = run(Command::new("kubectl")
        .arg("kustomize")
        .arg(root().join("deploy/base")));
    let path = dir.path().join("rendered.yaml");
    std::fs::write(&path, &rendered).unwrap();
    for kind in [
        "Deployment",
        "Service",
        "ServiceAccount",
        "ClusterRole",
        "Role",
        "ConfigMap",
        "ServiceMonitor",
        "PersistentVolumeClaim",
    ] {
        assert!(
            rendered.contains(&format!("kind: {kind}\n")),
            "no {kind} rendered"
        );
    }

    // Every built-in kind validates strictly; only the ServiceMonitor (a CRD) has no schema
    // there, and validate_deploy.py checks it instead.
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", "1.33.0"])
        .arg(&path)
        .output()
        .expect("kubernetes-validate (pip install kubernetes-validate; .ci/run does)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let passed = text
        .lines()
        .filter(|l| l.contains(" passed for resource "))
        .count();
    let objects = rendered.lines().filter(|l| l.starts_with("kind: ")).count();
    assert_eq!(passed, objects - 1, "all but the ServiceMonitor: {text}");
    for line in text
        .lines()
        .filter(|l| l.starts_with("WARN") || l.starts_with("ERROR"))
    {
        assert!(line.contains("kind ServiceMonitor"), "unexpected: {line}");
    }

    // Hardening, RBAC, ServiceMonitor, the example ScaledObjects.
    let crd = keda_crd();
    if crd.is_none() {
        eprintln!(
            "note: KEDA's CRD not found; the ScaledObjects get the project's own checks only"
        );
    }
    let mut check = Command::new("python3");
    check
        .arg(root().join("tests/validate_deploy.py"))
        .arg(&path)
        .arg(root().join("deploy/examples"));
    if let Some(c) = &crd {
        check.arg(c);
    }
    let config = run(&mut check);

    // The ConfigMap's config is one prescale accepts.
    let cfg = dir.path().join("prescale.yaml");
    std::fs::write(&cfg, config).unwrap();
    let out = run(Command::new(env!("CARGO_BIN_EXE_prescale"))
        .arg("check-config")
        .arg(&cfg));
    assert!(out.contains("ok (2 workloads)"), "{out}");
}

#[test]
fn the_dockerfile_is_multi_stage_and_runs_as_non_root() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let froms = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(froms >= 2, "multi-stage");
    assert!(text.contains("COPY --from=build"));
    let last_user = text.lines().rfind(|l| l.starts_with("USER ")).unwrap();
    let uid: u32 = last_user[5..]
        .split(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(uid, 0, "runs as non-root");
    // Everything the build compiles in (include_str!) is copied into the build stage.
    for dir in ["proto", "models", "src", "tests/fixtures"] {
        assert!(
            text.contains(&format!("COPY {dir} {dir}")),
            "Dockerfile must copy {dir}"
        );
    }
}
