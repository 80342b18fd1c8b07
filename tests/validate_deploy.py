"""Checks the rendered deploy/ manifests and the example ScaledObjects (run by tests/deploy.rs).

usage: validate_deploy.py RENDERED.yaml EXAMPLES_DIR [KEDA_SCALEDOBJECT_CRD.yaml]

- Pod and container hardening, probes, resources; PDB only with 2+ replicas; the data
  directory (the SQLite review store) on a PersistentVolumeClaim, Recreate when ReadWriteOnce.
- RBAC: no wildcards, no secrets, only the verbs and resources prescale uses.
- ServiceMonitor: selects the Service and scrapes its http port at /metrics.
- ScaledObjects: the KEDA CRD's openAPIV3Schema (when given), a fallback block, and that
  each points at the Service's ports and at a workload the ConfigMap publishes to KEDA.
Prints the config file found in the ConfigMap to stdout (for `prescale check-config`).
"""

import sys

import jsonschema
import yaml

rendered, examples = sys.argv[1], sys.argv[2]
crd_path = sys.argv[3] if len(sys.argv) > 3 else None
errors = []


def need(cond, what):
    if not cond:
        errors.append(what)


docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)

# Deployment hardening.
(dep,) = by_kind["Deployment"]
pod = dep["spec"]["template"]["spec"]
need(pod["securityContext"].get("runAsNonRoot") is True, "pod runAsNonRoot")
need(pod["securityContext"].get("runAsUser", 0) != 0, "pod runs as a non-zero uid")
need(pod.get("serviceAccountName") == "prescale", "service account")
for c in pod["containers"]:
    sc = c.get("securityContext", {})
    need(sc.get("readOnlyRootFilesystem") is True, f"{c['name']}: readOnlyRootFilesystem")
    need(sc.get("allowPrivilegeEscalation") is False, f"{c['name']}: allowPrivilegeEscalation false")
    need(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{c['name']}: drop ALL")
    need(c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz", "readiness on /readyz")
    need(c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz", "liveness on /healthz")
    res = c.get("resources", {})
    need("memory" in res.get("requests", {}) and "cpu" in res.get("requests", {}), "requests set")
    need("memory" in res.get("limits", {}), "memory limit set")
    env = {e["name"]: e for e in c.get("env", [])}
    need("POD_NAME" in env, "POD_NAME for the Lease identity")
replicas = dep["spec"].get("replicas", 1)
need(("PodDisruptionBudget" in by_kind) == (replicas >= 2), "PDB only with 2+ replicas")

# RBAC.
allowed = {
    ("apps", "deployments/scale"): {"get", "update", "patch"},
    ("apps", "statefulsets/scale"): {"get", "update", "patch"},
    ("autoscaling", "horizontalpodautoscalers"): {"get", "list", "watch"},
    ("keda.sh", "scaledobjects"): {"get", "list", "watch"},
    ("coordination.k8s.io", "leases"): {"get", "create", "update"},
}
for kind in ("ClusterRole", "Role"):
    for role in by_kind.get(kind, []):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                need("*" not in rule.get(field, []), f"{role['metadata']['name']}: wildcard in {field}")
            for g in rule["apiGroups"]:
                for r in rule["resources"]:
                    need(r != "secrets", f"{role['metadata']['name']}: secrets")
                    extra = set(rule["verbs"]) - allowed.get((g, r), set())
                    need(not extra, f"{role['metadata']['name']}: {g}/{r} {sorted(extra)}")

# Service and ServiceMonitor.
(svc,) = by_kind["Service"]
ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
need(set(ports) == {"http", "grpc"}, f"service ports {ports}")
(sm,) = by_kind["ServiceMonitor"]
need(sm["apiVersion"] == "monitoring.coreos.com/v1", "ServiceMonitor apiVersion")
sel = sm["spec"]["selector"]["matchLabels"]
need(all(svc["metadata"]["labels"].get(k) == v for k, v in sel.items()), "ServiceMonitor selects the Service")
scrape = [e for e in sm["spec"]["endpoints"] if e["port"] == "http" and e.get("path") == "/metrics"]
need(len(scrape) == 1, "scrapes /metrics")
# Every per-workload series carries the workload's `namespace`; without honorLabels the
# Operator renames it and the dashboard's namespace filter sees only prescale's own.
need(all(e.get("honorLabels") is True for e in scrape), "ServiceMonitor honorLabels: true")

# The config in the ConfigMap.
(cm,) = by_kind["ConfigMap"]
config = yaml.safe_load(cm["data"]["prescale.yaml"])
published = {
    f"{w['namespace']}/{w['name']}"
    for w in config["workloads"]
    if w.get("mode") == "auto" and w.get("actuator", "keda") == "keda"
}
# The data directory (the SQLite review store unless store.url is set) is on a volume that
# outlives the pod; a ReadWriteOnce claim needs the Recreate strategy.
mounts = {m["mountPath"].rstrip("/"): m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
data_dir = str(config.get("data_dir") or "data").rstrip("/")
# The deepest mount holding data_dir.
holding = [p for p in mounts if data_dir == p or data_dir.startswith(p + "/")]
data_vol = mounts[max(holding, key=len)] if holding else None
need(data_vol is not None, f"data_dir {data_dir} is on a mounted volume")
vols = {v["name"]: v for v in pod.get("volumes", [])}
claim = vols.get(data_vol, {}).get("persistentVolumeClaim", {}).get("claimName")
if not (config.get("store") or {}).get("url"):
    need(claim is not None, "data_dir (the SQLite review store) on a PersistentVolumeClaim")
pvcs = {p["metadata"]["name"]: p for p in by_kind.get("PersistentVolumeClaim", [])}
if claim is not None:
    need(claim in pvcs, f"claim {claim} is rendered")
    rwo = "ReadWriteOnce" in pvcs.get(claim, {}).get("spec", {}).get("accessModes", [])
    strategy = dep["spec"].get("strategy", {}).get("type", "RollingUpdate")
    need(not rwo or (strategy == "Recreate" and replicas == 1), "a ReadWriteOnce data volume: one replica, Recreate")
ns = svc["metadata"]["namespace"]
host = f"{svc['metadata']['name']}.{ns}.svc.cluster.local"

# Example ScaledObjects.
schema = None
if crd_path:
    crd = yaml.safe_load(open(crd_path))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = version["schema"]["openAPIV3Schema"]
import glob  # noqa: E402

files = sorted(glob.glob(f"{examples}/scaledobject-*.yaml"))
need(len(files) == 3, f"three example ScaledObjects, found {len(files)}")
types = set()
for f in files:
    so = yaml.safe_load(open(f))
    if schema is not None:
        try:
            jsonschema.validate(so, schema)
        except jsonschema.ValidationError as e:
            errors.append(f"{f}: KEDA CRD schema: {e.message}")
    need(so["apiVersion"] == "keda.sh/v1alpha1" and so["kind"] == "ScaledObject", f"{f}: kind")
    fb = so["spec"].get("fallback", {})
    ok = all(isinstance(fb.get(k), int) and fb[k] > 0 for k in ("failureThreshold", "replicas"))
    need(ok, f"{f}: fallback block")
    # KEDA's default fallback (static) sets exactly `replicas`: a scale-down when data goes
    # missing at a peak, unless it keeps the replicas in place or reaches the maximum.
    never_lower = fb.get("behavior") in ("currentReplicas", "currentReplicasIfHigher") or (
        fb.get("replicas", 0) >= so["spec"].get("maxReplicaCount", 100)
    )
    need(never_lower, f"{f}: fallback can lower replicas (behavior {fb.get('behavior', 'static')})")
    for t in so["spec"]["triggers"]:
        types.add(t["type"])
        need(t.get("metricType") == "AverageValue", f"{f}: AverageValue")
        m = t["metadata"]
        if t["type"] in ("external", "external-push"):
            need(m["scalerAddress"] == f"{host}:{ports['grpc']}", f"{f}: scalerAddress {m['scalerAddress']}")
            key = f"{m.get('namespace', so['metadata']['namespace'])}/{m.get('workload', so['metadata']['name'])}"
        else:
            need(m["url"].startswith(f"http://{host}:{ports['http']}/api/v1/keda/"), f"{f}: url {m['url']}")
            need(m["valueLocation"] == "desired_replicas" and m["targetValue"] == "1", f"{f}: valueLocation/targetValue")
            key = m["url"].split("/api/v1/keda/")[1]
        need(key in published, f"{f}: {key} is not an auto/keda workload of the ConfigMap ({sorted(published)})")
need(types == {"external", "external-push", "metrics-api"}, f"trigger types {types}")

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
sys.stdout.write(cm["data"]["prescale.yaml"])
