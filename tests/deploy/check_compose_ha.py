#!/usr/bin/env python3
"""The Sentinel, Redis Cluster and NATS compose examples really start,
without Docker (no image registry is reachable here): every Redis, sentinel,
cluster-create and NATS service of deploy/compose.sentinel.yaml,
deploy/compose.cluster.yaml and deploy/compose.nats.yaml is run with its own
`command` by the real Debian redis-server / redis-sentinel / redis-cli /
nats-server, each service on a loopback address of its own (127.0.0.N, as
each container has its own address; a NATS server bound to it with -a, its
route listener too), the service names in its command replaced by those
addresses and its /tmp or /data by a directory of its own; then two real
skywave nodes start with the file's SKYWAVE_* settings (listen ports changed
to free loopback ones) and must join (cluster_nodes 2), and publishes must
cross them. For the Sentinel file also after a SENTINEL FAILOVER. For the
NATS file: each server's own healthcheck passes, the servers form one
cluster with a JetStream group of three, the key-value buckets have three
copies, and after the server the first node is connected to (found by its
connection name in /connz) is killed with SIGKILL, a publish crosses both
ways within 15 s and the node is on another server.

    python3 tests/deploy/check_compose_ha.py [path/to/skywave]

The files are also validated against the Compose Specification schema.
Needs redis-server, redis-sentinel, redis-cli, nats-server (with JetStream,
2.9 or later), wget (the NATS healthcheck's tool) and PyYAML; a missing one
is a FAIL. Bounded in time; every process is stopped at the end. The last
line is "N passed, N failed".
"""

import argparse
import http.client
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
URL_KEYS = ("SKYWAVE_REDIS_URL", "SKYWAVE_NATS_URL")


class Stack:
    """The broker side of one compose file (its Redis or NATS services), as
    local processes."""

    def __init__(self, compose, tmp, base):
        self.compose, self.tmp, self.procs = compose, tmp, []
        services = compose.get("services") or {}
        self.servers = [name for name, s in services.items()
                        if str(s.get("image", "")).startswith(("redis", "nats"))]
        self.address = {name: f"127.0.0.{base + i}" for i, name in enumerate(self.servers)}

    def rewrite(self, text, name):
        """Service names -> addresses, /tmp and /data (the image's working
        directory, the NATS store) -> the service's own directory."""
        for service, address in sorted(self.address.items(), key=lambda kv: -len(kv[0])):
            text = re.sub(rf"(?<![\w.-]){re.escape(service)}(?![\w.-])", address, text)
        return re.sub(r"(?<![\w.-])/(?:tmp|data)(?=/|$|[\s;'\"])", os.path.join(self.tmp, name), text)

    def argv(self, name):
        service = self.compose["services"][name]
        command = service.get("command")
        command = command if isinstance(command, list) else ["sh", "-c", str(command)]
        os.makedirs(os.path.join(self.tmp, name), exist_ok=True)
        address = self.address[name]
        # A NATS server's name stays its own (a service name, not an address).
        argv = [arg if i and command[i - 1] in ("--server_name", "--name", "-n") else self.rewrite(arg, name)
                for i, arg in enumerate(command)]
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
        elif argv[0] == "nats-server":
            # clients and monitoring on -a, the routes' listener on --cluster
            if "--cluster" not in argv[:-1]:
                raise Failure(f"{name}: no --cluster listen URL in its command")
            at = argv.index("--cluster") + 1
            argv[at] = argv[at].replace("0.0.0.0", address)
            if address not in argv[at]:
                raise Failure(f"{name}: --cluster {argv[at]!r} does not listen on 0.0.0.0 (or this service)")
            argv += ["-a", address]
        return argv

    def option(self, name, *flags):
        """The value after one of `flags` in the service's command."""
        command = self.compose["services"][name].get("command") or []
        for i, arg in enumerate(command[:-1]):
            if arg in flags:
                return command[i + 1]
        raise Failure(f"{name}: no {'/'.join(flags)} in its command")

    def healthcheck(self, name):
        """The service's own healthcheck command, run here against its
        address; True if it exits 0."""
        test = self.compose["services"][name].get("healthcheck", {}).get("test") or []
        if test[:1] != ["CMD"] or len(test) < 2:
            raise Failure(f"{name}: healthcheck {test!r} is not a CMD list")
        argv = [re.sub(r"(?<=//)(?:127\.0\.0\.1|localhost)(?=[:/])", self.address[name], arg) for arg in test[1:]]
        if argv == test[1:]:
            raise Failure(f"{name}: healthcheck {test!r} names no 127.0.0.1 or localhost URL")
        return subprocess.run(argv, capture_output=True, timeout=5).returncode == 0

    def monitor(self, name, path):
        """JSON from the NATS server's monitoring port (-m in its command)."""
        code, body = http_get(self.address[name], int(self.option(name, "-m", "--http_port")), path)
        if code != 200:
            raise Failure(f"{name} {path} answered {code}: {body[:200]}")
        return json.loads(body)

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


def http_get(host, port, path, timeout=5.0):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def node_env(compose, stack):
    services = compose.get("services") or {}
    node = next(s for s in services.values() if s.get("build") is not None)
    env = {k: v for k, v in environment(node).items() if v is not None}
    for key in URL_KEYS:
        if key in env:
            env[key] = stack.rewrite(env[key], "skywave")
    return env


def broker_url(env):
    return next((env[key] for key in URL_KEYS if key in env), "(no SKYWAVE_REDIS_URL or SKYWAVE_NATS_URL)")


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
        results.check(f"{label}: both skywave nodes join (cluster_nodes 2)", True, broker_url(env))
    except Failure as error:
        results.check(f"{label}: both skywave nodes join (cluster_nodes 2)", False,
                      f"{error}\n" + "\n".join(n.proc.tail() for n in nodes))
        for n in nodes:
            n.proc.stop()
        raise Failure(str(error), reported=True) from None
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
        sentinels = [n for n in stack.servers if n.startswith("sentinel")]
        for name in sentinels:
            stack.start(name)
            stack.wait_listening(name, 26379)
        results.check("sentinel file: a master, a replica and three sentinels run their own commands",
                      len(sentinels) == 3 and all(p.alive() for p in stack.procs),
                      ", ".join(stack.servers))
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
        # cluster_nodes may still be the old master's count for a moment:
        # wait until both nodes are subscribed on the one the sentinels name.
        host, port = stack.cli(sentinels[0], 26379, "sentinel", "get-master-addr-by-name", "mymaster").split()[:2]
        master = next(name for name, address in stack.address.items() if address == host)
        wait_until("both nodes subscribed on the new master", lambda: stack.cli(
            master, int(port), "pubsub", "numsub", "wavelog:events").split()[-1:] == ["2"], 15)
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
        masters = [n for n in stack.servers if n != "redis-cluster-create"]
        for name in masters:
            stack.start(name)
            stack.wait_listening(name, 6379)
        creator = next(n for n in stack.servers if "create" in n)
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


def crosses_within(results, a, b, topic, first_seq, since, timeout, what):
    """Publishes on `a` (a new seq each try) until one reaches a socket on `b`,
    until `timeout` seconds after `since` (a time.monotonic()): while the
    broker side recovers, a publish may be refused or lost, or a socket
    refused; the last such miss is reported."""
    start = since
    seq, tries, last = first_seq, 0, None
    while time.monotonic() - start < timeout:
        tries += 1
        seq += 1
        try:
            ws = socket_on(b, topic, tries)
        except (Failure, OSError, TimeoutError, WSClosed, ConnectionError) as error:
            last = f"socket on {b.name}: {error}"
            time.sleep(0.5)
            continue
        try:
            code = a.post("/internal/publish", {"topic": topic, "payload": {"seq": seq}})
            if code == 200 and receive_push(ws, seq, min(3.0, max(0.1, timeout - (time.monotonic() - start)))):
                return results.check(what, True, f"try {tries}, {time.monotonic() - start:.1f} s after the kill"
                                     + (f"; the try before: {last}" if last else ""))
            last = f"publish answered {code}" if code != 200 else f"seq {seq} did not arrive within 3 s"
        except OSError as error:
            last = f"publish on {a.name}: {error}"
        finally:
            ws.close()
        time.sleep(0.2)
    return results.check(what, False, f"none of {tries} tries crossed within {timeout} s of the kill; last: {last}")


def connected_to(stack, servers, node):
    """The servers (among `servers`) on which `node` has a client connection,
    by its connection name ("skywave <node name>") in /connz."""
    return [name for name in servers
            if any(c.get("name") == f"skywave {node.name}"
                   for c in stack.monitor(name, "/connz").get("connections") or [])]


def nats_file(results, binary, tmp, compose):
    stack = Stack(compose, os.path.join(tmp, "nats"), 50)
    os.makedirs(stack.tmp, exist_ok=True)
    nodes = []
    try:
        servers = list(stack.servers)
        for name in servers:
            stack.start(name)
        for name in servers:
            stack.wait_listening(name, int(stack.option(name, "-p", "--port")))
        results.check("nats file: three NATS servers run their own commands (JetStream, a store of their own)",
                      len(servers) == 3 and all(p.alive() for p in stack.procs) and
                      all("-js" in stack.argv(n) or "--jetstream" in stack.argv(n) for n in servers),
                      ", ".join(servers))
        try:
            wait_until("every NATS server's own healthcheck to pass",
                       lambda: all(stack.healthcheck(n) for n in servers), 30)
            results.check("nats file: every server's healthcheck passes (JetStream up)", True,
                          " ".join(compose["services"][servers[0]]["healthcheck"]["test"][1:]))
        except Failure as error:
            results.check("nats file: every server's healthcheck passes (JetStream up)", False,
                          f"{error}\n" + "\n".join(p.tail() for p in stack.procs))
            raise Failure(str(error), reported=True) from None
        routes = {n: stack.monitor(n, "/routez").get("num_routes") for n in servers}
        meta = stack.monitor(servers[0], "/jsz").get("meta_cluster") or {}
        results.check("nats file: one cluster, every server routed to the other two, a JetStream group of 3",
                      all(r == 2 for r in routes.values()) and meta.get("cluster_size") == 3 and meta.get("leader"),
                      f"routes {routes}, meta cluster_size {meta.get('cluster_size')} leader {meta.get('leader')}")
        env = dict(node_env(compose, stack), SKYWAVE_WORKER_SECRET=SECRET)
        listed = all(stack.address[n] in env.get("SKYWAVE_NATS_URL", "") for n in servers)
        results.check("nats file: the nodes list every server, with SKYWAVE_NATS_KV_REPLICAS=3",
                      listed and env.get("SKYWAVE_NATS_KV_REPLICAS") == "3",
                      f"SKYWAVE_NATS_URL={env.get('SKYWAVE_NATS_URL')} "
                      f"SKYWAVE_NATS_KV_REPLICAS={env.get('SKYWAVE_NATS_KV_REPLICAS')}")
        nodes = nodes_join(results, binary, env, stack.tmp, "nats")
        for n in nodes:
            n.post("/internal/register", {"topic": "nats-check", "meta": {"require_token": True}})
        crosses(results, nodes[0], nodes[1], ["nats-check"], 1, "nats file: a publish crosses the nodes")
        prefix = env.get("SKYWAVE_NATS_PREFIX", "wavelog")
        jsz = stack.monitor(servers[0], "/jsz?accounts=true&streams=true&config=true")
        streams = {d.get("name"): d for account in jsz.get("account_details") or []
                   for d in account.get("stream_detail") or []}
        buckets = [f"KV_{prefix}_{b}" for b in ("topics", "nodes", "connects")]
        replicas = {b: (streams.get(b) or {}).get("config", {}).get("num_replicas") for b in buckets}
        results.check("nats file: the key-value buckets have three copies", all(r == 3 for r in replicas.values()),
                      f"{replicas} (of streams {sorted(streams)})")
        first = connected_to(stack, servers, nodes[0])
        if len(first) != 1:
            raise Failure(f"{nodes[0].name} has a connection on {first or 'no server'}, expected one server")
        victim = first[0]
        process = next(p for p in stack.procs if p.name == victim)
        killed_at = time.monotonic()
        process.send(signal.SIGKILL)
        results.check(f"nats file: {victim}, the server {nodes[0].name} is connected to, killed (SIGKILL)",
                      process.wait(5) is not None, f"pid {process.proc.pid}")
        rest = [n for n in servers if n != victim]
        crosses_within(results, nodes[0], nodes[1], "nats-check", 100, killed_at, 15,
                       f"nats file: a publish crosses {nodes[0].name} -> {nodes[1].name} after {victim} died")
        crosses_within(results, nodes[1], nodes[0], "nats-check", 200, killed_at, 15,
                       f"nats file: a publish crosses {nodes[1].name} -> {nodes[0].name} after {victim} died")
        try:
            moved = wait_until(f"{nodes[0].name} on another server", lambda: connected_to(stack, rest, nodes[0]), 5)
            results.check(f"nats file: {nodes[0].name} moved to another server", True, ", ".join(moved))
        except Failure as error:
            results.check(f"nats file: {nodes[0].name} moved to another server", False, str(error))
        try:
            wait_until("both nodes to see cluster_nodes 2", lambda: all(
                n.status().get("cluster_nodes") == 2 for n in nodes), 10)
            results.check(f"nats file: both nodes still see cluster_nodes 2 with {victim} down", True)
        except Failure as error:
            results.check(f"nats file: both nodes still see cluster_nodes 2 with {victim} down", False, str(error))
    finally:
        started = stop(nodes, stack)
    return started


def main():
    parser = argparse.ArgumentParser(description="the Sentinel, Redis Cluster and NATS compose files, started for real")
    parser.add_argument("binary", nargs="?", default=os.path.join(REPO, "target", "release", "skywave"))
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    results = Results()
    missing = [tool for tool in ("redis-server", "redis-sentinel", "redis-cli", "nats-server", "wget")
               if not shutil.which(tool)]
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
                                 ("cluster", "deploy/compose.cluster.yaml", cluster_file),
                                 ("nats", "deploy/compose.nats.yaml", nats_file)):
            print(f"== {path}", flush=True)
            with open(os.path.join(REPO, path), encoding="utf-8") as f:
                raw = yaml.safe_load(f)
            compose = interpolate(raw, {"SKYWAVE_WORKER_SECRET": "x" * 64})
            check_compose_schema(results, path, compose)
            try:
                started += run(results, os.path.abspath(args.binary), tmp, compose)
            except Failure as error:
                if not error.reported:  # else its FAIL line is printed already
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
