"""Helpers for the browser test: a throw-away JupyterLab server and Playwright steps inside JupyterLab.

The server runs from this Python environment, on a free localhost port, with its own settings, workspace
and runtime folders (so nothing of the user's JupyterLab leaks in, and autosave can never write outputs
into a committed notebook). The Playwright steps drive JupyterLab through `window.jupyterapp` (exposed
with `--LabApp.expose_app_in_browser`) rather than menus, which move between JupyterLab versions.

    with jupyter_lab(root_dir=repo, work_dir=tmp, env={"REVENA_HOME": str(tmp)}) as lab:
        page.goto(lab.notebook_url("notebooks/04_ltm_routing.ipynb"))
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
# The flags this machine's chromium needs: no sandbox as root, no GPU, and no background traffic
# (the network is closed; without these, chromium keeps trying to reach Google's hosts).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# JupyterLab settings for the test server. autosave off: run-all makes the notebook dirty and the
# default 120 s autosave would write outputs into the committed .ipynb. windowingMode none: with
# windowing, cells far below the viewport are not in the DOM, so the widget could not be found.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabServer:
    process: subprocess.Popen
    port: int
    token: str
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def notebook_url(self, notebook_path: str) -> str:
        return f"{self.base_url}/lab/tree/{notebook_path}?token={self.token}"

    def log_tail(self, n_chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return "(no server log)"


def _lab_answers(port: int, token: str) -> bool:
    url = f"http://127.0.0.1:{port}/api/status?token={token}"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the server's whole process group (server + kernels), SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


def _kill_leftover_kernels(runtime_dir: Path) -> None:
    """SIGKILL kernels whose connection file lies in this server's runtime folder.

    jupyter_client starts kernels in sessions of their own, so killing the server's group misses them;
    a server that shuts down cleanly stops them itself, and this only catches what a killed server left.
    """
    marker = str(runtime_dir).encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass


@contextmanager
def jupyter_lab(root_dir: Path, work_dir: Path, env: dict | None = None, startup_timeout_s: float = 60.0):
    """Start `python -m jupyter lab` serving root_dir; yield a LabServer; always stop it (and its kernels)."""
    work_dir = Path(work_dir)
    settings_dir = work_dir / "lab-settings"
    for name, values in LAB_SETTINGS.items():
        path = settings_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    for sub in ("lab-workspaces", "jupyter-config", "jupyter-runtime", "ipython"):
        (work_dir / sub).mkdir(parents=True, exist_ok=True)

    port = free_port()
    token = secrets.token_hex(16)
    server_env = dict(os.environ)
    server_env.update(env or {})
    server_env.update(
        # Only this test's config and runtime files: no user jupyter_server_config, no stale servers.
        JUPYTER_CONFIG_DIR=str(work_dir / "jupyter-config"),
        JUPYTER_RUNTIME_DIR=str(work_dir / "jupyter-runtime"),
        IPYTHONDIR=str(work_dir / "ipython"),
        PATH=os.path.dirname(sys.executable) + os.pathsep + server_env.get("PATH", ""),
    )
    cmd = [
        sys.executable, "-m", "jupyter", "lab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.token={token}",
        f"--ServerApp.root_dir={root_dir}",
        "--ServerApp.allow_root=True",  # CI runs as root
        # Opening a notebook makes a checkpoint; an absolute checkpoint_dir keeps it out of the checkout
        # (FileCheckpoints joins it onto the notebook's folder, and an absolute path wins the join).
        f"--FileCheckpoints.checkpoint_dir={work_dir / 'checkpoints'}",
        "--LabApp.expose_app_in_browser=True",
        f"--LabApp.user_settings_dir={settings_dir}",
        f"--LabApp.workspaces_dir={work_dir / 'lab-workspaces'}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    log_path = work_dir / "jupyter-lab.log"
    with open(log_path, "wb") as log:
        # A new session makes the server the leader of its own process group, so one killpg also
        # ends the kernels it started.
        process = subprocess.Popen(
            cmd, cwd=root_dir, env=server_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = LabServer(process=process, port=port, token=token, log_path=log_path)
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not _lab_answers(port, token):
            if process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {process.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not answer within {startup_timeout_s:.0f} s:\n{server.log_tail()}")
            time.sleep(0.3)
        yield server
    finally:
        _stop_process_group(process)
        _kill_leftover_kernels(work_dir / "jupyter-runtime")


# --- Playwright steps inside JupyterLab -----------------------------------------------------------

# The current notebook panel once JupyterLab, the document and its kernel session are ready.
_JS_NOTEBOOK_READY = """() => {
    const app = window.jupyterapp;
    if (!app || !app.shell) return false;
    const panel = app.shell.currentWidget;
    if (!panel || !panel.sessionContext || !panel.context || !panel.context.isReady) return false;
    const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
    return !!kernel && kernel.status === 'idle';
}"""

# Starts Run All and records its outcome on window; the test polls for it (page.evaluate has no timeout).
_JS_START_RUN_ALL = """() => {
    window.__revenaRunAll = {done: false, ok: null, error: null};
    window.jupyterapp.commands.execute('notebook:run-all-cells').then(
        ok => { window.__revenaRunAll = {done: true, ok: ok, error: null}; },
        err => { window.__revenaRunAll = {done: true, ok: false, error: String(err)}; });
}"""

# Per code cell: its execution count and any error outputs (from the models, not the DOM, so exact).
_JS_CELL_REPORT = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const report = [];
    panel.content.widgets.forEach((cell, index) => {
        if (cell.model.type !== 'code') return;
        const outputs = cell.model.outputs.toJSON();
        report.push({
            index: index,
            source: cell.model.sharedModel.getSource().slice(0, 200),
            execution_count: cell.model.executionCount,
            errors: outputs.filter(o => o.output_type === 'error')
                           .map(o => o.ename + ': ' + o.evalue),
            mime_types: outputs.flatMap(o => Object.keys(o.data || {})),
        });
    });
    return report;
}"""

_JS_KERNEL_STATUS = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
    return kernel ? kernel.status : 'no kernel';
}"""


def wait_notebook_ready(page, timeout_s: float = 60.0) -> None:
    """Wait until JupyterLab shows the notebook and its kernel is started and idle."""
    page.wait_for_function(_JS_NOTEBOOK_READY, timeout=timeout_s * 1000, polling=250)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=timeout_s * 1000)


def run_all_cells(page, timeout_s: float = 120.0) -> list[dict]:
    """Run > Run All Cells, wait until it finishes and the kernel is idle; return the per-cell report."""
    page.evaluate(_JS_START_RUN_ALL)
    page.wait_for_function("() => window.__revenaRunAll && window.__revenaRunAll.done",
                           timeout=timeout_s * 1000, polling=250)
    page.wait_for_function(f"() => ({_JS_KERNEL_STATUS})() === 'idle'", timeout=30_000, polling=250)
    outcome = page.evaluate("() => window.__revenaRunAll")
    report = page.evaluate(_JS_CELL_REPORT)
    if outcome["error"]:
        raise AssertionError(f"Run All Cells failed in JupyterLab: {outcome['error']}")
    return report


def format_cell_report(report: list[dict]) -> str:
    lines = []
    for cell in report:
        status = "ERROR " + "; ".join(cell["errors"]) if cell["errors"] else "ok"
        first_line = cell["source"].splitlines()[0] if cell["source"] else ""
        lines.append(f"  cell {cell['index']} [{cell['execution_count']}] {status}: {first_line}")
    return "\n".join(lines)


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


# A probe token's position: its data-index attribute, else its revena-token-<i> class.
JS_TOKEN_INDEX = """el => {
    if (el.dataset && el.dataset.index !== undefined) return Number(el.dataset.index);
    for (const name of el.classList) {
        const m = name.match(/^revena-token-(\\d+)$/);
        if (m) return Number(m[1]);
    }
    return null;
}"""




def rendered_plotly_figures(page) -> list[dict]:
    """Size and SVG content of every plotly figure JupyterLab rendered (plotly.js draws into .js-plotly-plot)."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('.jp-OutputArea .js-plotly-plot')).map(el => {
        const box = el.getBoundingClientRect();
        return {width: box.width, height: box.height,
                svgs: el.querySelectorAll('svg.main-svg').length,
                // drawn data: scatter/bar traces, heatmap images, pie slices (an empty figure has none)
                traces: el.querySelectorAll('g.trace, g.hm, .heatmaplayer image, g.slice').length};
    })""")
