#!/usr/bin/env python3
"""Checks of the Kubernetes manifests in deploy/kubernetes/, offline.

    python3 tests/deploy/check_kubernetes.py [path/to/skywave]    (default target/release/skywave)

  - every core manifest (Deployments, Services, PodDisruptionBudget) against
    the Kubernetes JSON schemas shipped by the pip package kubernetes-validate,
    in strict mode (unknown fields are errors), for the oldest Kubernetes the
    manifests support (1.30: the preStop sleep action) and the newest the
    package knows;
  - the ServiceMonitor against the prometheus-operator CRD's schema as the
    pip package cloudcoil-models-prometheus-operator ships it (models
    generated from the CRDs of prometheus-operator 0.80.1, applied with
    pydantic: types, enums and patterns), plus a check that no field was
    dropped as unknown; the kustomization structurally (its schema is not
    Kubernetes' and no offline copy of it is used here);
  - the rules the deployment depends on: probes (/readyz on 9001, /healthz on
    9000), the internal listener on 0.0.0.0, the secret from a Secret, the
    grace period against the 10 s drain, resources, the security context
    (non-root 65532, read-only root, no capabilities), Services, PDB and
    ServiceMonitor selecting the right pods and ports, no service links;
  - the skywave binary reads the Deployment's environment (the secret
    filled in) with `check-config --strict`, and its ports are the
    container's.

Needs PyYAML, kubernetes-validate and cloudcoil-models-prometheus-operator
(tests/deploy/requirements.txt); a missing one is a FAIL naming it. The last
line is "N passed, N failed".
"""

import argparse
import glob
import importlib.metadata
import os
import re
import secrets
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from harness import executable  # noqa: E402
from results import Results  # noqa: E402

MANIFESTS = os.path.join(REPO, "deploy", "kubernetes")
# preStop's sleep action (no shell in the image) is on by default from 1.30.
OLDEST_KUBERNETES = "1.30"
DRAIN_SECONDS = 10  # SIGTERM: every socket closed with 1001, exit within 10 s
NONROOT = 65532


def version_of(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def load(results):
    try:
        import yaml
    except ImportError:
        results.check("PyYAML", False, "not installed (pip install -r tests/deploy/requirements.txt)")
        return None
    documents = []
    for path in sorted(glob.glob(os.path.join(MANIFESTS, "*.yaml"))):
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    documents.append((os.path.relpath(path, REPO), doc))
    results.check("deploy/kubernetes/*.yaml parsed", bool(documents),
                  ", ".join(sorted({f"{d['kind']}/{d.get('metadata', {}).get('name', '')}" for _, d in documents})))
    return documents


def name(doc):
    return f"{doc['kind']}/{doc.get('metadata', {}).get('name', '?')}"


# ------------------------------------------------------------------- schemas

def check_core_schemas(results, documents):
    try:
        import kubernetes_validate
        from kubernetes_validate import utils as kv_utils
    except ImportError:
        results.check("kubernetes-validate", False,
                      "the pip package kubernetes-validate (the Kubernetes JSON schemas) is not installed "
                      "(pip install -r tests/deploy/requirements.txt)")
        return
    newest = kv_utils.major_minor(kv_utils.latest_version())
    package = f"kubernetes-validate {version_of('kubernetes-validate')}"
    for path, doc in documents:
        if doc.get("kind") in ("Kustomization", "ServiceMonitor"):
            continue
        problems = []
        for version in (OLDEST_KUBERNETES, newest):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                problems.append(f"{version}: {'.'.join(map(str, error.path)) or '<root>'}: {error.message}")
            except Exception as error:  # no schema for this kind/apiVersion
                problems.append(f"{version}: {getattr(error, 'message', error)}")
        results.check(f"{path} {name(doc)} valid against the Kubernetes {OLDEST_KUBERNETES} and {newest} schemas "
                      "(strict)", not problems, "; ".join(problems) if problems else package)


def unknown_fields(given, dumped, path=""):
    """Keys of `given` that the model's dump does not have: fields pydantic
    ignored because the CRD schema does not know them."""
    out = []
    if isinstance(given, dict) and isinstance(dumped, dict):
        for key, value in given.items():
            if key not in dumped:
                out.append(f"{path}{key}")
            else:
                out += unknown_fields(value, dumped[key], f"{path}{key}.")
    elif isinstance(given, list) and isinstance(dumped, list):
        for i, (a, b) in enumerate(zip(given, dumped)):
            out += unknown_fields(a, b, f"{path}{i}.")
    return out


def check_servicemonitor_schema(results, path, doc):
    try:
        from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor
        import pydantic
    except ImportError as error:
        results.check(f"{path} ServiceMonitor against the prometheus-operator CRD schema", False,
                      f"the pip package cloudcoil-models-prometheus-operator is not installed ({error}); "
                      "pip install -r tests/deploy/requirements.txt")
        return
    package = (f"cloudcoil-models-prometheus-operator {version_of('cloudcoil.models.prometheus_operator')}, "
               f"pydantic {version_of('pydantic')}")
    try:
        model = ServiceMonitor.model_validate(doc)
    except pydantic.ValidationError as error:
        results.check(f"{path} {name(doc)} valid against the prometheus-operator CRD schema", False,
                      str(error).replace("\n", " ")[:600])
        return
    dumped = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    unknown = unknown_fields(doc, dumped)
    results.check(f"{path} {name(doc)} valid against the prometheus-operator CRD schema, no unknown fields",
                  not unknown, f"unknown: {unknown}" if unknown else package)


def check_kustomization(results, documents):
    found = [(p, d) for p, d in documents if d.get("kind") == "Kustomization"]
    if not found:
        results.check("deploy/kubernetes/kustomization.yaml", False, "missing")
        return
    path, doc = found[0]
    resources = doc.get("resources", [])
    missing = [r for r in resources if not os.path.isfile(os.path.join(MANIFESTS, r))]
    files = sorted({os.path.basename(p) for p, d in documents if d.get("kind") not in ("Kustomization",)})
    expected = [f for f in files if f != "servicemonitor.yaml"]
    results.check(f"{path}: apiVersion kustomize.config.k8s.io/v1beta1 (checked structurally, no schema)",
                  doc.get("apiVersion") == "kustomize.config.k8s.io/v1beta1", str(doc.get("apiVersion")))
    results.check(f"{path}: lists every core manifest, each existing (servicemonitor.yaml left out: CRD)",
                  not missing and sorted(resources) == expected,
                  f"missing files: {missing}" if missing else f"resources {resources}, files {expected}")
    images = {i.get("name") for i in doc.get("images", [])}
    containers = {c["image"] for _, d in documents if d.get("kind") == "Deployment"
                  for c in d["spec"]["template"]["spec"]["containers"]}
    results.check(f"{path}: its images: entry names the skywave container's image", "skywave" in images
                  and "skywave" in containers, f"images {sorted(images)}, containers {sorted(containers)}")


# --------------------------------------------------------------------- rules

def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_rules(results, documents, binary):
    by_kind = {}
    for path, doc in documents:
        by_kind.setdefault(doc["kind"], []).append(doc)
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    skywave = deployments.get("skywave")
    if skywave is None:
        results.check("a Deployment named skywave", False, f"Deployments: {sorted(deployments)}")
        return
    pod = skywave["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    spec = pod["spec"]
    container = next((c for c in spec["containers"] if c["name"] == "skywave"), spec["containers"][0])
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    env = {e["name"]: e for e in container.get("env", [])}

    results.check("Deployment selector matches its pod labels",
                  matches(skywave["spec"]["selector"]["matchLabels"], pod_labels))
    results.check("container ports ws 9000 and internal 9001", ports.get("ws") == 9000 and ports.get("internal") == 9001,
                  str(ports))

    def probe_port(probe):
        port = (probe or {}).get("httpGet", {}).get("port")
        return ports.get(port, port)
    readiness, liveness = container.get("readinessProbe"), container.get("livenessProbe")
    results.check("readiness: GET /readyz on the internal port 9001",
                  (readiness or {}).get("httpGet", {}).get("path") == "/readyz" and probe_port(readiness) == 9001,
                  str(readiness))
    results.check("liveness: GET /healthz on the public port 9000",
                  (liveness or {}).get("httpGet", {}).get("path") == "/healthz" and probe_port(liveness) == 9000,
                  str(liveness))
    bind = env.get("SKYWAVE_INTERNAL_BIND", {}).get("value")
    results.check("SKYWAVE_INTERNAL_BIND=0.0.0.0 (the kubelet probes /readyz on the pod's address)", bind == "0.0.0.0",
                  str(bind))
    secret_ref = env.get("SKYWAVE_WORKER_SECRET", {}).get("valueFrom", {}).get("secretKeyRef", {})
    results.check("SKYWAVE_WORKER_SECRET comes from a Secret (secretKeyRef), not written in the manifest",
                  bool(secret_ref.get("name") and secret_ref.get("key"))
                  and "value" not in env.get("SKYWAVE_WORKER_SECRET", {}), str(secret_ref))

    grace = spec.get("terminationGracePeriodSeconds", 30)
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    pause = pre_stop.get("sleep", {}).get("seconds", 0)
    results.check(f"preStop pauses before SIGTERM (endpoint removal reaches the proxies)", pause > 0, str(pre_stop))
    results.check(f"terminationGracePeriodSeconds covers preStop + the {DRAIN_SECONDS} s drain",
                  grace >= pause + DRAIN_SECONDS + 2, f"{grace} s for {pause} s preStop + {DRAIN_SECONDS} s drain")

    resources = container.get("resources", {})
    results.check("resources: CPU and memory requests, a memory limit",
                  {"cpu", "memory"} <= set(resources.get("requests", {})) and "memory" in resources.get("limits", {}),
                  str(resources))
    pod_sc, sc = spec.get("securityContext", {}), container.get("securityContext", {})
    user = sc.get("runAsUser", pod_sc.get("runAsUser"))
    results.check(f"runs as non-root {NONROOT} (runAsNonRoot, runAsUser)",
                  (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")) is True and user == NONROOT, f"runAsUser {user}")
    results.check("read-only root filesystem, no privilege escalation, capabilities drop ALL",
                  sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
                  and sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc.get("capabilities", {}).get("add"),
                  str(sc))
    results.check("seccompProfile RuntimeDefault, no service account token",
                  (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type") == "RuntimeDefault"
                  and spec.get("automountServiceAccountToken") is False)

    # Services: the public one carries 9000 only, the internal one 9001 only.
    for wanted, port_name, number in (("skywave", "ws", 9000), ("skywave-api", "internal", 9001)):
        service = services.get(wanted)
        if service is None:
            results.check(f"Service {wanted}", False, f"Services: {sorted(services)}")
            continue
        service_ports = service["spec"].get("ports", [])
        targets = [ports.get(p.get("targetPort"), p.get("targetPort")) for p in service_ports]
        results.check(f"Service {wanted} selects the skywave pods and exposes port {number} only",
                      matches(service["spec"].get("selector"), pod_labels) and targets == [number]
                      and [p["port"] for p in service_ports] == [number], f"ports {service_ports}")

    redis_url = env.get("SKYWAVE_REDIS_URL", {}).get("value", "")
    match = re.match(r"rediss?://(?:[^@/]*@)?([^:/]+):(\d+)", redis_url)
    redis_service = services.get(match.group(1)) if match else None
    redis_pods = [d for d in deployments.values() if redis_service and
                  matches(redis_service["spec"].get("selector"), d["spec"]["template"]["metadata"]["labels"])]
    results.check("SKYWAVE_REDIS_URL names the Redis Service and port, which select the Redis pod",
                  bool(redis_service) and int(match.group(2)) in [p["port"] for p in redis_service["spec"]["ports"]]
                  and len(redis_pods) == 1, f"{redis_url} -> {[d['metadata']['name'] for d in redis_pods]}")

    pdbs = by_kind.get("PodDisruptionBudget", [])
    replicas = skywave["spec"].get("replicas", 1)
    ok_pdb = [p for p in pdbs if matches(p["spec"].get("selector", {}).get("matchLabels"), pod_labels)
              and (0 < p["spec"].get("maxUnavailable", 0) < replicas
                   or 0 < p["spec"].get("minAvailable", 0) < replicas)]
    results.check("a PodDisruptionBudget for the skywave pods that lets one go at a time", bool(ok_pdb),
                  f"replicas {replicas}, {[p['spec'] for p in pdbs]}")

    for monitor in by_kind.get("ServiceMonitor", []):
        selected = [s for s in services.values()
                    if matches(monitor["spec"].get("selector", {}).get("matchLabels"), s["metadata"].get("labels", {}))]
        endpoint_ports = [e.get("port") for e in monitor["spec"].get("endpoints", [])]
        results.check("the ServiceMonitor selects the internal Service only and scrapes its port /metrics",
                      [s["metadata"]["name"] for s in selected] == ["skywave-api"]
                      and endpoint_ports == ["internal"]
                      and all(e.get("path", "/metrics") == "/metrics" for e in monitor["spec"]["endpoints"])
                      and "internal" in [p.get("name") for p in selected[0]["spec"]["ports"]],
                      f"selects {[s['metadata']['name'] for s in selected]}, ports {endpoint_ports}")
        results.check("its job label (the Service's name) fits the alerts' job=~\"skywave.*\"",
                      all(s["metadata"]["name"].startswith("skywave") for s in selected) and
                      not monitor["spec"].get("jobLabel"))

    # Service links: off for every pod, and no Service name here would set a
    # SKYWAVE_* key if they were on.
    links_on = [d["metadata"]["name"] for d in deployments.values()
                if d["spec"]["template"]["spec"].get("enableServiceLinks", True)]
    results.check("enableServiceLinks: false on every pod (no <SERVICE>_PORT=tcp://… variables)", not links_on,
                  f"on for: {links_on}")
    check_binary(results, binary, container, env, ports, services)


def service_link_variables(services):
    """The variables the kubelet would inject for these Services."""
    names = set()
    for service in services.values():
        prefix = service["metadata"]["name"].upper().replace("-", "_")
        names |= {f"{prefix}_SERVICE_HOST", f"{prefix}_SERVICE_PORT", f"{prefix}_PORT"}
        for port in service["spec"].get("ports", []):
            protocol = port.get("protocol", "TCP")
            base = f"{prefix}_PORT_{port['port']}_{protocol}"
            names |= {base, f"{base}_PROTO", f"{base}_PORT", f"{base}_ADDR"}
            if port.get("name"):
                names.add(f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}")
    return names


def check_binary(results, binary, container, env, ports, services):
    if not executable(binary):
        results.check("skywave check-config --strict with the Deployment's environment", False,
                      f"the skywave binary is missing ({binary})")
        return
    variables = {k: v for k, v in os.environ.items() if not k.startswith("SKYWAVE_")}
    for key, entry in env.items():
        if "value" in entry:
            variables[key] = str(entry["value"])
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            variables[key] = secrets.token_hex(32)
        elif "fieldRef" in entry.get("valueFrom", {}):
            variables[key] = "skywave-7d9f8c6b5-x2x4z"
    with tempfile.TemporaryDirectory(prefix="skywave-k8s-") as tmp:
        # The image's working directory holds no config.yaml: an empty file
        # gives the same defaults.
        empty = os.path.join(tmp, "config.yaml")
        open(empty, "w").close()
        run = subprocess.run([binary, "check-config", "--strict", empty], capture_output=True, text=True,
                             timeout=30, env=variables, cwd=tmp)
    output = run.stdout + run.stderr
    effective = dict(re.findall(r"^([a-z_.]+): (.*)$", output, re.M))
    results.check("skywave check-config --strict accepts the Deployment's environment (secret filled in)",
                  run.returncode == 0, f"mode {effective.get('mode', '?')}" if run.returncode == 0 else output[-500:])
    if run.returncode != 0:
        return
    results.check("its ports are the container's (ws_port = ws, internal_port = internal)",
                  effective.get("ws_port") == str(ports.get("ws")) and
                  effective.get("internal_port") == str(ports.get("internal")),
                  f"ws_port {effective.get('ws_port')}, internal_port {effective.get('internal_port')}")
    results.check("it runs in cluster mode on 0.0.0.0 for the internal API",
                  effective.get("internal_bind") == "0.0.0.0" and effective.get("mode", "").startswith("cluster"),
                  f"internal_bind {effective.get('internal_bind')}, mode {effective.get('mode')}")
    keys = {"SKYWAVE_" + k.upper().replace(".", "_") for k in effective if k != "mode"}
    collisions = sorted(service_link_variables(services) & keys)
    results.check("no Service name would inject a SKYWAVE_* config key even with service links on",
                  not collisions, f"collide: {collisions}" if collisions else f"{len(keys)} keys, "
                  f"{len(service_link_variables(services))} link variables")


def main():
    parser = argparse.ArgumentParser(description="Kubernetes manifests against the Kubernetes JSON schemas")
    parser.add_argument("binary", nargs="?", default=os.path.join(REPO, "target", "release", "skywave"))
    args = parser.parse_args()
    results = Results()
    documents = load(results)
    if documents:
        check_core_schemas(results, documents)
        for path, doc in documents:
            if doc.get("kind") == "ServiceMonitor":
                check_servicemonitor_schema(results, path, doc)
        check_kustomization(results, documents)
        check_rules(results, documents, os.path.abspath(args.binary))
    sys.exit(results.summary("check_kubernetes"))


if __name__ == "__main__":
    main()
