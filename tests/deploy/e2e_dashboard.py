#!/usr/bin/env python3
"""End-to-end test of the dashboard in a real headless Chromium: a real
redis-server, two skywave nodes in cluster mode, and Chromium driven over the
Chrome DevTools Protocol (its WebSocket, with the small client of e2e_nginx).

    python3 tests/deploy/e2e_dashboard.py [path/to/skywave] [--screenshot PATH]

Checks: the login page loads; logging in through the form (the secret typed
into the password field) lands on the page with an HttpOnly, SameSite=Strict
session cookie, the secret in no URL and not in the page; both nodes appear,
alive; a WebSocket on each node changes the socket count shown for it (node
B's through the roster, node A's at once); publishes show a rate and the
latency histogram; at phone width nothing scrolls sideways and the node table
turns into cards; logout goes back to the login page and the page is closed.
A full-page screenshot at desktop width is saved (default docs/dashboard.png).

Everything listens on and connects to 127.0.0.1 only (Chromium resolves no
host name and does no background networking); every wait is bounded; every
process started here is stopped at the end, also on failure. Python 3
standard library only. Needs redis-server and chromium (Debian package
`chromium`) on PATH, or --redis-server, --chromium; a missing one is a FAIL.
The last line is "N passed, N failed".
"""

import argparse
import base64
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # importing the helpers leaves no __pycache__ in the tree
from devtools import open_page, start_chromium  # noqa: E402
from e2e_nginx import Cluster  # noqa: E402
from harness import (LOOPBACK, WebSocket, hex_token, http_request, install_hard_limit,  # noqa: E402
                     protect_cleanup, wait_until)
from results import Failure, Results  # noqa: E402

TOPIC = "dashboard.e2e"
HARD_LIMIT_SECONDS = 150
DESKTOP = {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
def rows(page):
    """The node table as shown: {node id: {field: text}}."""
    return page.evaluate("""Object.fromEntries([...document.querySelectorAll('#nodes tr')].map(r =>
        [r.dataset.nodeId, Object.fromEntries([...r.querySelectorAll('td[data-field]')]
            .map(td => [td.dataset.field, td.textContent]))]))""") or {}


def text(page, element_id):
    return page.evaluate(f"document.getElementById({json.dumps(element_id)})?.textContent ?? null")


def screenshot(page, metrics, path):
    """A full-page PNG at the given device metrics."""
    page.call("Emulation.setDeviceMetricsOverride", **metrics)
    height = page.evaluate("Math.ceil(document.documentElement.scrollHeight)")
    page.call("Emulation.setDeviceMetricsOverride", **{**metrics, "height": max(metrics["height"], height)})
    time.sleep(0.3)
    shot = page.call("Page.captureScreenshot", timeout=20, format="png")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(base64.b64decode(shot["data"]))
    page.call("Emulation.setDeviceMetricsOverride", **metrics)
    return os.path.getsize(path)


class Publisher(threading.Thread):
    """Publishes to node A about 20 times a second until stopped, so the page shows rates."""

    def __init__(self, cluster, node):
        super().__init__(daemon=True)
        self.cluster, self.node, self.stop, self.sent, self.errors = cluster, node, threading.Event(), 0, []

    def run(self):
        while not self.stop.wait(0.05):
            code, body = http_request(self.node.internal_port, "POST", "/internal/publish", self.cluster.secret,
                                      {"topic": TOPIC, "payload": {"seq": self.sent}})
            if code == 200:
                self.sent += 1
            else:
                self.errors.append(f"HTTP {code} {body[:80]}")


def run(args, results):
    tmp = tempfile.mkdtemp(prefix="skywave-dash-")
    cluster = Cluster(args, tmp)
    page = publisher = None
    try:
        cluster.start_redis()
        node_a = cluster.start_node("node-a")
        node_b = cluster.start_node("node-b")
        ids = {}
        for node in (node_a, node_b):
            ids[node.name] = wait_until(f"{node.name} in cluster mode",
                                        lambda n=node: (s := cluster.status(n))["mode"] == "cluster" and s["node_id"], 15)
        wait_until("node A's roster to list both nodes",
                   lambda: len(cluster.status(node_a).get("nodes") or []) == 2, 15)
        results.check("redis-server and two skywave nodes in cluster mode", True,
                      f"redis :{cluster.redis_port}, a :{node_a.internal_port}, b :{node_b.internal_port}")

        browser = start_chromium(args, tmp)
        cluster.procs.append(browser)
        page = open_page(browser)
        page.call("Page.enable")
        page.call("Emulation.setDeviceMetricsOverride", **DESKTOP)
        version = page.call("Browser.getVersion").get("product", "?")
        results.check("headless chromium answers over the DevTools protocol", True, version)

        base = f"http://{LOOPBACK}:{node_a.internal_port}"
        page.call("Page.navigate", url=f"{base}/dashboard")
        wait_until("the login form", lambda: page.evaluate("!!document.querySelector('form input[name=secret]')"), 10)
        form = page.evaluate("(f => [f.method, f.getAttribute('action')])(document.querySelector('form'))")
        results.require("the login page shows a POST form to /dashboard/login", form == ["post", "/dashboard/login"],
                        f"{form}")

        page.evaluate("document.getElementById('secret').focus()")
        page.call("Input.insertText", text=cluster.secret)
        page.evaluate("document.querySelector('form button[type=submit]').click()")
        try:
            wait_until("the dashboard after login",
                       lambda: page.evaluate("location.pathname") == "/dashboard/live", 10)
            results.check("logging in through the form opens /dashboard/live", True)
        except Failure as error:
            results.require("logging in through the form opens /dashboard/live", False,
                            f"{error}; page: {page.evaluate('document.body.innerText')[:200]!r}")
        href = page.evaluate("location.href")
        results.check("the secret is in no URL", cluster.secret not in href, href)
        cookies = page.call("Network.getCookies", urls=[f"{base}/dashboard/live"]).get("cookies", [])
        session = next((c for c in cookies if c["name"] == "skywave_session"), None)
        results.check("the session cookie is HttpOnly and SameSite=Strict, unseen by the page's script",
                      session is not None and session["httpOnly"] and session.get("sameSite") == "Strict"
                      and page.evaluate("document.cookie") == "",
                      f"{ {k: session[k] for k in ('httpOnly', 'sameSite', 'path')} if session else cookies}")

        try:
            wait_until("both nodes alive on the page",
                       lambda: all(rows(page).get(i, {}).get("alive") == "alive" for i in ids.values()), 15)
            shown = rows(page)
            results.check("both nodes appear on the page, alive", True,
                          ", ".join(f"{r.get('name', '?')[:6]} {r['alive']}" for r in shown.values()))
        except Failure as error:
            results.check("both nodes appear on the page, alive", False, f"{error}; shown: {rows(page)}")
        results.check("the stream is live", text(page, "link") == "live", text(page, "link"))
        this_row = rows(page).get(ids["node-a"], {})
        results.check("this node's mode and Redis state are shown; the other's are marked unknown",
                      this_row.get("mode") == "cluster" and this_row.get("redis") == "connected"
                      and rows(page).get(ids["node-b"], {}).get("mode") == "unknown", f"{this_row}")
        html = page.evaluate("document.documentElement.outerHTML")
        results.check("the secret is not in the page", cluster.secret not in html)

        code, body = http_request(node_a.internal_port, "POST", "/internal/register", cluster.secret,
                                  {"topic": TOPIC, "meta": {"require_token": True}})
        results.require("topic registered", code == 200, f"HTTP {code} {body[:80]}")
        before = {name: rows(page).get(i, {}).get("sockets") for name, i in ids.items()}
        for user, node in ((1, node_b), (2, node_a)):
            ws = WebSocket(node.ws_port, f"/ws?topic={TOPIC}")
            cluster.clients.append(ws)
            ws.send_json({"type": "auth", "token": hex_token(cluster.secret, user, TOPIC)})
            reply = ws.recv_json(5)
            results.require(f"a WebSocket on {node.name} authenticated", reply == {"type": "auth_ok"}, f"{reply}")
        for name, within in (("node-b", 15), ("node-a", 5)):
            how = "through the roster" if name == "node-b" else "at once"
            try:
                wait_until(f"{name}'s socket count to show 1",
                           lambda n=name: rows(page).get(ids[n], {}).get("sockets") == "1", within)
                results.check(f"the socket count of {name} on the page went {before[name]} -> 1 ({how})", True)
            except Failure as error:
                results.check(f"the socket count of {name} on the page changed ({how})", False,
                              f"{error}; shown {rows(page).get(ids[name])}")
        results.check("the cards add up the live nodes' sockets", text(page, "cluster-sockets") == "2",
                      f"{text(page, 'cluster-sockets')!r}, here {text(page, 'sockets')!r}")

        publisher = Publisher(cluster, node_a)
        publisher.start()
        try:
            wait_until("a publish rate on the page",
                       lambda: text(page, "publishes-rate") not in (None, "–", "0.0"), 8)
            results.check("publishes/s and deliveries/s show the publishes", True,
                          f"{text(page, 'publishes-rate')}/s published, {text(page, 'deliveries-rate')}/s delivered")
        except Failure as error:
            results.check("publishes/s and deliveries/s show the publishes", False, str(error))
        note = text(page, "latency-note") or ""
        bars = page.evaluate("document.querySelectorAll('#latency .track').length")
        results.check("the latency histogram shows the publishes", bars == 13 and "publishes" in note,
                      f"{bars} buckets; {note!r}")
        size = screenshot(page, DESKTOP, args.screenshot)
        results.check("full-page screenshot saved", size > 10_000, f"{args.screenshot}, {size} bytes")

        page.call("Emulation.setDeviceMetricsOverride", **PHONE)
        time.sleep(1.2)
        layout = page.evaluate("""({overflow: document.documentElement.scrollWidth - window.innerWidth,
            rows: getComputedStyle(document.querySelector('#nodes tr')).display,
            head: getComputedStyle(document.querySelector('table.nodes thead')).display})""")
        results.check("at phone width nothing scrolls sideways and nodes become cards",
                      layout["overflow"] <= 0 and layout["rows"] == "block" and layout["head"] == "none", f"{layout}")
        if args.phone_screenshot:
            screenshot(page, PHONE, args.phone_screenshot)
        page.call("Emulation.setDeviceMetricsOverride", **DESKTOP)
        publisher.stop.set()
        publisher.join(5)
        results.check("every background publish answered 200", not publisher.errors,
                      f"{publisher.sent} sent; {publisher.errors[:2]}")

        page.evaluate("document.querySelector('form.logout button').click()")
        try:
            wait_until("the login page after logout",
                       lambda: page.evaluate("location.pathname") == "/dashboard"
                       and page.evaluate("!!document.querySelector('input[name=secret]')"), 10)
            page.call("Page.navigate", url=f"{base}/dashboard/live")
            wait_until("the redirect of a logged-out page", lambda: page.evaluate(
                "location.pathname === '/dashboard' && !!document.querySelector('input[name=secret]')"), 10)
            results.check("logout returns to the login page and closes the dashboard", True)
        except Failure as error:
            results.check("logout returns to the login page and closes the dashboard", False, str(error))
    except Exception as error:  # a Failure, or the browser's socket failing: either way a FAIL line
        if not getattr(error, "reported", False):
            results.check("the run went through", False, f"{type(error).__name__}: {error}")
        print("stopped; the last lines of each process's output:", flush=True)
        for proc in cluster.procs:
            print(proc.tail(), flush=True)
    finally:
        protect_cleanup()
        if publisher is not None:
            publisher.stop.set()
        if page is not None:
            page.close()
        cluster.finish(results, args.keep)


def main():
    parser = argparse.ArgumentParser(description="the dashboard in headless Chromium, two nodes, real Redis")
    parser.add_argument("binary", nargs="?", default=os.path.join(REPO, "target", "release", "skywave"))
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser")
                        or "/usr/bin/chromium")
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "/usr/bin/redis-server")
    parser.add_argument("--screenshot", default=os.path.join(REPO, "docs", "dashboard.png"))
    parser.add_argument("--phone-screenshot", help="also save a phone-width screenshot here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory with the logs")
    args = parser.parse_args()
    args.binary = os.path.abspath(args.binary)

    results = Results()
    missing = [f"{what} ({path})" for what, path in
               (("skywave binary", args.binary), ("chromium", args.chromium), ("redis-server", args.redis_server))
               if not (os.path.isfile(path) and os.access(path, os.X_OK))]
    if missing:
        results.check("prerequisites", False, "not found or not executable: " + ", ".join(missing)
                      + " (Debian: apt-get install chromium redis-server; scripts/test installs them)")
    else:
        install_hard_limit(HARD_LIMIT_SECONDS)
        print(f"e2e_dashboard: {args.binary}, {args.chromium}, {args.redis_server}", flush=True)
        run(args, results)
        signal.alarm(0)
    sys.exit(results.summary("e2e_dashboard"))


if __name__ == "__main__":
    main()
