"""Headless Chromium driven over the Chrome DevTools Protocol, for the
browser tests of tests/deploy: start it on a free loopback port with a
throw-away profile, resolving no host name and doing no background
networking, and talk to one page target over its WebSocket (the small client
of e2e_nginx). Python 3 standard library only.
"""

import json
import os
import time
import urllib.request

from harness import LOOPBACK, Process, WebSocket, wait_until
from results import Failure

# The browser's origin for its DevTools socket (e2e_nginx's client sends it).
DEVTOOLS_ORIGIN = "http://localhost"


class DevTools:
    """One page target over the DevTools Protocol: calls by id, events kept aside."""

    def __init__(self, port, path):
        self.ws = WebSocket(port, path)
        self.next_id = 0

    def call(self, method, timeout=10.0, **params):
        self.next_id += 1
        ident = self.next_id
        self.ws.send_json({"id": ident, "method": method, "params": params})
        deadline = time.monotonic() + timeout
        while True:
            message = self.ws.recv_json(max(0.1, deadline - time.monotonic()))
            if message.get("id") == ident:
                if "error" in message:
                    raise Failure(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression, timeout=10.0):
        # A page that navigates (a form posted, a redirect) drops the
        # evaluation it was running: Chromium answers "Inspected target
        # navigated or closed". Ask again on the next document, bounded.
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                                   awaitPromise=True)
                break
            except Failure as error:
                if "navigated or closed" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        if "exceptionDetails" in result:
            raise Failure(f"page script failed: {result['exceptionDetails'].get('text')}: {expression[:80]}")
        return result.get("result", {}).get("value")

    def close(self):
        self.ws.close()


def start_chromium(args, tmp):
    profile = os.path.join(tmp, "chromium-profile")
    argv = [
        args.chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
        f"--remote-allow-origins={DEVTOOLS_ORIGIN}", "--no-first-run", "--no-default-browser-check",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-default-apps", "--disable-extensions", "--no-pings", "--metrics-recording-only",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--hide-scrollbars",
        "--window-size=1280,900", "about:blank",
    ]
    browser = Process("chromium", argv, os.path.join(tmp, "chromium.log"))
    active = os.path.join(profile, "DevToolsActivePort")

    def port():
        if not browser.alive():
            raise Failure(f"chromium exited with {browser.proc.returncode}:\n{browser.tail()}")
        with open(active) as f:
            return int(f.readline())
    browser.devtools_port = wait_until("chromium's DevToolsActivePort", port, 30)
    return browser


def open_page(browser):
    def page_target():
        with urllib.request.urlopen(f"http://{LOOPBACK}:{browser.devtools_port}/json/list", timeout=5) as r:
            targets = json.load(r)
        return next((t for t in targets if t.get("type") == "page"), None)
    target = wait_until("a page target", page_target, 10)
    path = "/" + target["webSocketDebuggerUrl"].split("/", 3)[3]
    return DevTools(browser.devtools_port, path)
