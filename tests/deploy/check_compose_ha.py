#!/usr/bin/env python3
"""The Sentinel and Redis Cluster compose examples really start, without
Docker (no image registry is reachable here): every Redis, sentinel and
cluster-create service of deploy/compose.sentinel.yaml and
deploy/compose.cluster.yaml is run with its own `command` by the real Debian
redis-server / redis-sentinel / redis-cli, each service on a loopback
address of its own (127.0.0.N, as each container has its own address), the
service names in its command replaced by those addresses and its /tmp by a
directory of its own; then two real skywave nodes start with the file's
SKYWAVE_* settings (listen ports changed to free loopback ones) and must
join (cluster_nodes 2), and publishes must cross them. For the Sentinel
file also after a SENTINEL FAILOVER.

    python3 tests/deploy/check_compose_ha.py [path/to/skywave]

Both files are also validated against the Compose Specification schema.
Needs redis-server, redis-sentinel, redis-cli and PyYAML; a missing one is a
FAIL. Bounded in time; every process is stopped at the end. The last line
is "N passed, N failed".
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from check_files import check_compose_schema, environment, interpolate  # noqa: E402
from harness import (Process, WSClosed, WebSocket, executable, free_port, hex_token, http_request,  # noqa: E402
                     install_hard_limit, protect_cleanup, wait_until)
from results import Failure, Results  # noqa: E402

HARD_LIMIT_SECONDS = 240
SECRET = "compose-check-0123456789abcdef0123456789abcdef"


class Stack:
    """The Redis side of one compose file, as local processes."""

    def __init__(self, compose, tmp, base):
        self.compose, self.tmp, self.procs = compose, tmp, []
        services = compose.get("services") or {}
        self.redis = [name for name, s in services.items() if str(s.get("image", "")).startswith("redis")]
        self.address = {name: f"127.0.0.{base + i}" for i, name in enumerate(self.redis)}

    def rewrite(self, text, name):
        """Service names -> addresses, /tmp/ and /data/ (the image's working
        directory) -> the service's own directory."""
        for service, address in sorted(self.address.items(), key=lambda kv: -len(kv[0])):
            text = re.sub(rf"(?<![\w.-]){re.escape(service)}(?![\w.-])", address, text)
        own = os.path.join(self.tmp, name) + "/"
        return text.replace("/tmp/", own).replace("/data/", own)

    def argv(self, name):
        service = self.compose["services"][name]
        command = service.get("command")
        command = command if isinstance(command, list) else ["sh", "-c", str(command)]
        os.makedirs(os.path.join(self.tmp, name), exist_ok=True)
        address = self.address[name]
        argv = [self.rewrite(arg, name) for arg in command]
        # A container has an address of its own, and its connections leave
        # from it; here every process shares lo, where connections leave
        # from 127.0.0.1, so each is bound to, and announces, its own.
        if argv[0] == "redis-server":
            argv += ["--bind", address, "--dir", os.path.join(self.tmp, name)]
            if "--cluster-enabled" in argv:
                argv += ["--cluster-announce-ip", address]
        elif argv[:2] == ["sh", "-c"] and "redis-sentinel" in argv[2]:
            argv[2] = argv[2].replace("port 26379\n", f"port 26379\nbind {address}\nsentinel announce-ip {address}\n", 1)
            if f"bind {address}" not in argv[2]:
                raise Failure(f"{name}: cannot find 'port 26379' in the sentinel config to add its address")
        return argv

    def start(self, name):
        argv = self.argv(name)
        own = os.path.join(self.tmp, name)
        if argv[0] == "redis-server":
            # relative paths (nodes.conf) as in the image's /data
            argv = ["sh", "-c", 'cd "$0" && exec "$@"', own, *argv]
        proc = Process(name, argv, os.path.join(self.tmp, f"{name}.log"))
        self.procs.append(proc)
        return proc

    def run_once(self, name, results):
        proc = self.start(name)
        code = proc.wait(60)
        detail = f"exit {code}" if code == 0 else f"exit {code}\n{proc.tail()}"
        results.check(f"{name} exits 0 (its own command)", code == 0, detail)
        return code == 0

    def wait_listening(self, name, port):
        def up():
            with socket.create_connection((self.address[name], port), timeout=0.5):
                return True
        wait_until(f"{name} on {self.address[name]}:{port}", up, 15)

    def cli(self, name, port, *args):
        out = subprocess.run(["redis-cli", "-h", self.address[name], "-p", str(port), *args],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip()


class Node:
    def __init__(self, name, binary, env, tmp):
        self.name = name
        self.ws_port, self.internal_port = free_port(), free_port()
        env = dict(env, SKYWAVE_WS_BIND="127.0.0.1", SKYWAVE_WS_PORT=str(self.ws_port),
                   SKYWAVE_INTERNAL_BIND="127.0.0.1", SKYWAVE_INTERNAL_PORT=str(self.internal_port),
                   SKYWAVE_NODE_NAME=name, SKYWAVE_LOG_LEVEL="info", PATH=os.environ.get("PATH", ""))
        self.proc = Process(name, [binary], os.path.join(tmp, f"{name}.log"), env=env)

    def status(self):
        code, body = http_request(self.internal_port, "GET", "/internal/status", SECRET)
        return json.loads(body) if code == 200 else {}

    def post(self, path, body):
        return http_request(self.internal_port, "POST", path, SECRET, body)[0]


def node_env(compose, stack):
    services = compose.get("services") or {}
    node = next(s for s in services.values() if s.get("build") is not None)
    env = {k: v for k, v in environment(node).items() if v is not None}
    env["SKYWAVE_REDIS_URL"] = stack.rewrite(env.get("SKYWAVE_REDIS_URL", ""), "skywave")
    return env


def socket_on(node, topic, user_id):
    ws = WebSocket(node.ws_port, f"/ws?topic={topic}")
    ws.send_json({"type": "auth", "token": hex_token(SECRET, user_id, topic)})
    reply = ws.recv_json(5)
    if reply != {"type": "auth_ok"}:
        raise Failure(f"{node.name}: expected auth_ok, got {reply}")
    return ws


def receive_push(ws, seq, timeout=5.0):
    """The push with this seq (a resync notice on the way is fine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            frame = ws.recv_json(max(0.1, deadline - time.monotonic()))
        except (TimeoutError, OSError, WSClosed):
            return False
        if frame.get("type") == "push" and frame.get("payload", {}).get("seq") == seq:
            return True
    return False


def crosses(results, a, b, topics, seq, what):
    sockets = [socket_on(b, topic, i + 1) for i, topic in enumerate(topics)]
    try:
        for topic in topics:
            code = a.post("/internal/publish", {"topic": topic, "payload": {"seq": seq}})
            if code != 200:
                raise Failure(f"publish {topic} answered {code}")
        got = sum(receive_push(ws, seq) for ws in sockets)
        results.check(what, got == len(topics), f"{got} of {len(topics)} topics delivered across the nodes")
    finally:
        for ws in sockets:
            ws.close()


def nodes_join(results, binary, env, tmp, label):
    nodes = [Node(f"{label}-node-{i}", binary, env, tmp) for i in range(2)]
    try:
        wait_until(f"both {label} nodes in cluster mode with cluster_nodes 2",
                   lambda: all(n.status().get("cluster_nodes") == 2 and n.status().get("mode") == "cluster"
                               for n in nodes), 30)
        results.check(f"{label}: both skywave nodes join (cluster_nodes 2)", True, env["SKYWAVE_REDIS_URL"])
    except Failure as error:
        results.check(f"{label}: both skywave nodes join (cluster_nodes 2)", False,
                      f"{error}\n" + "\n".join(n.proc.tail() for n in nodes))
        raise
    return nodes


def stop(nodes, stack):
    """Stops the nodes, then the Redis side; returns every process, so the
    caller can check none is left."""
    procs = [n.proc for n in nodes] + list(reversed(stack.procs))
    for proc in procs:
        proc.stop()
    return procs


def sentinel_file(results, binary, tmp, compose):
    stack = Stack(compose, os.path.join(tmp, "sentinel"), 10)
    os.makedirs(stack.tmp, exist_ok=True)
    nodes = []
    try:
        for name in ("redis-master", "redis-replica"):
            stack.start(name)
            stack.wait_listening(name, 6379)
        sentinels = [n for n in stack.redis if n.startswith("sentinel")]
        for name in sentinels:
            stack.start(name)
            stack.wait_listening(name, 26379)
        results.check("sentinel file: a master, a replica and three sentinels run their own commands",
                      len(sentinels) == 3 and all(p.alive() for p in stack.procs),
                      ", ".join(stack.redis))
        wait_until("the replica in sync", lambda: "master_link_status:up" in
                   stack.cli("redis-replica", 6379, "info", "replication"), 20)
        wait_until("every sentinel knows the replica and the other sentinels",
                   lambda: all(stack.cli(s, 26379, "sentinel", "master", "mymaster").count("\n") > 0 and
                               "num-other-sentinels\n2" in stack.cli(s, 26379, "sentinel", "master", "mymaster")
                               for s in sentinels), 30)
        env = dict(node_env(compose, stack), SKYWAVE_WORKER_SECRET=SECRET)
        nodes = nodes_join(results, binary, env, stack.tmp, "sentinel")
        for n in nodes:
            n.post("/internal/register", {"topic": "sentinel-check", "meta": {"require_token": True}})
        crosses(results, nodes[0], nodes[1], ["sentinel-check"], 1, "sentinel file: a publish crosses the nodes")
        before = stack.cli(sentinels[0], 26379, "sentinel", "get-master-addr-by-name", "mymaster")
        stack.cli(sentinels[0], 26379, "sentinel", "failover", "mymaster")
        wait_until("the sentinels to name another master", lambda: stack.cli(
            sentinels[0], 26379, "sentinel", "get-master-addr-by-name", "mymaster") != before, 30)
        wait_until("both nodes back in cluster mode on the new master",
                   lambda: all(n.status().get("cluster_nodes") == 2 for n in nodes), 15)
        crosses(results, nodes[0], nodes[1], ["sentinel-check"], 2,
                "sentinel file: a publish crosses the nodes after SENTINEL FAILOVER")
    finally:
        started = stop(nodes, stack)
    return started


def cluster_file(results, binary, tmp, compose):
    stack = Stack(compose, os.path.join(tmp, "cluster"), 30)
    os.makedirs(stack.tmp, exist_ok=True)
    nodes = []
    try:
        masters = [n for n in stack.redis if n != "redis-cluster-create"]
        for name in masters:
            stack.start(name)
            stack.wait_listening(name, 6379)
        creator = next(n for n in stack.redis if "create" in n)
        if not stack.run_once(creator, results):
            raise Failure("the cluster was not formed")
        wait_until("cluster_state:ok on every node", lambda: all(
            "cluster_state:ok" in stack.cli(n, 6379, "cluster", "info") for n in masters), 30)
        results.check("cluster file: three masters formed by its cluster-create service", len(masters) == 3,
                      ", ".join(masters))
        # run again: an existing cluster is left alone
        stack.procs = [p for p in stack.procs if p.name != creator]
        results.check("cluster file: the create service is harmless on a formed cluster",
                      stack.run_once(creator, results))
        env = dict(node_env(compose, stack), SKYWAVE_WORKER_SECRET=SECRET)
        nodes = nodes_join(results, binary, env, stack.tmp, "cluster")
        topics = [f"cluster-check-{i}" for i in range(12)]
        for topic in topics:
            nodes[0].post("/internal/register", {"topic": topic, "meta": {"require_token": True}})
        crosses(results, nodes[0], nodes[1], topics, 1, "cluster file: publishes on 12 topics cross the nodes")
        shards = stack.cli(masters[0], 6379, "pubsub", "shardchannels")
        results.check("cluster file: events on sharded channels (SSUBSCRIBE)", "wavelog:events:" in
                      " ".join(stack.cli(m, 6379, "pubsub", "shardchannels") for m in masters), shards[:200])
    finally:
        started = stop(nodes, stack)
    return started


def main():
    parser = argparse.ArgumentParser(description="the Sentinel and Cluster compose files, started for real")
    parser.add_argument("binary", nargs="?", default=os.path.join(REPO, "target", "release", "skywave"))
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    results = Results()
    missing = [tool for tool in ("redis-server", "redis-sentinel", "redis-cli") if not shutil.which(tool)]
    if not executable(args.binary):
        missing.append(f"skywave binary ({args.binary})")
    try:
        import yaml
    except ImportError:
        yaml = None
        missing.append("PyYAML (pip install pyyaml)")
    if missing:
        results.check("prerequisites", False, "missing: " + ", ".join(missing))
        sys.exit(results.summary("check_compose_ha"))
    install_hard_limit(HARD_LIMIT_SECONDS)
    tmp = tempfile.mkdtemp(prefix="skywave-compose-ha-")
    started = []
    try:
        for label, path, run in (("sentinel", "deploy/compose.sentinel.yaml", sentinel_file),
                                 ("cluster", "deploy/compose.cluster.yaml", cluster_file)):
            print(f"== {path}", flush=True)
            with open(os.path.join(REPO, path), encoding="utf-8") as f:
                raw = yaml.safe_load(f)
            compose = interpolate(raw, {"SKYWAVE_WORKER_SECRET": "x" * 64})
            check_compose_schema(results, path, compose)
            try:
                started += run(results, os.path.abspath(args.binary), tmp, compose)
            except Failure as error:
                results.check(f"{label} file runs", False, str(error))
    finally:
        protect_cleanup()
        leftovers = [p.name for p in started if p.alive()]
        results.check("every process started by the check is stopped", not leftovers, ", ".join(leftovers))
        if args.keep or results.failed:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    signal.alarm(0)
    sys.exit(results.summary("check_compose_ha"))


if __name__ == "__main__":
    main()
