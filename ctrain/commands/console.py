"""``ctrain console url|screenshots DIR``: where the operator console is, and pictures of
its main views taken in a real browser (Debian's chromium driven by Playwright), so a
reviewer can look without running one."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ctrain import client
from ctrain.commands import common

VIEWS = ("windows", "runs", "candidates", "serving")


def console_url(state: dict[str, Any] | None = None) -> str:
    return client.service_url("promoter", state) + "/"


def chromium_path() -> str:
    """The browser binary: ``CTRAIN_CHROMIUM``, else ``chromium`` on the PATH (Debian's
    package; Playwright's own browser download is not used)."""
    path = os.environ.get("CTRAIN_CHROMIUM") or shutil.which("chromium")
    if not path:
        raise RuntimeError(
            "no chromium: install Debian's package (apt-get install chromium) "
            "or set CTRAIN_CHROMIUM to a Chromium binary"
        )
    return path


@contextmanager
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def sign_in(page: Any, url: str, token: str) -> float:
    """Open the console and sign in; returns seconds until the windows heat map showed."""
    t0 = time.perf_counter()
    page.goto(url)
    page.fill("#token", token)
    page.press("#token", "Enter")
    page.wait_for_selector("#app:not([hidden])")
    page.wait_for_selector("#heatmap table.heat, #heatmap .empty", timeout=60_000)
    return time.perf_counter() - t0


def open_view(page: Any, view: str) -> None:
    page.click(f"#tab-{view}")
    ready = {
        "windows": "#heatmap table.heat, #heatmap .empty",
        "runs": "#runs .run, #runs .empty",
        "candidates": "#candidate-card, #candidates .empty",
        "serving": "#stable, #serving .empty",
    }[view]
    page.wait_for_selector(f"#view-{view}:not([hidden]) >> css={ready}", timeout=60_000)


def screenshots(
    out: Path, state: dict[str, Any] | None = None, role: str = "approver"
) -> list[Path]:
    """One PNG per main view (the windows view with the most crossed feature opened)."""
    out.mkdir(parents=True, exist_ok=True)
    url, token = console_url(state), client.token_for(role, state)
    shots: list[Path] = []
    with browser() as b:
        page = b.new_page(viewport={"width": 1400, "height": 1000})
        sign_in(page, url, token)
        # The feature crossed most often, opened at its first crossing.
        rows = page.locator("#heatmap tr[data-feature]")
        counts = [rows.nth(i).locator("td.crossed").count() for i in range(rows.count())]
        if counts and max(counts):
            rows.nth(counts.index(max(counts))).locator("td.crossed").first.click()
            page.wait_for_selector("#feature-card", timeout=60_000)
        for view in VIEWS:
            if view != "windows":
                open_view(page, view)
            path = out / f"console-{view}.png"
            page.screenshot(path=str(path), full_page=view != "candidates")
            shots.append(path)
    return shots


def register(sub: Any) -> None:
    c = sub.add_parser("console", help="the operator console (served by the promoter at /)")
    c.add_argument("action", choices=["url", "screenshots"])
    c.add_argument("dir", nargs="?", default="console-screenshots", help="screenshots: where")
    c.add_argument(
        "--role", default="approver", choices=client.ROLES, help="screenshots: sign in as"
    )
    c.set_defaults(func=run)


def run(args: Any) -> int:

    if args.action == "url":
        common.console.print(console_url())
        return 0
    for path in screenshots(Path(args.dir), role=args.role):
        common.console.print(str(path))
    return 0
