"""Renders haproxy/skywave.cfg for a test: the repository's file line for line,
with only its addresses and runtime paths replaced.

  - the frontend's `bind` becomes the test's listen address;
  - the backend's `server` lines become one primary and one fallback line per
    test node, each keeping the parameters the file gives its first primary
    (`check`, ...) and its first backup (`backup`) server;
  - the stats listener's `bind` becomes a loopback port of the test;
  - `stats socket` moves into the test's directory; `chroot`, `user` and
    `group` are kept when running as root with the haproxy user and the
    chroot directory present (Debian's package makes both), dropped otherwise.

Every other line (timeouts, balance, checks, ACLs) is the file's own. Python 3
standard library only.
"""

import os
import pwd
import re

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CONFIG = os.path.join(REPO, "haproxy", "skywave.cfg")

SECTION = re.compile(r"^(global|defaults|frontend|backend|listen|peers|resolvers|userlist|program)\b\s*(\S*)")


def sections(text):
    """[(kind, name, [lines])] in file order; the lines include the section's
    header line."""
    out = []
    for line in text.splitlines():
        match = SECTION.match(line)
        if match:
            out.append((match.group(1), match.group(2), [line]))
        elif out:
            out[-1][2].append(line)
        else:
            out.append(("", "", [line]))
    return out


def directive(line):
    """The words of a config line without its comment ([] for blank/comment)."""
    return line.split("#", 1)[0].split()


def server_lines(text, backend="skywave"):
    """[(name, address, params, is_backup)] of the backend's server lines."""
    for kind, name, lines in sections(text):
        if kind == "backend" and name == backend:
            found = []
            for line in lines:
                words = directive(line)
                if words[:1] == ["server"] and len(words) >= 3:
                    found.append((words[1], words[2], words[3:], "backup" in words[3:]))
            return found
    raise ValueError(f"no 'backend {backend}' section")


def can_drop_privileges(chroot):
    try:
        pwd.getpwnam("haproxy")
    except KeyError:
        return False
    return os.geteuid() == 0 and os.path.isdir(chroot)


def render(text, listen, nodes, stats_listen, runtime_dir, notes=None):
    """`nodes`: [(name, "HOST:PORT")]. `notes` (a list) collects what was
    changed besides addresses."""
    notes = notes if notes is not None else []
    out = []
    for kind, name, lines in sections(text):
        if kind == "global":
            kept = []
            chroot = next((directive(l)[1] for l in lines if directive(l)[:1] == ["chroot"]), None)
            privileged = chroot is None or can_drop_privileges(chroot)
            for line in lines:
                words = directive(line)
                if words[:2] == ["stats", "socket"]:
                    indent = line[:len(line) - len(line.lstrip())]
                    kept.append(f"{indent}stats socket {runtime_dir}/admin.sock " + " ".join(words[3:]))
                elif words[:1] in (["chroot"], ["user"], ["group"]) and not privileged:
                    notes.append(f"dropped '{' '.join(words)}' (not root, or no haproxy user / chroot directory)")
                else:
                    kept.append(line)
            lines = kept
        elif (kind, name) in (("frontend", "skywave"), ("listen", "stats")):
            address = listen if kind == "frontend" else stats_listen
            binds = [i for i, l in enumerate(lines) if directive(l)[:1] == ["bind"]]
            if len(binds) != 1:
                raise ValueError(f"{kind} {name}: expected one bind line, found {len(binds)}")
            line = lines[binds[0]]
            indent = line[:len(line) - len(line.lstrip())]
            lines = list(lines)
            lines[binds[0]] = f"{indent}bind {address}"
        elif (kind, name) == ("backend", "skywave"):
            servers = server_lines("\n".join(lines))
            primary = next((s for s in servers if not s[3]), None)
            backup = next((s for s in servers if s[3]), None)
            if primary is None:
                raise ValueError("backend skywave has no primary server line")
            rendered = []
            for line in lines:
                words = directive(line)
                indent = line[:len(line) - len(line.lstrip())]
                if words[:1] == ["server"]:
                    is_backup = "backup" in words[3:]
                    first = (primary if not is_backup else backup)
                    if words[1] == first[0]:  # replaced at the first line of its kind
                        suffix = "-fallback" if is_backup else ""
                        for node, address in nodes:
                            rendered.append(f"{indent}server {node}{suffix} {address} " + " ".join(first[2]))
                    continue
                rendered.append(line)
            lines = rendered
        out.extend(lines)
    return "\n".join(out) + "\n"


def render_file(listen, nodes, stats_listen, runtime_dir, notes=None, path=CONFIG):
    with open(path, encoding="utf-8") as f:
        return render(f.read(), listen, nodes, stats_listen, runtime_dir, notes)
