#!/usr/bin/env python3
"""Renders nginx/skywave.conf.template the way the nginx image's envsubst does.

Used by the deployment tests (so they run the repository's nginx config, not a
copy of it) and to regenerate nginx/skywave.conf, the template rendered for a
single node on the same host:

    python3 tests/deploy/nginx_template.py > nginx/skywave.conf

Options: --listen ADDR (default 80), --upstream HOST:PORT (repeatable, default
127.0.0.1:9000). Python 3 standard library only.
"""

import argparse
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATE = os.path.join(REPO, "nginx", "skywave.conf.template")
RENDERED = os.path.join(REPO, "nginx", "skywave.conf")

# The values nginx/skywave.conf is rendered with (one node on the same host).
HOST_LISTEN = "80"
HOST_UPSTREAMS = ["127.0.0.1:9000"]
# The parameters every upstream server gets (compose.yaml writes the same).
SERVER_PARAMS = "max_fails=3 fail_timeout=10s"

PLACEHOLDERS = ("SKYWAVE_LISTEN", "SKYWAVE_UPSTREAMS")


def upstream_servers(addresses, params=SERVER_PARAMS):
    """The SKYWAVE_UPSTREAMS value for these HOST:PORT addresses (one line)."""
    return " ".join(f"server {address} {params};" for address in addresses)


def render(text, values):
    """Substitutes $NAME and ${NAME} for the names in `values`, as envsubst
    does when given exactly those names; every other $ is left alone (nginx
    variables). Fails if the template uses a SKYWAVE_* name not given."""
    used = set(re.findall(r"\$\{?(SKYWAVE_[A-Z0-9_]+)", text))
    missing = used - set(values)
    if missing:
        raise ValueError(f"template placeholders without a value: {sorted(missing)}")
    for name, value in values.items():
        if "\n" in value:
            raise ValueError(f"{name} must be one line (it is also substituted in comments)")
        text = re.sub(r"\$\{" + name + r"\}|\$" + name + r"(?![A-Za-z0-9_])", lambda _m: value, text)
    return text


def render_file(listen, upstreams, template=TEMPLATE):
    with open(template, encoding="utf-8") as f:
        text = f.read()
    return render(text, {"SKYWAVE_LISTEN": listen, "SKYWAVE_UPSTREAMS": upstream_servers(upstreams)})


def host_config():
    """What nginx/skywave.conf must contain, byte for byte."""
    args = f"--listen {HOST_LISTEN} " + " ".join(f"--upstream {u}" for u in HOST_UPSTREAMS)
    header = (
        "# GENERATED from nginx/skywave.conf.template for nginx on the same host as one\n"
        "# skywave node (skywave's ws_port 9000, nginx on port 80). Do not edit by hand:\n"
        "# change the template and regenerate with\n"
        f"#   python3 tests/deploy/nginx_template.py {args} > nginx/skywave.conf\n"
        "# More nodes: add one \"server HOST:9000 max_fails=3 fail_timeout=10s;\" per node\n"
        "# to the upstream block (after copying this file out of the repository).\n"
        "# Install: /etc/nginx/conf.d/skywave.conf (it belongs inside http { }).\n\n"
    )
    return header + render_file(HOST_LISTEN, HOST_UPSTREAMS)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default=HOST_LISTEN)
    parser.add_argument("--upstream", action="append", default=None, metavar="HOST:PORT")
    args = parser.parse_args()
    upstreams = args.upstream or HOST_UPSTREAMS
    if args.listen == HOST_LISTEN and upstreams == HOST_UPSTREAMS:
        sys.stdout.write(host_config())
    else:
        sys.stdout.write(render_file(args.listen, upstreams))


if __name__ == "__main__":
    main()
