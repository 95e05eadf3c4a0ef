"""Browser test: notebook 04 in a real JupyterLab, driven by headless Chromium through Playwright.

What a researcher does by hand: open 04_ltm_routing.ipynb in JupyterLab, Run All, look at the plots,
click a token in the probe widget and read its memory hits and predictions. This test does exactly
that on smoke-sized artefacts (prepared in a tmp REVENA_HOME), so it catches what papermill and
nbval cannot: a widget or plotly front-end extension missing from the environment, a figure that
renders empty, a click handler that fails silently. Screenshots go to screenshots/ (git-ignored).

    .venv/bin/pytest tests/test_browser.py -m slow
"""

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from browser_helpers import (
    CHROMIUM,
    JS_TOKEN_INDEX,
    format_cell_report,
    jupyter_lab,
    launch_chromium,
    rendered_plotly_figures,
    run_all_cells,
    wait_notebook_ready,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "notebooks/04_ltm_routing.ipynb"
SCREENSHOTS_DIR = REPO_ROOT / "screenshots"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

pytestmark = pytest.mark.slow


def _require_browser():
    """Skip on a workstation without Debian's chromium; in CI (CI=true) a missing browser is a failure."""
    problems = []
    if not Path(CHROMIUM).exists():
        problems.append(f"{CHROMIUM} is missing (install it: apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("the Python package playwright is missing (pip install -e '.[dev]')")
    if problems:
        reason = "browser test cannot run: " + "; ".join(problems)
        if IN_CI:
            pytest.fail(reason + " [CI=true, so this is a failure, not a skip]")
        pytest.skip(reason)


@pytest.fixture(scope="module", autouse=True)
def browser_available():
    """Checked before the (slow) artefacts are prepared, so a skip costs nothing."""
    _require_browser()


def _run(cmd, env, what):
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"{what} failed (exit {result.returncode}): {' '.join(map(str, cmd))}\n"
                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


@pytest.fixture(scope="module")
def smoke_artefacts(tmp_path_factory):
    """A REVENA_HOME with the smoke data and the trained smoke with-LTM arm: what notebook 04 reads.

    Made with the project's own CLIs (what notebooks 01 and 03 call); 04 never reads the baseline, so it
    is not trained here.
    """
    home = tmp_path_factory.mktemp("browser_home")
    env = dict(os.environ, REVENA_HOME=str(home))
    py = sys.executable
    started = time.monotonic()
    _run([py, "-m", "revena_lib.prepare_data", "--preset", "smoke", "--source", "embedded"], env, "prepare_data")
    _run([py, "-m", "revena_lib.train", "--preset", "smoke", "--with-ltm"], env, "train --with-ltm")
    print(f"[browser test] smoke artefacts prepared in {time.monotonic() - started:.1f} s")
    return home


@pytest.fixture
def lab(smoke_artefacts, tmp_path):
    """JupyterLab serving this checkout, its kernels seeing the smoke artefacts; stopped even on failure."""
    with jupyter_lab(root_dir=REPO_ROOT, work_dir=tmp_path / "lab",
                     env={"REVENA_HOME": str(smoke_artefacts)}) as server:
        yield server


@pytest.fixture
def page():
    """A headless Chromium page; the browser is closed even when the test fails."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            yield context.new_page()
        finally:
            browser.close()


def _wait_for_detail_change(page, detail, before: str, timeout_s: float = 20.0) -> str:
    """The detail panel's text once it differs from `before` and shows hits and predictions."""
    deadline = time.monotonic() + timeout_s
    text = before
    while time.monotonic() < deadline:
        text = detail.inner_text()
        if text != before and "Memory hits" in text and "Top predictions" in text:
            return text
        page.wait_for_timeout(200)
    raise AssertionError(
        f"clicking a .revena-token did not fill .revena-detail with 'Memory hits' and 'Top predictions' "
        f"within {timeout_s:.0f} s (the click handler failed or is not wired).\n"
        f"detail before the click: {before!r}\ndetail now: {text!r}")


def _pick_tokens(tokens, n: int = 2) -> list[tuple]:
    """n tokens from the middle of the probe as (locator, index, label).

    Prefers plain-word labels (so the test can look for the text in the panel), and among those, tokens
    whose tooltip says they hit the memory (a more telling screenshot; a smoke model may have none).
    One evaluate for all tokens: a round trip per token costs seconds on a 256-token probe.
    """
    infos = tokens.evaluate_all(f"""els => els.map(el => ({{
        index: ({JS_TOKEN_INDEX})(el), label: el.innerText.trim(), title: el.getAttribute('title') || ''}}))""")
    count = len(infos)
    assert count >= 3, f"the probe shows only {count} .revena-token elements"
    missing = [i for i, info in enumerate(infos) if info["index"] is None]
    assert not missing, f"{len(missing)} .revena-token elements have neither data-index nor a revena-token-<i> class"
    order = list(range(count // 2, count)) + list(range(count // 2))  # middle first
    candidates = [(i, infos[i]) for i in order if infos[i]["index"] > 0]
    candidates.sort(key=lambda c: (not c[1]["label"].isalnum(), "memory hit" not in c[1]["title"]))  # stable
    return [(tokens.nth(i), info["index"], info["label"]) for i, info in candidates[:n]]

def _screenshot(page, name: str, scroll_to=None) -> Path:
    SCREENSHOTS_DIR.mkdir(exist_ok=True)
    if scroll_to is not None:
        scroll_to.scroll_into_view_if_needed()
    path = SCREENSHOTS_DIR / name
    page.screenshot(path=str(path))
    return path


def exercise_probe_notebook(page, lab_server, notebook: str, run_timeout_s: float = 150.0) -> None:
    """Open `notebook`, Run All, check its plotly figures and click through its probe widget."""
    started = time.monotonic()

    def phase(name):  # timings, shown with -s or in a failure's captured output
        print(f"[browser test] {time.monotonic() - started:6.1f} s  {name}")

    console_errors = []
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)

    page.goto(lab_server.notebook_url(notebook), wait_until="domcontentloaded")
    wait_notebook_ready(page)
    phase("JupyterLab loaded the notebook, kernel idle")

    report = run_all_cells(page, timeout_s=run_timeout_s)
    phase("Run All Cells finished")
    failed = [c for c in report if c["errors"] or c["execution_count"] is None]
    assert not failed, f"{notebook}: cells failed or did not run under Run All:\n{format_cell_report(report)}"

    # The probe widget. If ipywidgets' JupyterLab extension is missing, the output is only the
    # widget's text repr (or "Error displaying widget"), and no .revena-token ever appears.
    tokens = page.locator(".revena-token")
    try:
        try:
            tokens.first.wait_for(state="visible", timeout=60_000)
        except Exception:
            # Under a loaded CPU, JupyterLab can lose the race between a widget view and its children's models
            # ("Could not create child view" in the console) and leave the output empty. One more Run All
            # re-creates the views; a missing extension or a broken widget fails the second time too.
            phase("no widget view after 60 s; running all cells once more")
            report = run_all_cells(page, timeout_s=run_timeout_s)
            tokens.first.wait_for(state="visible", timeout=60_000)
    except Exception as exc:
        widget_cells = [c for c in report if "application/vnd.jupyter.widget-view+json" in c["mime_types"]]
        raise AssertionError(
            f"{notebook}: no visible .revena-token after Run All. Cells with a widget view: "
            f"{[c['index'] for c in widget_cells]} (none means the notebook displayed no ipywidget; some means "
            f"JupyterLab did not render it: is jupyterlab_widgets installed in the environment?). "
            f"Output texts: {page.locator('.jp-OutputArea-output').all_inner_texts()[-5:]!r}. "
            f"Browser console errors: {console_errors[-5:]!r}") from exc
    _screenshot(page, "04_after_run_all.png", scroll_to=tokens.first)
    phase("probe widget rendered")

    # Plotly figures: drawn, with size and an SVG, not an empty output or a bare mimebundle.
    figures = rendered_plotly_figures(page)
    plotly_cells = [c["index"] for c in report if "application/vnd.plotly.v1+json" in c["mime_types"]]
    assert figures, (f"{notebook}: no rendered plotly figure (.js-plotly-plot) in JupyterLab; cells with a plotly "
                     f"mimebundle: {plotly_cells} (some means jupyterlab-plotly did not render them)")
    for figure in figures:
        assert figure["width"] > 0 and figure["height"] > 0 and figure["svgs"] > 0 and figure["traces"] > 0, \
            f"{notebook}: a plotly figure rendered empty (size, SVG layers, drawn traces): {figure}"
    first_plot = page.locator(".jp-OutputArea .js-plotly-plot").first
    first_plot.scroll_into_view_if_needed()
    first_plot.screenshot(path=str(SCREENSHOTS_DIR / "04_plot.png"))
    phase(f"{len(figures)} plotly figures rendered: {figures}")

    # Click two different tokens (never position 0: it has no prediction): each click must show that
    # token's hits and predictions, name the token, and replace what the previous click showed.
    detail = page.locator(".revena-detail").first
    assert detail.count() == 1, f"{notebook}: the probe widget has no .revena-detail panel"
    # The tokens of the same widget as that panel (a notebook may show more than one probe).
    probe = detail.locator("xpath=ancestor::*[.//*[contains(concat(' ', normalize-space(@class), ' '), "
                           "' revena-token ')]][1]")
    picks = _pick_tokens(probe.locator(".revena-token"))
    text = detail.inner_text()
    for token, index, label in picks:
        token.scroll_into_view_if_needed()
        token.click()
        text = _wait_for_detail_change(page, detail, before=text)
        assert re.search(rf"(?<!\d){index}(?!\d)", text), \
            f"{notebook}: after clicking token {index} ({label!r}), the detail panel does not name its position:\n{text!r}"
        if label.isalnum():
            assert label in text, \
                f"{notebook}: after clicking token {index} ({label!r}), the detail panel does not show its text:\n{text!r}"
    _screenshot(page, "04_after_click.png", scroll_to=detail)
    phase("two token clicks checked")


def test_probe_notebook_in_jupyterlab(lab, page):
    notebook_file = REPO_ROOT / NOTEBOOK
    assert notebook_file.exists(), f"{NOTEBOOK} is missing"
    digest_before = hashlib.sha256(notebook_file.read_bytes()).hexdigest()
    checkpoints_before = (notebook_file.parent / ".ipynb_checkpoints").exists()
    try:
        exercise_probe_notebook(page, lab, NOTEBOOK)
    except BaseException:
        try:
            _screenshot(page, "04_failure.png")
        except Exception:
            pass
        print("JupyterLab server log (tail):\n" + lab.log_tail())
        raise
    # Run All must never write outputs into the committed notebook (autosave is off in the test server),
    # and the session must leave no checkpoint folder in the checkout.
    assert hashlib.sha256(notebook_file.read_bytes()).hexdigest() == digest_before, \
        f"{NOTEBOOK} was modified on disk by the browser session"
    assert not (notebook_file.parent / ".ipynb_checkpoints").exists() or checkpoints_before, \
        "the browser session left notebooks/.ipynb_checkpoints/ in the checkout"


SESSIONS_NOTEBOOK = "notebooks/08_sessions.ipynb"


def _summary_value(summary, key: str) -> int:
    match = re.search(rf"{key}\s+(\d+)", summary.inner_text())
    assert match, f"the state summary does not show {key}: {summary.inner_text()!r}"
    return int(match.group(1))


def _wait_summary(page, summary, key: str, accept, what: str, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = _summary_value(summary, key)
        if accept(value):
            return value
        page.wait_for_timeout(200)
    status = page.locator(".revena-chat-status").first.inner_text()
    raise AssertionError(f"{SESSIONS_NOTEBOOK}: after {what}, {key} is {_summary_value(summary, key)} "
                         f"(status line: {status!r})")


def test_sessions_notebook_chat_in_jupyterlab(lab, page):
    """Type a fact, feed filler, ask: the state summary grows (tokens, LTM entries); Reset clears it."""
    try:
        page.goto(lab.notebook_url(SESSIONS_NOTEBOOK), wait_until="domcontentloaded")
        wait_notebook_ready(page)
        report = run_all_cells(page, timeout_s=150.0)
        failed = [c for c in report if c["errors"] or c["execution_count"] is None]
        assert not failed, f"{SESSIONS_NOTEBOOK}: cells failed under Run All:\n{format_cell_report(report)}"
        figures = rendered_plotly_figures(page)
        assert figures and all(f["traces"] > 0 for f in figures), f"multi-turn plots did not render: {figures}"

        summary = page.locator(".revena-chat-summary").first
        summary.wait_for(state="visible", timeout=30_000)
        assert _summary_value(summary, "tokens_seen") == 0
        box = page.locator(".revena-chat-input textarea").first
        box.fill("Fellow citizens. The pass key is 48213. Remember it.")
        page.locator(".revena-chat-feed").first.click()
        after_fact = _wait_summary(page, summary, "tokens_seen", lambda v: v > 0, "feeding the fact")
        box.fill(" We have met in a time of great change, and the work before us is large. " * 3)
        page.locator(".revena-chat-feed").first.click()
        after_filler = _wait_summary(page, summary, "tokens_seen", lambda v: v > after_fact, "feeding filler")
        box.fill(" The pass key is")
        page.locator(".revena-chat-generate").first.click()
        _wait_summary(page, summary, "tokens_seen", lambda v: v > after_filler + 4, "asking and generating")
        assert _summary_value(summary, "ltm_entries") > 0, "the with_ltm session stored nothing"
        assert "LTM entries" in page.locator(".revena-chat-ltm").first.inner_text()
        _screenshot(page, "08_chat_after_question.png", scroll_to=summary)

        page.locator(".revena-chat-reset").first.click()
        _wait_summary(page, summary, "tokens_seen", lambda v: v == 0, "Reset")
        assert _summary_value(summary, "ltm_entries") == 0
        assert "no LTM entries" in page.locator(".revena-chat-ltm").first.inner_text()
        _screenshot(page, "08_chat_after_reset.png", scroll_to=summary)
    except BaseException:
        try:
            _screenshot(page, "08_failure.png")
        except Exception:
            pass
        print("JupyterLab server log (tail):\n" + lab.log_tail())
        raise
