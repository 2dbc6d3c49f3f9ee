"""What the end-to-end deployment tests share: a minimal WebSocket client,
child processes stopped by id, bounded waits, HTTP on loopback, and a Fleet
that starts a real redis-server and skywave nodes from configs in a temporary
directory.

Used by e2e_nginx.py, e2e_haproxy.py and check_monitoring.py. Python 3
standard library only; everything listens on and connects to 127.0.0.1.
"""

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
import time

from results import Failure

LOOPBACK = "127.0.0.1"


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


def sort_closed(clients, expected_closes, code=1001, wait=5.0):
    """Reads whatever arrives on `clients` until `expected_closes` of them were
    closed (bounded by `wait`, then a short grace for any extra). Returns
    (closed with `code`, other outcomes, still open)."""
    closed, other, undecided = [], [], list(clients)

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
                    (closed if error.code == code else other).append(f"{error.how} code={error.code}")
                except (TimeoutError, ConnectionError) as error:
                    other.append(str(error))
            if len(closed) >= expected_closes:
                return
    collect(time.monotonic() + wait)
    collect(time.monotonic() + 0.5)
    return closed, other, undecided


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
        if not self.log.closed:
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


def executable(path):
    return bool(path) and os.path.isfile(path) and os.access(path, os.X_OK)


# --------------------------------------------------------------------- fleet

class Fleet:
    """A real redis-server and skywave nodes, each with its own config file in
    `tmp`, on free loopback ports; every process is stopped by stop_all()."""

    def __init__(self, binary, tmp, redis_server=None):
        self.binary = binary
        self.redis_server = redis_server
        self.tmp = tmp
        self.secret = secrets.token_hex(32)
        self.procs = []
        self.clients = []
        self.redis = None
        self.redis_port = None

    def start_redis(self):
        self.redis_port = free_port()
        os.makedirs(os.path.join(self.tmp, "redis"), exist_ok=True)
        redis = Process("redis", [self.redis_server, "--port", str(self.redis_port), "--bind", LOOPBACK,
                                  "--save", "", "--appendonly", "no", "--dir", os.path.join(self.tmp, "redis")],
                        os.path.join(self.tmp, "redis.log"))
        self.procs.append(redis)
        self.redis = redis
        wait_until("redis-server to answer PING", lambda: redis_ping(self.redis_port), 10)
        return redis

    def start_node(self, name, cluster=True, extra=""):
        """A node from a config file; in cluster mode on this fleet's Redis."""
        ws_port, internal_port = free_port(), free_port()
        config = os.path.join(self.tmp, f"{name}.yaml")
        with open(config, "w") as f:
            f.write(
                f"ws_port: {ws_port}\nws_bind: {LOOPBACK}\n"
                f"internal_port: {internal_port}\ninternal_bind: {LOOPBACK}\n"
                f"worker_secret: \"{self.secret}\"\n"
                + (f"redis_url: redis://{LOOPBACK}:{self.redis_port}/0\n" if cluster else "")
                + f"node_name: {name}\ntopic_ttl: 1h\n" + extra)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKYWAVE_")}
        env.setdefault("RUST_LOG", "info")
        node = Process(name, [self.binary, "--config", config], os.path.join(self.tmp, f"{name}.log"), env)
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

    def wait_clustered(self, nodes, timeout=15):
        """Until every node sees cluster_nodes == len(nodes)."""
        def clustered():
            statuses = [self.status(n) for n in nodes]
            return statuses if all(s.get("cluster_nodes") == len(nodes) for s in statuses) else None
        try:
            return wait_until(f"every node to see cluster_nodes == {len(nodes)}", clustered, timeout)
        except Failure as error:
            seen = ", ".join(f"{n.name} mode={s.get('mode')} cluster_nodes={s.get('cluster_nodes')}"
                             for n, s in zip(nodes, (self.status(n) for n in nodes)))
            raise Failure(f"{error}; {seen} (cluster mode over Redis missing or broken)") from None

    def register(self, node, topic, require_token=True):
        return http_request(node.internal_port, "POST", "/internal/register", self.secret,
                            {"topic": topic, "meta": {"require_token": require_token}})

    def publish(self, node, topic, payload):
        return http_request(node.internal_port, "POST", "/internal/publish", self.secret,
                            {"topic": topic, "payload": payload})

    def connect(self, port, topic, user_id):
        """A browser: WebSocket to `port` (a proxy or a node), auth frame, auth_ok."""
        ws = WebSocket(port, f"/ws?topic={topic}")
        self.clients.append(ws)
        ws.send_json({"type": "auth", "token": hex_token(self.secret, user_id, topic)})
        reply = ws.recv_json(5)
        if reply != {"type": "auth_ok"}:
            raise Failure(f"client {user_id}: expected auth_ok, got {reply}")
        return ws

    def tails(self):
        for proc in self.procs:
            print(proc.tail(), flush=True)

    def finish(self, results, keep):
        """Stops every process (bounded), checks none is left, and removes the
        temporary directory unless `keep`."""
        self.stop_all()
        leftovers = [p.name for p in self.procs if p.alive()]
        results.check("every process started by the test is stopped", not leftovers, ", ".join(leftovers))
        if keep:
            print(f"logs kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def stop_all(self):
        for ws in self.clients:
            ws.close()
        # SIGTERM everywhere: for nginx that is the fast shutdown (SIGQUIT
        # would wait for proxied WebSockets); haproxy too.
        for proc in reversed(self.procs):
            proc.stop(signal.SIGTERM)


def install_hard_limit(seconds):
    """A run never hangs: the hard limit or a stop from outside raises Failure,
    so the caller's finally still cleans up."""
    def interrupt(signum, _frame):
        if signum == signal.SIGALRM:
            raise Failure(f"the whole run took longer than {seconds} s")
        raise Failure(f"interrupted by signal {signum}")
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(seconds)


def protect_cleanup():
    """Called first in a finally: the hard limit and a second SIGTERM must not
    cut the cleanup short (it is bounded by itself)."""
    signal.alarm(0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
