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
standard library only. Needs redis-server and nginx on PATH (or --redis-server,
--nginx). Exits non-zero on failure; the last line is "N passed, N failed".
"""

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import os
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import nginx_template  # noqa: E402  (renders the repository's nginx config)
from results import Failure, Results  # noqa: E402

LOOPBACK = "127.0.0.1"
CLIENTS = 20
RECONNECT_EXTRA = 3
TOPIC = "deploy.e2e"
HARD_LIMIT_SECONDS = 240


# ------------------------------------------------------------------- WebSocket

class WSClosed(Exception):
    def __init__(self, code, how):
        self.code = code
        self.how = how
        super().__init__(f"closed ({how}, code={code})")


class WebSocket:
    """A minimal RFC 6455 client: text frames out (masked), frames in; answers
    pings; reports the close code."""

    def __init__(self, port, path, timeout=10.0):
        self.sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.close_code = None
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Origin: http://localhost\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        lines = head.decode("iso-8859-1").split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or status[1] != "101":
            self.sock.close()
            raise ConnectionError(f"upgrade refused: {lines[0]!r}")
        headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            self.sock.close()
            raise ConnectionError("bad Sec-WebSocket-Accept")

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("timed out") from None
        except (ConnectionResetError, BrokenPipeError):
            raise WSClosed(None, "reset") from None
        if not chunk:
            raise WSClosed(None, "eof")
        self.buf += chunk

    def _send_frame(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send_json(self, value):
        self._send_frame(0x1, json.dumps(value).encode())

    def recv_json(self, timeout):
        """The next text message as JSON; answers pings on the way."""
        deadline = time.monotonic() + timeout
        while True:
            opcode, payload = self._recv_frame(deadline)
            if opcode == 0x9:
                self._send_frame(0xA, payload)
            elif opcode == 0x8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                raise WSClosed(self.close_code, "close")
            elif opcode in (0x1, 0x2):
                return json.loads(payload.decode())

    def _recv_frame(self, deadline):
        while True:
            if len(self.buf) >= 2:
                b0, b1 = self.buf[0], self.buf[1]
                n, offset = b1 & 0x7F, 2
                if n == 126 and len(self.buf) >= 4:
                    n, offset = struct.unpack("!H", self.buf[2:4])[0], 4
                elif n == 127 and len(self.buf) >= 10:
                    n, offset = struct.unpack("!Q", self.buf[2:10])[0], 10
                if (b1 & 0x7F) < 126 or offset > 2:
                    if b1 & 0x80:
                        raise ConnectionError("server sent a masked frame")
                    if not b0 & 0x80:
                        raise ConnectionError("fragmented frames are not expected in this test")
                    if len(self.buf) >= offset + n:
                        payload = bytes(self.buf[offset:offset + n])
                        del self.buf[:offset + n]
                        return b0 & 0x0F, payload
            self._fill(deadline)

    def has_input(self):
        return bool(self.buf) or bool(select.select([self.sock], [], [], 0)[0])

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ----------------------------------------------------------------- processes

def free_port():
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def hex_token(secret, user_id, topic, ttl=3600):
    """The wavelog_worker token, as the PHP library writes it."""
    claims = json.dumps({"user_id": user_id, "topic": topic, "expires": int(time.time()) + ttl}, separators=(",", ":"))
    encoded = claims.encode().hex()
    return encoded + "." + hmac.new(secret.encode(), encoded.encode(), hashlib.sha256).hexdigest()


class Process:
    """A child in its own process group, output to a log file; stopped by id."""

    def __init__(self, name, argv, log_path, env=None):
        self.name = name
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)

    def alive(self):
        return self.proc.poll() is None

    def send(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig=signal.SIGTERM, grace=5.0):
        if self.alive():
            self.proc.send_signal(sig)
            if self.wait(grace) is None:
                self.proc.kill()
                self.wait(5)
        # Anything the child left in its own group (nginx workers): by group id.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.log.close()

    def tail(self, lines=15):
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"    {self.name}| {line}" for line in text[-lines:])


def wait_until(what, predicate, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except Failure:
            raise
        except Exception as error:  # still starting: connection refused and the like
            last = error
        time.sleep(interval)
    raise Failure(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def http_request(port, method, path, secret=None, body=None, timeout=5.0):
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if secret is not None:
            headers["X-Worker-Secret"] = secret
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def redis_ping(port):
    with socket.create_connection((LOOPBACK, port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")


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

class Cluster:
    def __init__(self, args, tmp):
        self.args = args
        self.tmp = tmp
        self.secret = secrets.token_hex(32)
        self.procs = []
        self.clients = []

    def start_redis(self):
        self.redis_port = free_port()
        os.makedirs(os.path.join(self.tmp, "redis"))
        redis = Process("redis", [self.args.redis_server, "--port", str(self.redis_port), "--bind", LOOPBACK,
                                  "--save", "", "--appendonly", "no", "--dir", os.path.join(self.tmp, "redis")],
                        os.path.join(self.tmp, "redis.log"))
        self.procs.append(redis)
        wait_until("redis-server to answer PING", lambda: redis_ping(self.redis_port), 10)

    def start_node(self, name, extra=""):
        """A node in cluster mode; `extra` is appended to its YAML config."""
        ws_port, internal_port = free_port(), free_port()
        config = os.path.join(self.tmp, f"{name}.yaml")
        with open(config, "w") as f:
            f.write(
                f"ws_port: {ws_port}\nws_bind: {LOOPBACK}\n"
                f"internal_port: {internal_port}\ninternal_bind: {LOOPBACK}\n"
                f"worker_secret: \"{self.secret}\"\n"
                f"redis_url: redis://{LOOPBACK}:{self.redis_port}/0\n"
                "topic_ttl: 1h\n" + extra)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKYWAVE_")}
        env.setdefault("RUST_LOG", "info")
        node = Process(name, [self.args.binary, "--config", config], os.path.join(self.tmp, f"{name}.log"), env)
        node.ws_port, node.internal_port = ws_port, internal_port
        self.procs.append(node)

        def healthy():
            if not node.alive():
                raise Failure(f"{name} exited with {node.proc.returncode}:\n{node.tail()}")
            return http_request(ws_port, "GET", "/healthz")[0] == 200
        wait_until(f"{name} /healthz", healthy, 15)
        return node

    def status(self, node):
        code, body = http_request(node.internal_port, "GET", "/internal/status", self.secret)
        if code != 200:
            raise Failure(f"{node.name} /internal/status answered {code}: {body[:200]}")
        return json.loads(body)

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
        ws = WebSocket(self.nginx_port, f"/ws?topic={TOPIC}")
        self.clients.append(ws)
        ws.send_json({"type": "auth", "token": hex_token(self.secret, user_id, TOPIC)})
        reply = ws.recv_json(5)
        if reply != {"type": "auth_ok"}:
            raise Failure(f"client {user_id}: expected auth_ok, got {reply}")
        return ws

    def stop_all(self):
        for ws in self.clients:
            ws.close()
        # SIGTERM everywhere: for nginx that is the fast shutdown (SIGQUIT
        # would wait for proxied WebSockets).
        for proc in reversed(self.procs):
            proc.stop(signal.SIGTERM)


def all_receive(clients, expected, timeout=5.0):
    """How many of `clients` got exactly `expected` as their next message."""
    got, problems = 0, []
    deadline = time.monotonic() + timeout
    for i, ws in enumerate(clients):
        try:
            message = ws.recv_json(max(0.1, deadline - time.monotonic()))
            if message == expected:
                got += 1
            else:
                problems.append(f"client {i}: {message}")
        except (TimeoutError, WSClosed, ConnectionError) as error:
            problems.append(f"client {i}: {error}")
    return got, problems


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

        def clustered():
            a, b = cluster.status(node_a), cluster.status(node_b)
            return (a, b) if a.get("cluster_nodes") == 2 and b.get("cluster_nodes") == 2 else None
        try:
            status_a, status_b = wait_until("both nodes to see cluster_nodes == 2", clustered, 15)
            results.check("both nodes in cluster mode (cluster_nodes == 2)", True,
                          f"mode {status_a.get('mode')}/{status_b.get('mode')}")
        except Failure as error:
            a, b = cluster.status(node_a), cluster.status(node_b)
            results.require("both nodes in cluster mode (cluster_nodes == 2)", False,
                            f"{error}; node-a mode={a.get('mode')} cluster_nodes={a.get('cluster_nodes')}, "
                            f"node-b mode={b.get('mode')} cluster_nodes={b.get('cluster_nodes')} "
                            "(cluster mode over Redis missing or broken)")

        cluster.start_nginx([node_a, node_b])
        results.check("nginx -t accepts the rendered nginx/skywave.conf.template; nginx serves /healthz", True,
                      f"nginx :{cluster.nginx_port}")

        for path in ("/internal/status", "/internal/publish", "/metrics", "/"):
            code, _ = http_request(cluster.nginx_port, "GET", path, cluster.secret)
            results.check(f"nginx does not expose {path}", code == 404, f"HTTP {code}")

        code, body = http_request(node_a.internal_port, "POST", "/internal/register", cluster.secret,
                                  {"topic": TOPIC, "meta": {"require_token": True}})
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
        code, body = http_request(node_a.internal_port, "POST", "/internal/publish", cluster.secret,
                                  {"topic": TOPIC, "payload": payload})
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
        closed, other, undecided = [], [], list(first)

        def collect(until):
            while undecided and time.monotonic() < until:
                ready = [ws for ws in undecided if ws.has_input()]
                if not ready:
                    select.select([ws.sock for ws in undecided], [], [], max(0.0, min(0.2, until - time.monotonic())))
                    continue
                for ws in ready:
                    undecided.remove(ws)
                    try:
                        other.append(f"unexpected message {ws.recv_json(1)}")
                    except WSClosed as error:
                        (closed if error.code == 1001 else other).append(f"{error.how} code={error.code}")
                    except (TimeoutError, ConnectionError) as error:
                        other.append(str(error))
                if len(closed) >= on_b:
                    return
        collect(time.monotonic() + 5)
        collect(time.monotonic() + 0.5)
        still_open = undecided
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
        code, body = http_request(node_a.internal_port, "POST", "/internal/publish", cluster.secret,
                                  {"topic": TOPIC, "payload": payload})
        results.check("publish to node A after node B left answered 200", code == 200, f"HTTP {code}")
        got, problems = all_receive(live, {"type": "push", "payload": payload})
        results.check("every live client got the second push", got == len(live),
                      f"{got}/{len(live)}" + (f"; {problems[:3]}" if problems else ""))
    except Failure as error:
        if not error.reported:
            results.check("the run went through", False, str(error))
        print("stopped; the last lines of each process's output:", flush=True)
        for proc in cluster.procs:
            print(proc.tail(), flush=True)
    finally:
        # Cleanup must not be cut short by the hard limit or a second SIGTERM;
        # it is bounded by itself (each process: SIGTERM, 5 s, SIGKILL).
        signal.alarm(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster.stop_all()
        leftovers = [p.name for p in cluster.procs if p.alive()]
        results.check("every process started by the test is stopped", not leftovers, ", ".join(leftovers))
        if args.keep:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


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
               if not (os.path.isfile(path) and os.access(path, os.X_OK))]
    if missing:
        results.check("prerequisites", False, "not found or not executable: " + ", ".join(missing))
    else:
        # A run never hangs: a stop from outside or the hard limit still cleans up.
        def interrupt(signum, _frame):
            if signum == signal.SIGALRM:
                raise Failure(f"the whole run took longer than {HARD_LIMIT_SECONDS} s")
            raise Failure(f"interrupted by signal {signum}")
        signal.signal(signal.SIGTERM, interrupt)
        signal.signal(signal.SIGALRM, interrupt)
        signal.alarm(HARD_LIMIT_SECONDS)
        print(f"e2e_nginx: {args.binary}, {args.nginx}, {args.redis_server}", flush=True)
        run(args, results)
        signal.alarm(0)
    sys.exit(results.summary("e2e_nginx"))


if __name__ == "__main__":
    main()
