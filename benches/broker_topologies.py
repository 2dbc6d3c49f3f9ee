#!/usr/bin/env python3
"""Cross-node latency and publish cost on one Redis, a Sentinel set, a
Redis Cluster (sharded pub/sub), one NATS server and a three-server NATS
cluster (JetStream, kv_replicas 3), in one run, with the same load.

For each topology: starts the servers (real redis-server / redis-sentinel /
redis-cli --cluster create / nats-server -js on loopback), two release
skywave nodes, waits until both are in cluster mode with cluster_nodes 2,
runs `skywave-loadgen cluster` (sockets on both nodes, publishes on the
first), prints its SUMMARY, stops everything. Ends with one table and a
`SUMMARY {json}` line. Rounds alternate the topologies (A B C, C B A) so
drift on a shared machine does not favour one.

  cargo build --release --workspace
  python3 benches/broker_topologies.py [--sockets-per-node 1000] [--rate 50]
      [--duration 10] [--rounds 2] [--only single,nats]
"""
import argparse, json, os, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"


def free_port(bus=False):
    while True:
        s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
        if not bus:
            return p
        p = 20000 + p % 25000
        ok = True
        for q in (p, p + 10000):
            t = socket.socket()
            try:
                t.bind(("127.0.0.1", q))
            except OSError:
                ok = False
            t.close()
        if ok:
            return p


def wait_port(port, within=10):
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {within}s")


def cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10).stdout


class Fleet:
    def __init__(self, name, work):
        self.name, self.work, self.procs = name, os.path.join(work, name), []
        os.makedirs(self.work, exist_ok=True)

    def spawn(self, args, port=None, env=None, log="x.log"):
        out = open(os.path.join(self.work, log), "wb")
        p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.work)
        self.procs.append(p)
        if port:
            wait_port(port)
        return p

    def redis(self, port, *extra):
        return self.spawn(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                           "--appendonly", "no", "--dir", self.work, *extra], port, log=f"redis-{port}.log")

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def single(f):
    port = free_port(); f.redis(port)
    return {"SKYWAVE_REDIS_URL": f"redis://127.0.0.1:{port}/0"}


def nats_server(f, name, port, *extra):
    store = os.path.join(f.work, name)
    return f.spawn(["nats-server", "-a", "127.0.0.1", "-p", str(port), "-n", name, "-js", "-sd", store, *extra],
                   port, log=f"{name}.log")


def nats(f):
    port = free_port(); nats_server(f, "nats-1", port)
    return {"SKYWAVE_NATS_URL": f"nats://127.0.0.1:{port}"}


def nats_cluster(f):
    ports, routes = [free_port() for _ in range(3)], [free_port() for _ in range(3)]
    route_urls = ",".join(f"nats://127.0.0.1:{r}" for r in routes)
    for i, (port, route) in enumerate(zip(ports, routes)):
        nats_server(f, f"nats-{i + 1}", port, "--cluster_name", "bench", "--cluster", f"nats://127.0.0.1:{route}",
                    "--routes", route_urls)
    return {"SKYWAVE_NATS_URL": ",".join(f"nats://127.0.0.1:{p}" for p in ports), "SKYWAVE_NATS_KV_REPLICAS": "3"}


def sentinel(f):
    m, r = free_port(), free_port()
    f.redis(m); f.redis(r, "--replicaof", "127.0.0.1", str(m))
    ports = []
    for i in range(3):
        p = free_port(); ports.append(p)
        conf = os.path.join(f.work, f"sentinel-{i}.conf")
        with open(conf, "w") as c:
            c.write(f"port {p}\nbind 127.0.0.1\ndir {f.work}\nsentinel monitor mymaster 127.0.0.1 {m} 2\n"
                    "sentinel down-after-milliseconds mymaster 1000\n")
        f.spawn(["redis-sentinel", conf], p, log=f"sentinel-{i}.log")
    return {"SKYWAVE_REDIS_URL": "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in ports) + "/mymaster/0"}


def cluster(f):
    ports = [free_port(bus=True) for _ in range(3)]
    for p in ports:
        f.redis(p, "--cluster-enabled", "yes", "--cluster-config-file", os.path.join(f.work, f"nodes-{p}.conf"))
    out = subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports], "--cluster-yes"],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise SystemExit(out.stdout + out.stderr)
    deadline = time.time() + 30
    while not all("cluster_state:ok" in cli(p, "cluster", "info") for p in ports):
        if time.time() > deadline:
            raise SystemExit("the Redis Cluster did not become ok")
        time.sleep(0.1)
    return {"SKYWAVE_REDIS_URL": "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports[:2])}


def cpu_seconds(pids):
    """User + system CPU of `pids` from /proc/<pid>/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / tick


def status(internal):
    req = urllib.request.Request(f"http://127.0.0.1:{internal}/internal/status", headers={"X-Worker-Secret": SECRET})
    with urllib.request.urlopen(req, timeout=2) as r:
        return json.load(r)


def nodes(f, broker, binary):
    out = []
    for i in range(2):
        ws, internal = free_port(), free_port()
        env = dict(os.environ, SKYWAVE_WORKER_SECRET=SECRET, SKYWAVE_WS_BIND="127.0.0.1", SKYWAVE_WS_PORT=str(ws),
                   SKYWAVE_INTERNAL_PORT=str(internal), SKYWAVE_LOG_LEVEL="warn",
                   SKYWAVE_NODE_NAME=f"{f.name}-{i}", **broker)
        p = f.spawn([binary], internal, env=env, log=f"skywave-{i}.log")
        out.append((ws, internal, p.pid))
    deadline = time.time() + 20
    while True:
        try:
            if all(status(n[1]).get("cluster_nodes") == 2 for n in out):
                return out
        except OSError:
            pass
        if time.time() > deadline:
            raise SystemExit(f"{f.name}: the nodes did not join (see {f.work})")
        time.sleep(0.1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sockets-per-node", type=int, default=1000)
    ap.add_argument("--rate", type=int, default=50)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated topologies (default: all)")
    a = ap.parse_args()
    binary = os.path.join(ROOT, "target/release/skywave")
    loadgen = os.path.join(ROOT, "target/release/skywave-loadgen")
    for tool in ("redis-server", "redis-sentinel", "redis-cli", "nats-server"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing (scripts/test installs it)")
    for b in (binary, loadgen):
        if not os.path.exists(b):
            raise SystemExit(f"{b} is missing: cargo build --release --workspace")
    work = tempfile.mkdtemp(prefix="skywave-broker-topologies-")
    shapes = [("single", single), ("sentinel", sentinel), ("cluster", cluster), ("nats", nats),
              ("nats-cluster", nats_cluster)]
    if a.only:
        wanted = a.only.split(",")
        unknown = set(wanted) - {name for name, _ in shapes}
        if unknown:
            raise SystemExit(f"--only: unknown topologies {sorted(unknown)}")
        shapes = [shape for shape in shapes if shape[0] in wanted]
    results = {name: [] for name, _ in shapes}
    for rnd in range(a.rounds):
        order = shapes if rnd % 2 == 0 else list(reversed(shapes))
        for name, start in order:
            f = Fleet(f"{name}-{rnd}", work)
            try:
                broker = start(f)
                ns = nodes(f, broker, binary)
                args = [loadgen, "cluster", "--secret", SECRET, "--sockets-per-node", str(a.sockets_per_node),
                        "--rate", str(a.rate), "--duration", str(a.duration)]
                for ws, internal, pid in ns:
                    args += ["--node", f"127.0.0.1:{ws},127.0.0.1:{internal},{pid}"]
                redis_pids = [p.pid for p in f.procs if p.pid not in {n[2] for n in ns}]
                before = cpu_seconds(redis_pids)
                out = subprocess.run(args, capture_output=True, text=True, timeout=a.duration + 120)
                redis_cpu = cpu_seconds(redis_pids) - before
                line = next((l for l in out.stdout.splitlines() if l.startswith("SUMMARY ")), None)
                if out.returncode != 0 or line is None:
                    raise SystemExit(f"{name}: loadgen failed:\n{out.stdout}\n{out.stderr}")
                summary = json.loads(line[len("SUMMARY "):])
                # every broker process of the fleet (servers and sentinels)
                summary["redis_cpu_us_per_publish"] = redis_cpu * 1e6 / max(1, summary["published"])
                results[name].append(summary)
                print(f"{name} round {rnd}: {line}", flush=True)
            finally:
                f.stop()
    rows = []
    for name, runs in results.items():
        def med(f, runs=runs):
            v = sorted(f(r) for r in runs)
            return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2
        rows.append((name,
                     med(lambda r: r["nodes"][1]["latency"]["p50_ms"]), med(lambda r: r["nodes"][1]["latency"]["p99_ms"]),
                     med(lambda r: r["nodes"][0]["latency"]["p50_ms"]),
                     med(lambda r: r["publish_call"]["p50_ms"]), med(lambda r: r["publish_call"]["p99_ms"]),
                     med(lambda r: r["nodes"][0]["cpu_us_per_publish"]), med(lambda r: r["nodes"][1]["cpu_us_per_publish"]),
                     med(lambda r: r["redis_cpu_us_per_publish"]),
                     all(r["complete"] for r in runs)))
    print(f"\n{a.sockets_per_node} sockets per node, {a.rate} publishes/s for {a.duration} s, median of {a.rounds} rounds")
    print("| topology | cross-node p50 / p99 ms | local p50 ms | POST publish p50 / p99 ms | "
          "CPU per publish, publishing node / other node µs | broker CPU per publish µs | complete |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.2f} / {r[2]:.2f} | {r[3]:.2f} | {r[4]:.2f} / {r[5]:.2f} | "
              f"{r[6]:.0f} / {r[7]:.0f} | {r[8]:.0f} | {'100 %' if r[9] else 'NO'} |")
    print("SUMMARY " + json.dumps({"sockets_per_node": a.sockets_per_node, "rate": a.rate,
                                   "duration": a.duration, "rounds": a.rounds, "results": results}))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
