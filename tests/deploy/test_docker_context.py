"""The image's build context: `.dockerignore` at the repository root (the context of
deploy/Dockerfile) keeps secrets, the virtualenv, git and local state out of `COPY . .`.

Docker's matching rules are re-implemented here (moby/patternmatcher: patterns are cleaned and
relative to the root, `*` and `?` stay inside one path segment, `**` spans any number, a
pattern that matches a directory excludes everything below it, `!` re-includes, the last
matching pattern wins) and applied to a walk of this very checkout, which has a `.venv`, a
`.git` and whatever local state tests and demos left behind."""
from __future__ import annotations

import os
import posixpath
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.deploy

#: Paths that must never reach the image, each standing for a class of files.
MUST_BE_EXCLUDED = [
    ".git/HEAD", ".git/config",
    ".venv/bin/python", ".venv/lib/python3.11/site-packages/django/__init__.py",
    "deploy/zlh.env", "zlh.env", "prod.env", "deploy/other.env", "a/b/c/staging.env",
    ".env", "deploy/.env",
    ".devstack/endpoints.json", ".devstack/logs/api.log",
    ".demo/demo.pid",
    "artifacts/screenshots/admin.png", "artifacts/chaos/seed-1.txt",
    "__pycache__/x.cpython-311.pyc", "lifecycle/__pycache__/admin.cpython-311.pyc",
    "lifecycle/worker/steps/__pycache__/payload.cpython-311.pyc",
    "staticfiles/admin/css/base.css",
]
#: What the image needs to run.
MUST_BE_INCLUDED = [
    "manage.py", "requirements.txt", "constraints.txt", "zlh/settings.py",
    "zlh/settings_production.py", "zlh/wsgi.py", "zlh/celery.py", "deploy/env.example",
    "lifecycle/admin.py", "lifecycle/migrations/0001_initial.py", "reconciler/admin.py",
    "notifications/admin.py", "edge/services.py", "core/redaction.py",
]


def _pattern_regex(pattern: str) -> re.Pattern:
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i:i + 2] == "**":
                i += 2
                if pattern[i:i + 1] == "/":  # "**/" : zero or more whole segments
                    out += "(?:.*/)?"
                    i += 1
                else:
                    out += ".*"
                continue
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            end = pattern.index("]", i + 1)
            body = pattern[i + 1:end]
            out += "[" + ("^" + body[1:] if body.startswith("^") else re.escape(body)) + "]"
            i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


def load_dockerignore(path: Path = REPO / ".dockerignore") -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if negate:
            line = line[1:].strip()
        line = posixpath.normpath(line).lstrip("/")
        rules.append((negate, _pattern_regex(line)))
    return rules


def excluded(rules, rel: str) -> bool:
    """Docker's answer for one path: a rule matches the path or any of its parent folders."""
    parts = rel.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            result = not negate
    return result


def build_context(rules) -> list[str]:
    """Every file of this checkout `COPY . .` would copy."""
    files = []
    for root, dirs, names in os.walk(REPO):
        rel_root = os.path.relpath(root, REPO).replace(os.sep, "/")
        rel_root = "" if rel_root == "." else rel_root + "/"
        dirs[:] = [d for d in dirs if not excluded(rules, rel_root + d)]
        files += [rel_root + n for n in names if not excluded(rules, rel_root + n)]
    return files


def dockerfile_copy_sources() -> list[str]:
    sources = []
    text = re.sub(r"\\\n", " ", (REPO / "deploy" / "Dockerfile").read_text())
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        words = shlex.split(line)
        if words and words[0].upper() in ("COPY", "ADD"):
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def test_the_matcher_follows_dockers_rules():
    rules = [(False, _pattern_regex("*.env")), (False, _pattern_regex("**/__pycache__")),
             (False, _pattern_regex("logs")), (True, _pattern_regex("logs/keep.txt"))]
    assert excluded(rules, "a.env") and not excluded(rules, "deploy/a.env")  # root only
    assert excluded(rules, "__pycache__/x.pyc") and excluded(rules, "a/b/__pycache__/x.pyc")
    assert excluded(rules, "logs/x.txt") and not excluded(rules, "logs/keep.txt")
    assert not excluded(rules, "env.example") and not excluded(rules, "deploy/env.example")


def test_dockerignore_excludes_secrets_venv_git_and_local_state():
    rules = load_dockerignore()
    leaks = [p for p in MUST_BE_EXCLUDED if not excluded(rules, p)]
    assert leaks == [], f".dockerignore lets these into the image: {leaks}"
    missing = [p for p in MUST_BE_INCLUDED if excluded(rules, p)]
    assert missing == [], f".dockerignore leaves out what the image needs: {missing}"


def test_dockerfile_copy_of_this_checkout_carries_no_secret_or_local_state(tmp_path):
    rules = load_dockerignore()
    sources = dockerfile_copy_sources()
    assert "." in sources and {"requirements.txt", "constraints.txt"} <= set(sources)
    for src in sources:  # Docker refuses a COPY whose named source is ignored
        if src != ".":
            assert not excluded(rules, src), src
    context = build_context(rules)
    assert {"manage.py", "zlh/settings.py", "deploy/Dockerfile", "deploy/env.example"} <= \
        set(context)
    forbidden = re.compile(r"(^|/)(\.git|\.venv|\.devstack|\.demo|artifacts|staticfiles|"
                           r"__pycache__)(/|$)|\.env$|(^|/)zlh\.env$|\.pyc$")
    bad = [p for p in context if forbidden.search(p)]
    assert bad == [], f"COPY . . would put these into the image: {bad[:20]}"
    # The checkout really has such things, so the walk proves the rules bite.
    assert (REPO / ".venv").is_dir() and (REPO / ".git").exists()
