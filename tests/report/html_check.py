"""Checks a report.html: well-formed (every element closed in order, per
html.parser), self-contained (no external references, no scripts), and,
when Chromium is installed (Debian package `chromium`), that it renders
headless with exit 0 and the expected text in the rendered DOM. Also takes
a screenshot to look at."""
import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Balance(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.tags = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append((tag, self.getpos()))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1][0] != tag:
            self.errors.append(f"line {self.getpos()[0]}: </{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()


def well_formed(path):
    """Returns a list of problems (empty when fine)."""
    text = open(path, encoding="utf-8").read()
    p = Balance()
    p.feed(text)
    p.close()
    problems = list(p.errors)
    if p.stack:
        problems.append(f"unclosed: {p.stack[:5]}")
    for tag, attrs in p.tags:
        if tag == "script":
            problems.append("contains a <script> element")
        for k in ("src", "href"):
            v = attrs.get(k) or ""
            if v and not v.startswith("#") and not v.startswith("data:"):
                problems.append(f"external reference <{tag} {k}={v!r}>")
        if tag == "link":
            problems.append("contains a <link> element")
    if "@import" in text or "url(" in text:
        problems.append("CSS pulls an external resource")
    return problems


def chromium_binary():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def render(path, expect, screenshot=None):
    """Returns (problems, skipped_reason)."""
    exe = chromium_binary()
    if not exe:
        return [], "chromium is not installed (apt-get install chromium)"
    problems = []
    with tempfile.TemporaryDirectory() as profile:
        base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", "--no-first-run", "--disable-extensions"]
        url = "file://" + os.path.abspath(path)
        p = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            problems.append(f"chromium --dump-dom exit {p.returncode}: {p.stderr[-500:]}")
        for text in expect:
            if text not in p.stdout:
                problems.append(f"rendered DOM lacks {text!r}")
        if screenshot:
            p = subprocess.run(base + [f"--screenshot={screenshot}", "--window-size=1280,5200",
                                       "--hide-scrollbars", url], capture_output=True, text=True, timeout=120)
            if p.returncode != 0 or not os.path.exists(screenshot):
                problems.append(f"chromium --screenshot exit {p.returncode}: {p.stderr[-500:]}")
    return problems, None
