#!/usr/bin/env python3
"""End-to-end test of the HAProxy example: real redis-server, two skywave
nodes in cluster mode, and a real haproxy running haproxy/skywave.cfg (its
addresses replaced by loopback ports, see haproxy_config.py).

    python3 tests/deploy/e2e_haproxy.py [path/to/skywave]    (default target/release/skywave)

Checks: haproxy -c accepts the file as it is and as rendered; both nodes pass
the active check (/healthz?strict=1); only /ws and /healthz are served;
WebSockets through haproxy spread over both nodes (leastconn) and one publish
reaches all of them; SIGTERM on one node closes its sockets with 1001, the
clients reconnect through haproxy to the other node and receive the next
publish, and haproxy marks the stopped node DOWN; with Redis stopped every node
is degraded, fails the strict check, and a new socket is still served through
the fallback (backup) lines.

Everything listens on and connects to 127.0.0.1 only; every wait is bounded;
every process started here is stopped at the end, also on failure. Python 3
standard library only. Needs haproxy and redis-server on PATH (or --haproxy,
--redis-server); a missing one is a FAIL. The last line is "N passed, N failed".
"""

import argparse
import csv
import io
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
import haproxy_config  # noqa: E402  (renders the repository's haproxy config)
from harness import (LOOPBACK, Fleet, Process, WSClosed, all_receive, executable, free_port,  # noqa: E402
                     http_request, install_hard_limit, protect_cleanup, sort_closed, wait_until)
from results import Failure, Results  # noqa: E402

CLIENTS = 10
RECONNECT_EXTRA = 2
TOPIC = "deploy.haproxy"
HARD_LIMIT_SECONDS = 240
CONNECT_ERRORS = (Failure, OSError, TimeoutError, WSClosed)


class Cluster(Fleet):
    """The fleet (redis-server, skywave nodes) plus haproxy in front."""

    def __init__(self, args, tmp):
        super().__init__(args.binary, tmp, args.redis_server)
        self.args = args

    def start_haproxy(self, nodes, results):
        self.haproxy_port, self.stats_port = free_port(), free_port()
        runtime = os.path.join(self.tmp, "haproxy")
        os.makedirs(runtime)
        notes = []
        rendered = haproxy_config.render_file(
            f"{LOOPBACK}:{self.haproxy_port}", [(n.name, f"{LOOPBACK}:{n.ws_port}") for n in nodes],
            f"{LOOPBACK}:{self.stats_port}", runtime, notes)
        path = os.path.join(runtime, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(rendered)
        check = subprocess.run([self.args.haproxy, "-c", "-f", path], capture_output=True, text=True, timeout=20)
        results.require("haproxy -c accepts the rendered haproxy/skywave.cfg", check.returncode == 0,
                        (check.stdout + check.stderr).strip()[-400:] + (f"; {'; '.join(notes)}" if notes else ""))
        haproxy = Process("haproxy", [self.args.haproxy, "-db", "-f", path], os.path.join(self.tmp, "haproxy.out"))
        self.procs.append(haproxy)
        self.haproxy = haproxy

        def up():
            if not haproxy.alive():
                raise Failure(f"haproxy exited:\n{haproxy.tail()}")
            return http_request(self.haproxy_port, "GET", "/healthz")[0] == 200
        wait_until("haproxy /healthz", up, 10)

    def servers(self):
        """{server name: row} of backend skywave, from the stats page's CSV."""
        code, body = http_request(self.stats_port, "GET", "/stats;csv")
        if code != 200:
            raise Failure(f"haproxy stats answered {code}")
        rows = csv.DictReader(io.StringIO(body.lstrip("# ")))
        return {row["svname"]: row for row in rows
                if row["pxname"] == "skywave" and row["svname"] not in ("FRONTEND", "BACKEND")}

    def server_state(self, name):
        row = self.servers()[name]
        return row["status"].split(" ")[0], row.get("check_status", ""), row

    def connect(self, user_id):
        """A browser: WebSocket through haproxy, auth frame, auth_ok."""
        return super().connect(self.haproxy_port, TOPIC, user_id)


def run(args, results):
    tmp = tempfile.mkdtemp(prefix="skywave-haproxy-")
    os.chmod(tmp, 0o755)
    cluster = Cluster(args, tmp)
    try:
        version = subprocess.run([args.haproxy, "-v"], capture_output=True, text=True, timeout=10).stdout.split("\n")[0]
        as_is = subprocess.run([args.haproxy, "-c", "-f", haproxy_config.CONFIG], capture_output=True, text=True,
                               timeout=20)
        results.check("haproxy -c accepts haproxy/skywave.cfg as it is", as_is.returncode == 0,
                      version if as_is.returncode == 0 else (as_is.stdout + as_is.stderr).strip()[-400:])

        cluster.start_redis()
        node_a = cluster.start_node("node-a")
        node_b = cluster.start_node("node-b")
        try:
            status_a, status_b = cluster.wait_clustered([node_a, node_b])
            results.check("redis-server and two skywave nodes in cluster mode (cluster_nodes == 2)", True,
                          f"redis :{cluster.redis_port}, a :{node_a.ws_port}, b :{node_b.ws_port}, "
                          f"mode {status_a.get('mode')}/{status_b.get('mode')}")
        except Failure as error:
            results.require("redis-server and two skywave nodes in cluster mode (cluster_nodes == 2)", False,
                            str(error))

        cluster.start_haproxy([node_a, node_b], results)

        def both_checked():
            states = {n: cluster.server_state(n) for n in ("node-a", "node-b")}
            return states if all(s[0] == "UP" and s[1].startswith("L7OK") for s in states.values()) else None
        try:
            states = wait_until("both nodes to pass haproxy's check", both_checked, 10)
            results.check("haproxy: both nodes UP, checked with /healthz?strict=1 (L7OK)", True,
                          ", ".join(f"{n} {s[0]} {s[1]}" for n, s in states.items()))
        except Failure as error:
            results.require("haproxy: both nodes UP, checked with /healthz?strict=1 (L7OK)", False, str(error))
        fallback = cluster.server_state("node-a-fallback")
        results.check("the fallback lines are backups without a check", fallback[2].get("bck") == "1"
                      and fallback[0] == "no", f"node-a-fallback: status {fallback[2].get('status')!r}, "
                      f"bck {fallback[2].get('bck')}")

        code, body = http_request(cluster.haproxy_port, "GET", "/healthz")
        results.check("haproxy serves /healthz", code == 200, f"HTTP {code} {body.strip()}")
        for path in ("/internal/status", "/internal/publish", "/metrics", "/"):
            code, _ = http_request(cluster.haproxy_port, "GET", path, cluster.secret)
            results.check(f"haproxy does not expose {path}", code == 404, f"HTTP {code}")
        code, _ = http_request(cluster.haproxy_port, "POST", "/ws", body={})
        results.check("haproxy refuses POST /ws", code == 405, f"HTTP {code}")

        code, body = cluster.register(node_a, TOPIC)
        results.require("topic registered on node A's internal API", code == 200, f"HTTP {code} {body[:100].strip()}")
        try:
            first = [cluster.connect(user_id) for user_id in range(1, CLIENTS + 1)]
        except CONNECT_ERRORS as error:
            results.require(f"{CLIENTS} WebSockets through haproxy authenticated", False, str(error))
        results.check(f"{CLIENTS} WebSockets through haproxy authenticated (auth_ok)", True)

        def spread():
            a, b = cluster.status(node_a)["connected_sockets"], cluster.status(node_b)["connected_sockets"]
            return (a, b) if a + b == CLIENTS else None
        on_a, on_b = wait_until(f"connected_sockets to add up to {CLIENTS}", spread, 5)
        results.check(f"leastconn spread the sockets over both nodes (sum {CLIENTS})",
                      on_a > 0 and on_b > 0, f"node A {on_a}, node B {on_b}")

        payload = {"seq": 1, "text": "through haproxy"}
        code, body = cluster.publish(node_a, TOPIC, payload)
        results.require("publish to node A answered 200", code == 200, f"HTTP {code} {body[:100].strip()}")
        got, problems = all_receive(first, {"type": "push", "payload": payload})
        results.check(f"every client got the push (node B's {on_b} through Redis)", got == CLIENTS,
                      f"{got}/{CLIENTS}" + (f"; {problems[:3]}" if problems else ""))

        # SIGTERM node B: its sockets get 1001, the process exits within 10 s.
        sent = time.monotonic()
        node_b.send(signal.SIGTERM)
        closed, other, still_open = sort_closed(first, on_b)
        exit_code = node_b.wait(12)
        took = time.monotonic() - sent
        results.check("node B's clients got close code 1001", len(closed) == on_b and not other,
                      f"{len(closed)} of {on_b} closed with 1001" + (f"; other: {other[:3]}" if other else ""))
        results.check("node A's clients stayed connected", len(still_open) == on_a, f"{len(still_open)} of {on_a}")
        results.check("node B exited (code 0) within 10 s of SIGTERM",
                      exit_code == 0 and took <= 10.5, f"exit code {exit_code}, {took:.1f} s")

        # Browsers reconnect at once, before haproxy's check has seen node B
        # go: a refused connection is redispatched to node A.
        try:
            again = [cluster.connect(100 + i) for i in range(len(closed))]
            results.check("the closed clients reconnect through haproxy at once", True, f"{len(again)} sockets")
        except CONNECT_ERRORS as error:
            results.require("the closed clients reconnect through haproxy at once", False, str(error))
        try:
            state = wait_until("haproxy to mark node B DOWN",
                               lambda: (lambda s: s if s[0] == "DOWN" else None)(cluster.server_state("node-b")), 10)
            results.check("haproxy marks the stopped node B DOWN", True, f"check {state[1]}")
        except Failure as error:
            results.check("haproxy marks the stopped node B DOWN", False, str(error))
        try:
            again += [cluster.connect(200 + i) for i in range(RECONNECT_EXTRA)]
        except CONNECT_ERRORS as error:
            results.check("new sockets through haproxy with node B down", False, str(error))
        live = still_open + again
        try:
            wait_until(f"node A to hold {len(live)} sockets",
                       lambda: cluster.status(node_a)["connected_sockets"] == len(live), 5)
            results.check("every reconnected socket landed on node A", True, f"node A holds {len(live)}")
        except Failure as error:
            results.check("every reconnected socket landed on node A", False, str(error))
        payload = {"seq": 2, "text": "after node B left"}
        code, _ = cluster.publish(node_a, TOPIC, payload)
        got, problems = all_receive(live, {"type": "push", "payload": payload})
        results.check("every live client got the second push", code == 200 and got == len(live),
                      f"HTTP {code}, {got}/{len(live)}" + (f"; {problems[:3]}" if problems else ""))

        # Redis away: node A is degraded, fails /healthz?strict=1, and haproxy
        # still serves new sockets through the fallback lines.
        for ws in live:
            ws.close()
        cluster.redis.stop(signal.SIGTERM)
        try:
            wait_until("node A to be degraded", lambda: cluster.status(node_a).get("mode") == "degraded", 15)
            state = wait_until("haproxy to mark node A DOWN",
                               lambda: (lambda s: s if s[0] == "DOWN" else None)(cluster.server_state("node-a")), 10)
            results.check("Redis stopped: node A degraded, haproxy marks it DOWN (strict check)", True,
                          f"check {state[1]}")
        except Failure as error:
            results.require("Redis stopped: node A degraded, haproxy marks it DOWN (strict check)", False,
                            str(error))
        before = int(cluster.servers()["node-a-fallback"].get("stot") or 0)
        try:
            ws = cluster.connect(300)
            payload = {"seq": 3, "text": "while Redis is away"}
            code, _ = cluster.publish(node_a, TOPIC, payload)
            message = ws.recv_json(5)
            after = int(cluster.servers()["node-a-fallback"].get("stot") or 0)
            results.check("every primary DOWN: a new socket is served through node A's fallback line and gets "
                          "a push", code == 200 and message == {"type": "push", "payload": payload}
                          and after > before, f"HTTP {code}, {message}, node-a-fallback sessions {before} -> {after}")
        except CONNECT_ERRORS as error:
            results.check("every primary DOWN: a new socket is served through node A's fallback line and gets "
                          "a push", False, str(error))
    except Failure as error:
        if not error.reported:
            results.check("the run went through", False, str(error))
        print("stopped; the last lines of each process's output:", flush=True)
        cluster.tails()
    finally:
        protect_cleanup()
        cluster.finish(results, args.keep)


def main():
    parser = argparse.ArgumentParser(description="skywave behind a real haproxy, two nodes, real Redis")
    parser.add_argument("binary", nargs="?", default=os.path.join(REPO, "target", "release", "skywave"))
    parser.add_argument("--haproxy", default=shutil.which("haproxy") or "/usr/sbin/haproxy")
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "/usr/bin/redis-server")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory with the logs")
    args = parser.parse_args()
    args.binary = os.path.abspath(args.binary)

    results = Results()
    missing = [f"{what} ({path})" for what, path in
               (("skywave binary", args.binary), ("haproxy (Debian package haproxy)", args.haproxy),
                ("redis-server", args.redis_server)) if not executable(path)]
    if missing:
        results.check("prerequisites", False, "not found or not executable: " + ", ".join(missing))
    else:
        install_hard_limit(HARD_LIMIT_SECONDS)
        print(f"e2e_haproxy: {args.binary}, {args.haproxy}, {args.redis_server}", flush=True)
        run(args, results)
        signal.alarm(0)
    sys.exit(results.summary("e2e_haproxy"))


if __name__ == "__main__":
    main()
