"""The operator console in a real browser (Debian's chromium through Playwright) on the
whole loop: the demo's stack, the bundled taxi trips, a real retraining.

A wrong and an expired token get a clear message; a viewer sees the crossed
``payment_type`` skew cells but no approve button, and the API refuses the viewer
anyway; an approver approves the retrained candidate from the page with the keyboard
and the page shows ``stable`` moving; a rollback from the page moves it back. The main
views are written as screenshots (``CTRAIN_TEST_ARTIFACTS``, else the test's tmp dir).
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ctrain import client
from ctrain.commands.console import browser, console_url, open_view, screenshots, sign_in
from ctrain.demo import Demo, DemoOptions
from shared.events import ModelCandidate

pytestmark = pytest.mark.e2e
# Read at import: the suite's autouse fixture clears CTRAIN_* variables for each test.
ARTIFACTS = os.environ.get("CTRAIN_TEST_ARTIFACTS")


class BrowserThread:
    """One page in a thread of its own: Playwright's sync API runs an event loop in its
    thread, and the demo (which calls the operator) uses asyncio.run in the main one."""

    def __init__(self) -> None:
        self.jobs: queue.Queue[Callable[[Any], Any] | None] = queue.Queue()
        self.results: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with browser() as b:
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            while (job := self.jobs.get()) is not None:
                try:
                    self.results.put((True, job(page)))
                except BaseException as e:  # noqa: BLE001 (re-raised in the test's thread)
                    self.results.put((False, e))

    def __call__(self, job: Callable[[Any], Any]) -> Any:
        self.jobs.put(job)
        ok, value = self.results.get(timeout=600)
        if not ok:
            raise value
        return value

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=60)


def tokens(state: dict[str, Any]) -> dict[str, str]:
    book = json.loads(Path(state["tokens_file"]).read_text())
    return {v["role"]: k for k, v in book.items()}


@pytest.mark.timeout(1500)
def test_the_console_shows_the_loop_and_takes_the_decisions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CTRAIN_DEV_STATE_DIR", str(tmp_path / "dev"))
    out = Path(ARTIFACTS or tmp_path) / "console"
    seen: dict[str, Any] = {}

    web = BrowserThread()
    try:

        def operator(cand: ModelCandidate, state: dict[str, Any]) -> bool:
            pc = client.promoter("viewer", state)
            try:
                d.await_pending(pc, cand.candidate_id)
            finally:
                pc.close()
            return bool(web(lambda page: decide(page, cand, state)))

        def decide(page: Any, cand: ModelCandidate, state: dict[str, Any]) -> bool:
            url, tok = console_url(state), tokens(state)
            # A wrong token: refused with the promoter's reason, nothing else shown.
            page.goto(url)
            page.fill("#token", "not-a-token")
            page.press("#token", "Enter")
            page.wait_for_selector("#message:not([hidden])")
            assert "unknown bearer token" in page.inner_text("#message")
            assert page.locator("#app").is_hidden()
            # A viewer: the heat map's crossed payment_type skew cells, no approve button.
            seen["load_s"] = sign_in(page, url, tok["viewer"])
            crossed = page.locator("#heatmap tr[data-feature=payment_type] td.crossed")
            assert crossed.count() >= 1
            label = crossed.first.get_attribute("aria-label") or ""
            assert label.startswith("payment_type skew linf") and " > " in label, label
            crossed.first.click()
            page.wait_for_selector("#feature-card svg")
            assert "payment_type in period-" in page.inner_text("#feature-card")
            open_view(page, "candidates")
            page.click(f"text={cand.candidate_id}")
            page.wait_for_selector(f"#candidate-card[data-candidate={cand.candidate_id}]")
            page.wait_for_selector("#viewer-note")
            assert page.locator("#approve").count() == 0
            # ... and the API refuses the viewer even when the page is bypassed.
            status = page.evaluate(
                """async ([cid, t]) => (await fetch(`/v1/candidates/${cid}/approve`, {method: "POST",
                  headers: {Authorization: `Bearer ${t}`, "Content-Type": "application/json"},
                  body: JSON.stringify({reason: "viewer tries"})})).status""",
                [cand.candidate_id, tok["viewer"]],
            )
            assert status == 403
            open_view(page, "runs")
            assert page.locator("#runs .run").count() >= 1
            # An approver approves with the keyboard (reason typed, Tab to the button, Enter).
            page.click("#signout")
            sign_in(page, url, tok["approver"])
            open_view(page, "candidates")
            page.click(f"text={cand.candidate_id}")
            page.wait_for_selector("#approve")
            page.fill("#decision-reason", "skew confirmed in the console")
            page.focus("#decision-reason")
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.id") == "approve"
            page.keyboard.press("Enter")
            page.wait_for_selector("#message.info")
            assert "approved" in page.inner_text("#message")
            seen["approved"] = cand.candidate_id
            return True

        d = Demo(DemoOptions(speedup=0, keep=False, operator=operator), view=lambda m: None)
        try:
            d.run()
            assert seen.get("approved"), "the operator was never asked"
            state = d.state

            def roll_back(page: Any) -> None:
                # The page shows stable moving to the approved version (live, no reload).
                open_view(page, "serving")
                # (wait_for_selector, not wait_for_function: the page's CSP forbids eval)
                page.wait_for_selector('#stable-version:text-is("2")', timeout=60_000)
                # A rollback from the page: stable goes back to version 1.
                page.fill("#rollback-reason", "rolled back from the console")
                page.click("#rollback-button")
                page.wait_for_selector('#stable-version:text-is("1")', timeout=120_000)
                page.wait_for_selector("#message.info")
                assert "rolled back" in page.inner_text("#message")

            web(roll_back)
            web.close()
            pc = client.promoter("viewer", state)
            try:
                assert pc.model("taxi")["labels"]["stable"] == 1
                audit = pc.audit(50)
            finally:
                pc.close()
            # No token ever reached a URL or a log line.
            logs = "".join(
                Path(p["log"]).read_text(errors="replace")
                for p in state["procs"]
                if p.get("log") and Path(p["log"]).is_file()
            )
            assert not [t for t in tokens(state).values() if t in logs]
            reasons = {e["reason"] for e in audit}
            assert "skew confirmed in the console" in reasons
            assert "rolled back from the console" in reasons
            shots = screenshots(out, state)
            assert [p.name for p in shots] == [
                "console-windows.png",
                "console-runs.png",
                "console-candidates.png",
                "console-serving.png",
            ]
            assert all(p.stat().st_size > 20_000 for p in shots)
            print(f"console load {seen['load_s']:.2f}s; screenshots in {out}")
        finally:
            d.opts.keep = False
            d.stop()
    finally:
        web.close()
