#!/usr/bin/env python3
"""Checks of the monitoring kit: the Grafana dashboard
(deploy/grafana/skywave.json) and the Prometheus alerting rules
(deploy/prometheus/skywave-alerts.yaml).

    python3 tests/deploy/check_monitoring.py [path/to/skywave]    (default target/release/skywave)

  - `promtool check rules` on the alerts, and `promtool test rules` on
    tests/deploy/skywave-alerts.test.yaml (alerts that fire, and do not);
  - every dashboard query is valid PromQL: each one, its Grafana variables
    replaced, is written into a rule file that `promtool check rules` reads;
  - the dashboard's structure (unique panel ids, the data source variable on
    every query, every variable a query uses defined, no overlapping panels)
    and the panels and alerts the issue asks for;
  - every metric name used by a dashboard query or an alert expression, and
    every label value matched with `=`, is served by GET /metrics of a real
    node: the release binary started from a config in a temporary directory,
    once in cluster mode on a real redis-server (cluster-only metrics) and
    once single-instance. `up` is Prometheus's own and allowed.

Needs promtool (Debian package prometheus), redis-server and PyYAML
(tests/deploy/requirements.txt); a missing one is a FAIL naming it. Loopback
only, every wait bounded, every process stopped at the end. The last line is
"N passed, N failed".
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from harness import Fleet, executable, http_request, install_hard_limit, protect_cleanup, wait_until  # noqa: E402
from results import Failure, Results  # noqa: E402

DASHBOARD = os.path.join(REPO, "deploy", "grafana", "skywave.json")
ALERTS = os.path.join(REPO, "deploy", "prometheus", "skywave-alerts.yaml")
ALERT_TESTS = os.path.join(HERE, "skywave-alerts.test.yaml")
HARD_LIMIT_SECONDS = 120

# Names that are not skywave's and need not be served by /metrics.
PROMETHEUS_OWN = {"up"}
# Labels the scrape adds (target labels), not the exposition.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}
# What Grafana itself substitutes in a query.
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s", "__range_ms"}

# The list: what the dashboard must show and what must alert.
DASHBOARD_METRICS = [
    "skywave_sockets", "skywave_clients", "skywave_active_topics", "skywave_registered_topics", "skywave_mode",
    "skywave_publishes_total", "skywave_deliveries_total", "skywave_publish_duration_seconds_bucket",
    "skywave_dropped_frames_total", "skywave_lagged_notices_total", "skywave_envelopes_dropped_total",
    "skywave_refusals_total", "skywave_redis_joins_total", "skywave_redis_subscriber_restarts_total",
    "skywave_redis_command_failures_total", "skywave_redis_publish_retries_total",
    "skywave_registry_pending_changes", "skywave_open_fds", "skywave_fd_limit",
]
ALERT_METRICS = {
    "node down": "up", "Redis degraded": "skywave_mode", "dropped frames": "skywave_dropped_frames_total",
    "lagged notices": "skywave_lagged_notices_total", "envelopes dropped": "skywave_envelopes_dropped_total",
    "refusals": "skywave_refusals_total", "publish latency": "skywave_publish_duration_seconds_bucket",
    "registry pending": "skywave_registry_pending_changes", "fds near the limit": "skywave_open_fds",
    "cluster task panics": "skywave_cluster_task_panics_total",
}


# -------------------------------------------------------------------- PromQL

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
            "and", "or", "unless", "atan2", "inf", "nan", "start", "end"}
STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
TOKEN = re.compile(r"(?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[a-zA-Z]*|0x[0-9a-fA-F]+)"
                   r"|(?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)")
SELECTOR = re.compile(r"(?<![a-zA-Z0-9_:])([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:\\.|[^"\\])*)"')


def metric_names(expr):
    """The metric names an expression selects: identifiers that are not
    functions, keywords, numbers or durations, label names or strings."""
    text = STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)          # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)         # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r" ", text)
    names = set()
    for match in TOKEN.finditer(text):
        name = match.group("ident")
        if not name or name.lower() in KEYWORDS:
            continue
        if re.match(r"\s*\(", text[match.end():]):   # a function or an aggregation
            continue
        names.add(name)
    return names


def selectors(expr):
    """[(metric name or None, [(label, op, value)])] of every {…} selector."""
    return [(m.group(1), MATCHER.findall(m.group(2))) for m in SELECTOR.finditer(expr)]


def self_test(results):
    """The extractor on expressions of the kinds the files use."""
    cases = {
        'histogram_quantile(0.99, sum by (job, le) (rate(skywave_publish_duration_seconds_bucket{job=~"$job"}[$__rate_interval])))':
            {"skywave_publish_duration_seconds_bucket"},
        'sum by (instance) (skywave_mode{mode="cluster"}) + 2 * sum by (instance) (skywave_mode{mode="degraded"})':
            {"skywave_mode"},
        'skywave_sockets / (skywave_max_sockets > 0) > 0.9': {"skywave_sockets", "skywave_max_sockets"},
        'increase(skywave_envelopes_dropped_total[10m] offset 5m) > 1e3 or up == 0':
            {"skywave_envelopes_dropped_total", "up"},
        'rate(a_total{x="by (y)"}[5m]) * on (instance) group_left (mode) b': {"a_total", "b"},
    }
    wrong = {expr: (metric_names(expr), want) for expr, want in cases.items() if metric_names(expr) != want}
    results.check("the PromQL name extractor reads its test expressions right", not wrong,
                  "; ".join(f"{e}: got {g}, want {w}" for e, (g, w) in wrong.items()) if wrong else f"{len(cases)} cases")


# ---------------------------------------------------------------- the files

def load_alerts(results):
    try:
        import yaml
    except ImportError:
        results.check("deploy/prometheus/skywave-alerts.yaml parsed", False,
                      "PyYAML is not installed (pip install -r tests/deploy/requirements.txt)")
        return []
    with open(ALERTS, encoding="utf-8") as f:
        document = yaml.safe_load(f)
    rules = [rule for group in document.get("groups", []) for rule in group.get("rules", [])]
    alerts = [rule for rule in rules if "alert" in rule]
    results.check("deploy/prometheus/skywave-alerts.yaml parsed", bool(alerts), f"{len(alerts)} alerts")
    incomplete = [rule["alert"] for rule in alerts
                  if not (rule.get("labels", {}).get("severity") in ("critical", "warning", "info")
                          and rule.get("annotations", {}).get("summary")
                          and rule.get("annotations", {}).get("description"))]
    results.check("every alert has a severity and summary/description annotations", not incomplete,
                  ", ".join(incomplete))
    return alerts


def dashboard_queries(dashboard):
    """[(panel title, expr)] of every panel, rows' nested panels included."""
    out = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []) or []:
                if target.get("expr"):
                    out.append((panel.get("title", "?"), target["expr"]))
            walk(panel.get("panels", []) or [])
    walk(dashboard.get("panels", []))
    return out


def check_dashboard(results):
    with open(DASHBOARD, encoding="utf-8") as f:
        dashboard = json.load(f)
    panels = dashboard.get("panels", [])
    flat = panels + [p for row in panels for p in row.get("panels", []) or []]
    results.check("deploy/grafana/skywave.json parsed", bool(flat), f"{len(flat)} panels, uid {dashboard.get('uid')}, "
                  f"schemaVersion {dashboard.get('schemaVersion')}")
    ids = [p.get("id") for p in flat]
    results.check("panel ids are unique", len(ids) == len(set(ids)) and None not in ids)

    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    datasource = variables.get("datasource", {})
    results.check("a data source variable of type prometheus", datasource.get("type") == "datasource"
                  and datasource.get("query") == "prometheus", f"{datasource.get('type')} {datasource.get('query')}")
    queried = [p for p in flat if p.get("targets")]
    no_ds = [p.get("title") for p in queried
             if (p.get("datasource") or {}).get("uid") != "${datasource}"
             or any((t.get("datasource") or {}).get("uid") != "${datasource}" for t in p["targets"])]
    results.check("every panel and query uses the ${datasource} variable", not no_ds, ", ".join(no_ds))

    used = set()
    texts = [e for _, e in dashboard_queries(dashboard)]
    texts += [json.dumps(v.get("query")) for v in variables.values() if v.get("type") == "query"]
    for text in texts:
        used |= set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text))
    undefined = sorted(used - set(variables) - GRAFANA_BUILTINS)
    results.check("every variable the queries use is defined", not undefined,
                  f"undefined: {undefined}" if undefined else f"uses {sorted(used)}")

    boxes = [(p.get("title"), p["gridPos"]) for p in flat if "gridPos" in p]
    overlaps = []
    for i, (a, ga) in enumerate(boxes):
        for b, gb in boxes[i + 1:]:
            if (ga["x"] < gb["x"] + gb["w"] and gb["x"] < ga["x"] + ga["w"]
                    and ga["y"] < gb["y"] + gb["h"] and gb["y"] < ga["y"] + ga["h"]):
                overlaps.append(f"{a} / {b}")
    results.check("every panel has a place on the 24-column grid, none overlapping",
                  len(boxes) == len(flat) and not overlaps and all(g["x"] + g["w"] <= 24 for _, g in boxes),
                  "; ".join(overlaps[:3]))
    return dashboard


def grafana_to_promql(expr):
    """A dashboard query as Prometheus would get it from Grafana."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)


def promtool_checks(results, promtool, dashboard, tmp):
    version = subprocess.run([promtool, "--version"], capture_output=True, text=True, timeout=30)
    version = (version.stdout + version.stderr).split("\n")[0]
    run = subprocess.run([promtool, "check", "rules", ALERTS], capture_output=True, text=True, timeout=60)
    output = (run.stdout + run.stderr).strip()
    results.check("promtool check rules deploy/prometheus/skywave-alerts.yaml", run.returncode == 0,
                  (output.splitlines()[-1] + f"; {version}") if run.returncode == 0 else output[-800:])
    run = subprocess.run([promtool, "test", "rules", os.path.basename(ALERT_TESTS)], capture_output=True, text=True,
                         timeout=120, cwd=HERE)
    output = (run.stdout + run.stderr).strip()
    tests = len(re.findall(r"^\s*- name:", open(ALERT_TESTS, encoding="utf-8").read(), re.M))
    results.check("promtool test rules tests/deploy/skywave-alerts.test.yaml (alerts fire, and do not)",
                  run.returncode == 0 and "SUCCESS" in output,
                  f"{tests} tests: {output.splitlines()[-1].strip()}" if run.returncode == 0 else output[-1500:])

    queries = dashboard_queries(dashboard)
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)} for i, (_, expr) in enumerate(queries)]}]}
    path = os.path.join(tmp, "dashboard-queries.rules.json")  # JSON is YAML
    with open(path, "w") as f:
        json.dump(rules, f, indent=1)
    run = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True, timeout=60)
    output = (run.stdout + run.stderr).strip()
    results.check("every dashboard query is valid PromQL (promtool check rules on them)", run.returncode == 0,
                  f"{len(queries)} queries" if run.returncode == 0 else output[-800:])


# ------------------------------------------------------------------ /metrics

def scrape(node):
    """{metric name: [{label: value}]} from a node's GET /metrics (no secret)."""
    code, body = http_request(node.internal_port, "GET", "/metrics")
    if code != 200:
        raise Failure(f"{node.name} /metrics answered {code}")
    served = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s", line)
        if match:
            labels = dict((k, v) for k, _, v in MATCHER.findall(match.group(3) or ""))
            served.setdefault(match.group(1), []).append(labels)
    return served


def check_names(results, dashboard, alerts, cluster_served, single_served):
    uses = {}  # name -> where
    label_uses = []  # (name, label, value, where)
    sources = [(f"dashboard panel {title!r}", expr) for title, expr in dashboard_queries(dashboard)]
    sources += [(f"alert {rule['alert']}", str(rule["expr"])) for rule in alerts]
    bare = []
    for where, expr in sources:
        for name in metric_names(expr):
            uses.setdefault(name, []).append(where)
        for name, matchers in selectors(expr):
            if name is None:
                bare.append(where)
                continue
            for label, op, value in matchers:
                if op == "=" and label not in TARGET_LABELS and "$" not in value:
                    label_uses.append((name, label, value, where))
    results.check("every selector names its metric (no bare {…} selectors)", not bare, ", ".join(bare[:5]))

    names = sorted(uses)
    missing = [n for n in names if n not in PROMETHEUS_OWN and n not in cluster_served]
    cluster_only = sorted(n for n in names if n in cluster_served and n not in single_served)
    results.check("every metric name in the dashboard and the alerts is served by /metrics of a real node",
                  not missing,
                  ("not served: " + "; ".join(f"{n} (in {uses[n][0]})" for n in missing)) if missing else
                  f"{len(names)} names ({', '.join(sorted(PROMETHEUS_OWN & set(names)))} is Prometheus's own); "
                  f"cluster-only (absent on a single-instance node): {', '.join(cluster_only) or 'none'}")
    wrong = [f"{n}{{{l}=\"{v}\"}} (in {w})" for n, l, v, w in label_uses
             if not any(labels.get(l) == v for labels in cluster_served.get(n, []))]
    results.check("every label value the queries match with = is served", not wrong,
                  "; ".join(wrong[:5]) if wrong else f"{len({(n, l, v) for n, l, v, _ in label_uses})} label values")

    dashboard_names = {n for _, e in dashboard_queries(dashboard) for n in metric_names(e)}
    absent = [n for n in DASHBOARD_METRICS if n not in dashboard_names]
    results.check("the dashboard shows what the issue lists (sockets, clients, topics, mode, publishes, deliveries, "
                  "latency, loss, refusals, Redis, registry, fds)", not absent, f"missing: {absent}" if absent else "")
    results.check("the dashboard's latency panels are histogram quantiles",
                  any("histogram_quantile" in e and "skywave_publish_duration_seconds_bucket" in e
                      for _, e in dashboard_queries(dashboard)))
    alert_names = {n for rule in alerts for n in metric_names(str(rule["expr"]))}
    absent = [what for what, n in ALERT_METRICS.items() if n not in alert_names]
    results.check("an alert for each case the issue lists", not absent, f"missing: {absent}" if absent else
                  ", ".join(rule["alert"] for rule in alerts))


def run(args, results, tmp):
    self_test(results)
    alerts = load_alerts(results)
    dashboard = check_dashboard(results)
    if executable(args.promtool):
        promtool_checks(results, args.promtool, dashboard, tmp)
    else:
        results.check("promtool", False, f"not found ({args.promtool}); Debian package prometheus ships it")

    missing = [f"{what} ({path})" for what, path in (("skywave binary", args.binary),
                                                     ("redis-server", args.redis_server)) if not executable(path)]
    if missing:
        results.check("nodes to scrape", False, "not found or not executable: " + ", ".join(missing))
        return
    fleet = Fleet(args.binary, tmp, args.redis_server)
    try:
        fleet.start_redis()
        cluster_node = fleet.start_node("cluster-node")
        single_node = fleet.start_node("single-node", cluster=False)
        wait_until("the cluster node to join", lambda: fleet.status(cluster_node).get("mode") == "cluster", 15)
        cluster_served, single_served = scrape(cluster_node), scrape(single_node)
        results.check("a cluster node (real redis-server) and a single-instance node serve /metrics without a secret",
                      "skywave_redis_joins_total" in cluster_served and "skywave_sockets" in single_served,
                      f"{len(cluster_served)} and {len(single_served)} metric names")
        if alerts:
            check_names(results, dashboard, alerts, cluster_served, single_served)
    except Failure as error:
        results.check("the nodes to scrape started", False, str(error))
        fleet.tails()
    finally:
        protect_cleanup()
        fleet.stop_all()
        leftovers = [p.name for p in fleet.procs if p.alive()]
        results.check("every process started by the test is stopped", not leftovers, ", ".join(leftovers))


def main():
    parser = argparse.ArgumentParser(description="Grafana dashboard and Prometheus alerts against real nodes")
    parser.add_argument("binary", nargs="?", default=os.path.join(REPO, "target", "release", "skywave"))
    parser.add_argument("--promtool", default=shutil.which("promtool") or "/usr/bin/promtool")
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "/usr/bin/redis-server")
    args = parser.parse_args()
    args.binary = os.path.abspath(args.binary)
    results = Results()
    tmp = tempfile.mkdtemp(prefix="skywave-monitoring-")
    try:
        install_hard_limit(HARD_LIMIT_SECONDS)
        run(args, results, tmp)
    except Failure as error:
        results.check("the run went through", False, str(error))
    finally:
        protect_cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(results.summary("check_monitoring"))


if __name__ == "__main__":
    main()
