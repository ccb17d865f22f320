"""A real browser for the web pages' tests: Debian's chromium driven by Playwright, and what a team does
in it (signing in), plus axe-core's accessibility check with its findings made readable."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from typing import Any

# Playwright's own browser download is not used (it needs Playwright's CDN): scripts/setup installs
# Debian's chromium, and the tests launch that one.
CHROMIUM = os.environ.get("BBO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
MISSING = None if os.access(CHROMIUM, os.X_OK) else f"no chromium at {CHROMIUM} (scripts/setup installs it)"

# Chromium refuses to run as root with its own sandbox on; containers often have a 64 MB /dev/shm, too
# small for its renderers.
LAUNCH_ARGS = [*(["--no-sandbox"] if os.geteuid() == 0 else []), "--disable-dev-shm-usage"]

# A shared 2-core machine that is also scoring: waits are long, and they end as soon as their condition
# holds.
ACTION_TIMEOUT_MS = 30_000
SEVERE = ("serious", "critical")


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless chromium (Playwright's sync API) until the block ends."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def browsing(browser: Any, base_url: str, **options: Any) -> Iterator[Any]:
    """A fresh browser context (its own cookies: one person) and a page in it."""
    from playwright.sync_api import expect

    expect.set_options(timeout=ACTION_TIMEOUT_MS)
    context = browser.new_context(base_url=base_url, **options)
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    context.set_default_navigation_timeout(ACTION_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def sign_in(page: Any, token: str) -> None:
    """Sign in through the form, as a team does: the token typed into the sign-in page."""
    from playwright.sync_api import expect

    page.goto("/signin")
    page.get_by_label("Team token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/team$"))


def severe_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's violations of impact serious or critical on the page as it is now."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    return [v for v in results.response["violations"] if v.get("impact") in SEVERE]


def describe(violations: list[dict[str, Any]], nodes: int = 5) -> str:
    """One paragraph per violation: the rule, its impact and help, and the first few offending elements."""
    lines = []
    for violation in violations:
        lines.append(
            f"{violation['id']} ({violation['impact']}): {violation['help']} [{violation['helpUrl']}]"
        )
        for node in violation["nodes"][:nodes]:
            target = " ".join(str(part) for part in node["target"])
            lines.append(f"    {target}: {node.get('failureSummary', '').replace(chr(10), ' ')}")
            lines.append(f"      {node['html'][:200]}")
        if len(violation["nodes"]) > nodes:
            lines.append(f"    ... and {len(violation['nodes']) - nodes} more")
    return "\n".join(lines)
