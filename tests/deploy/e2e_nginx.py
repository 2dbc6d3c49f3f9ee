#!/usr/bin/env python3
"""End-to-end test of the deployment: real redis-server, two skywave nodes in
cluster mode, and a real nginx running the repository's nginx config
(nginx/skywave.conf.template, rendered with loopback ports).

    python3 tests/deploy/e2e_nginx.py [path/to/skywave]    (default target/release/skywave)

Checks: WebSockets through nginx spread over both nodes; one publish reaches
every socket (those on the other node through Redis); the internal API is not
reachable through nginx; SIGTERM on one node closes its sockets with 1001 and
the process exits within 10 s; the reconnecting clients land on the surviving
node and receive the next publish.

Everything listens on and connects to 127.0.0.1 only; every wait is bounded;
every process started here is stopped at the end, also on failure. Python 3
standard library only (the WebSocket client and process handling are in
harness.py, shared with the other end-to-end tests). Needs redis-server and nginx on PATH (or --redis-server,
--nginx). Exits non-zero on failure; the last line is "N passed, N failed".
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import nginx_template  # noqa: E402  (renders the repository's nginx config)
from harness import (LOOPBACK, Fleet, Process, WSClosed, all_receive, executable, free_port,  # noqa: E402
                     http_request, install_hard_limit, protect_cleanup, sort_closed, wait_until)
from results import Failure, Results  # noqa: E402

CLIENTS = 20
RECONNECT_EXTRA = 3
TOPIC = "deploy.e2e"
HARD_LIMIT_SECONDS = 240


# ---------------------------------------------------------------------- nginx

def nginx_conf(tmp, listen_port, upstream_ports, nginx_bin):
    """A minimal main config whose http{} includes the repository's template,
    rendered with loopback values; every path inside tmp."""
    rendered = nginx_template.render_file(
        f"{LOOPBACK}:{listen_port}", [f"{LOOPBACK}:{p}" for p in upstream_ports])
    with open(os.path.join(tmp, "skywave.conf"), "w") as f:
        f.write(rendered)
    version = subprocess.run([nginx_bin, "-V"], capture_output=True, text=True, timeout=10).stderr
    temp_paths = ["client_body_temp_path", "proxy_temp_path"]
    for module in ("fastcgi", "uwsgi", "scgi"):
        if f"--without-http_{module}_module" not in version:
            temp_paths.append(f"{module}_temp_path")
    lines = [
        "worker_processes 1;",
        f"pid {tmp}/nginx.pid;",
        f"error_log {tmp}/error.log info;",
        "events { worker_connections 1024; }",
        "http {",
        f"    access_log {tmp}/access.log;",
    ]
    for directive in temp_paths:
        name = directive.replace("_temp_path", "")
        os.makedirs(os.path.join(tmp, "temp", name), exist_ok=True)
        lines.append(f"    {directive} {tmp}/temp/{name};")
    lines += [f"    include {tmp}/skywave.conf;", "}", ""]
    path = os.path.join(tmp, "nginx.conf")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


# ----------------------------------------------------------------------- test

class Cluster(Fleet):
    """The fleet (redis-server, skywave nodes) plus nginx in front."""

    def __init__(self, args, tmp):
        super().__init__(args.binary, tmp, args.redis_server)
        self.args = args

    def start_nginx(self, upstream_nodes):
        self.nginx_port = free_port()
        prefix = os.path.join(self.tmp, "nginx")
        os.makedirs(prefix)
        os.chmod(self.tmp, 0o755)  # nginx workers run as nobody when started as root
        os.chmod(prefix, 0o755)
        conf = nginx_conf(prefix, self.nginx_port, [n.ws_port for n in upstream_nodes], self.args.nginx)
        base = [self.args.nginx, "-p", prefix, "-e", os.path.join(prefix, "error.log"), "-c", conf]
        test = subprocess.run(base + ["-t"], capture_output=True, text=True, timeout=20)
        if test.returncode != 0:
            raise Failure(f"nginx -t rejected the rendered config:\n{test.stderr}")
        nginx = Process("nginx", base + ["-g", "daemon off;"], os.path.join(self.tmp, "nginx.out"))
        self.procs.append(nginx)
        self.nginx = nginx

        def up():
            if not nginx.alive():
                raise Failure(f"nginx exited:\n{nginx.tail()}")
            return http_request(self.nginx_port, "GET", "/healthz")[0] == 200
        wait_until("nginx /healthz", up, 10)

    def connect(self, user_id):
        """A browser: WebSocket through nginx, auth frame, auth_ok."""
        return super().connect(self.nginx_port, TOPIC, user_id)


def run(args, results):
    tmp = tempfile.mkdtemp(prefix="skywave-e2e-")
    cluster = Cluster(args, tmp)
    try:
        cluster.start_redis()
        node_a = cluster.start_node("node-a")
        node_b = cluster.start_node("node-b")
        results.check("redis-server and two skywave nodes started", True,
                      f"redis :{cluster.redis_port}, a :{node_a.ws_port}/:{node_a.internal_port}, "
                      f"b :{node_b.ws_port}/:{node_b.internal_port}")

        try:
            status_a, status_b = cluster.wait_clustered([node_a, node_b])
            results.check("both nodes in cluster mode (cluster_nodes == 2)", True,
                          f"mode {status_a.get('mode')}/{status_b.get('mode')}")
        except Failure as error:
            results.require("both nodes in cluster mode (cluster_nodes == 2)", False, str(error))

        cluster.start_nginx([node_a, node_b])
        results.check("nginx -t accepts the rendered nginx/skywave.conf.template; nginx serves /healthz", True,
                      f"nginx :{cluster.nginx_port}")

        for path in ("/internal/status", "/internal/publish", "/metrics", "/"):
            code, _ = http_request(cluster.nginx_port, "GET", path, cluster.secret)
            results.check(f"nginx does not expose {path}", code == 404, f"HTTP {code}")

        code, body = cluster.register(node_a, TOPIC)
        results.require("topic registered on node A's internal API", code == 200, f"HTTP {code} {body[:100].strip()}")

        try:
            first = [cluster.connect(user_id) for user_id in range(1, CLIENTS + 1)]
        except (Failure, OSError, TimeoutError, WSClosed) as error:
            results.require(f"{CLIENTS} WebSockets through nginx authenticated", False, str(error))
        results.check(f"{CLIENTS} WebSockets through nginx authenticated (auth_ok)", True)

        def spread():
            a, b = cluster.status(node_a)["connected_sockets"], cluster.status(node_b)["connected_sockets"]
            return (a, b) if a + b == CLIENTS else None
        on_a, on_b = wait_until(f"connected_sockets to add up to {CLIENTS}", spread, 5)
        results.check(f"least_conn spread the sockets over both nodes (sum {CLIENTS})",
                      on_a > 0 and on_b > 0, f"node A {on_a}, node B {on_b}")

        payload = {"seq": 1, "text": "through nginx", "nested": {"list": [1, 2, 3]}}
        code, body = cluster.publish(node_a, TOPIC, payload)
        results.require("publish to node A answered 200", code == 200, f"HTTP {code} {body[:100].strip()}")
        got, problems = all_receive(first, {"type": "push", "payload": payload})
        results.check(f"every client got the push (node B's {on_b} through Redis)", got == CLIENTS,
                      f"{got}/{CLIENTS}" + (f"; {problems[:3]}" if problems else ""))

        # SIGTERM node B: its sockets get 1001, the process exits within 10 s.
        sent = time.monotonic()
        node_b.send(signal.SIGTERM)
        exit_code = node_b.wait(12)
        took = time.monotonic() - sent
        results.check("node B exited within 10 s of SIGTERM", exit_code is not None and took <= 10.5,
                      f"exit code {exit_code}, {took:.1f} s")
        results.check("node B exit code 0", exit_code == 0, f"{exit_code}")

        # Which sockets were closed, and how: read whatever arrives until node
        # B's count is reached (bounded), then a short grace for any extra.
        closed, other, still_open = sort_closed(first, on_b)
        results.check("node B's clients got close code 1001", len(closed) == on_b and not other,
                      f"{len(closed)} of {on_b} closed with 1001" + (f"; other: {other[:3]}" if other else ""))
        results.check("node A's clients stayed connected", len(still_open) == on_a, f"{len(still_open)} of {on_a}")

        try:
            wait_until("node A to see cluster_nodes == 1",
                       lambda: cluster.status(node_a).get("cluster_nodes") == 1, 10)
            results.check("node A sees node B gone (cluster_nodes == 1)", True)
        except Failure as error:
            results.check("node A sees node B gone (cluster_nodes == 1)", False, str(error))

        # Browsers reconnect after 1001; nginx must send them to node A.
        try:
            again = [cluster.connect(100 + i) for i in range(len(closed) + RECONNECT_EXTRA)]
            results.check("reconnects through nginx succeed with node B down", True,
                          f"{len(again)} new sockets")
        except (Failure, OSError, TimeoutError, WSClosed) as error:
            results.require("reconnects through nginx succeed with node B down", False, str(error))
        live = still_open + again
        try:
            wait_until(f"node A to hold {len(live)} sockets",
                       lambda: cluster.status(node_a)["connected_sockets"] == len(live), 5)
            results.check("the reconnected sockets landed on node A", True, f"node A holds {len(live)}")
        except Failure as error:
            results.check("the reconnected sockets landed on node A", False, str(error))

        payload = {"seq": 2, "text": "after node B left"}
        code, body = cluster.publish(node_a, TOPIC, payload)
        results.check("publish to node A after node B left answered 200", code == 200, f"HTTP {code}")
        got, problems = all_receive(live, {"type": "push", "payload": payload})
        results.check("every live client got the second push", got == len(live),
                      f"{got}/{len(live)}" + (f"; {problems[:3]}" if problems else ""))
    except Failure as error:
        if not error.reported:
            results.check("the run went through", False, str(error))
        print("stopped; the last lines of each process's output:", flush=True)
        cluster.tails()
    finally:
        # Cleanup must not be cut short by the hard limit or a second SIGTERM;
        # it is bounded by itself (each process: SIGTERM, 5 s, SIGKILL).
        protect_cleanup()
        cluster.finish(results, args.keep)


def main():
    parser = argparse.ArgumentParser(description="skywave behind a real nginx, two nodes, real Redis")
    parser.add_argument("binary", nargs="?", default=os.path.join(REPO, "target", "release", "skywave"))
    parser.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "/usr/bin/redis-server")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory with the logs")
    args = parser.parse_args()
    args.binary = os.path.abspath(args.binary)

    results = Results()
    missing = [f"{what} ({path})" for what, path in
               (("skywave binary", args.binary), ("nginx", args.nginx), ("redis-server", args.redis_server))
               if not executable(path)]
    if missing:
        results.check("prerequisites", False, "not found or not executable: " + ", ".join(missing))
    else:
        # A run never hangs: a stop from outside or the hard limit still cleans up.
        install_hard_limit(HARD_LIMIT_SECONDS)
        print(f"e2e_nginx: {args.binary}, {args.nginx}, {args.redis_server}", flush=True)
        run(args, results)
        signal.alarm(0)
    sys.exit(results.summary("e2e_nginx"))


if __name__ == "__main__":
    main()
