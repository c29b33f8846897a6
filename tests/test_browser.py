"""The lab in a real browser: JupyterLab on localhost, a notebook run in headless Chromium, its widget moved.

For each notebook in :data:`BROWSER_NOTEBOOKS` the test starts ``jupyter lab`` (loopback only, a random port,
a known token, ``LABKIT_PROFILE=smoke``, fresh Jupyter config/data/runtime/settings dirs so nothing of the user's
setup leaks in) on a temporary copy of ``notebooks/``, opens the notebook in headless Chromium driven by
Playwright for Python, runs all cells, then moves the widget's slider with the keyboard and checks that the
readout text and the figure both change, that the key's direction shows in the bit-width read out (the lowest
precision is on the left: ArrowLeft lowers it, ArrowRight raises it) and that the key back returns the slider to
where it was. Other sliders of a notebook (:data:`OTHER_SLIDERS`) are moved the same way. The time from each key
press to the readout's and the figures' change is measured in the page (:data:`JS_ARM_LATENCY`), printed and, with
``LABKIT_BROWSER_LATENCY_FILE`` set, written for ``benchmarks/run.py``'s ``switchboard_browser`` group.

The widgets carry stable CSS hooks (``labkit/widgets.py``): ``labkit-precision-slider`` on the slider,
``labkit-readout`` on the HTML readout and ``labkit-figure`` on the plotly ``FigureWidget``.

Screenshots (before / after the move, or the state at a failure) go to ``test-artifacts/browser/``; their paths
are printed and recorded as test properties (``--junitxml`` shows them).

The Chromium comes from :func:`labkit.browser.ensure_chromium` (``LABKIT_CHROMIUM``, one on ``PATH`` or
Playwright's; else, as root, Debian's ``chromium`` package; else Playwright's own download), so the README's test
command needs no separate browser set-up. The ``playwright`` Python package is in ``.[test]``. A browser that cannot
be found or installed is a failure with the fix in its message, never a skip.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = ROOT / "notebooks"
ARTIFACTS = ROOT / "test-artifacts" / "browser"

# The notebooks driven in the browser, by file name without ".ipynb", each with an optional regular expression
# that the readout must match before and after the move (None: only "the text changes" is checked).
# Switching or adding a target is one line here; a listed notebook that does not exist is a failure.
BROWSER_NOTEBOOKS: dict[str, str | None] = {
    "01_double_rounding_scalar": r"Double Rounding differs from direct rounding for \d+ of \d+ inputs",
    "06_deployment": r"Accuracy \d+\.\d+ %",
}

# Where each notebook's readout names the bit-width the slider is at: the lowest precision is on the left, so
# ArrowRight must raise this number and ArrowLeft lower it.
READOUT_BITS: dict[str, str] = {
    "01_double_rounding_scalar": r"INT8 → INT(\d+)",
    "06_deployment": r"at INT(\d+) \(uniform\)",
}

# More sliders a notebook has, each moved by keyboard too: (slider, readout, where the readout names the bits).
OTHER_SLIDERS: dict[str, list[tuple[str, str, str]]] = {
    "06_deployment": [(".labkit-onnx-slider", ".labkit-onnx-readout", r"(\d+)-bit from one file")],
}

INSTALL_HINT = (
    "the browser test needs a Chromium (`.venv/bin/python -m labkit.browser` finds or installs one) and the "
    "jupyterlab and playwright Python packages (`.venv/bin/pip install -e \".[test]\"`)."
)

# Bounded waits (seconds). The test takes ~30-40 s for notebook 01 on 2 busy CPU cores.
SERVER_START_S = 60
PAGE_LOAD_S = 60
KERNEL_IDLE_S = 60
RUN_ALL_S = 180  # notebook 01: ~20 s; notebook 03 (CIFAR-10 training, smoke): ~130 s
WIDGET_RENDER_S = 30
READOUT_CHANGE_S = 60
FIGURE_CHANGE_S = 30
SERVER_STOP_S = 20

WIDGET = ".labkit-precision-slider"
READOUT = ".labkit-readout"
FIGURE = ".labkit-figure"


# ------------------------------------------------------------------------------------------ JupyterLab server


class LabServer:
    def __init__(self, url: str, token: str, process: subprocess.Popen, log: Path):
        self.url, self.token, self.process, self.log = url, token, process, log

    def notebook_url(self, name: str) -> str:
        # A workspace of its own per notebook: no tab (or kernel) of an earlier test is restored with it.
        return f"{self.url}lab/workspaces/browser-{name}/tree/notebooks/{name}.ipynb?reset&token={self.token}"

    def _request(self, method: str, path: str):
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def shut_down_kernels(self) -> None:
        """End every notebook session (and its kernel), so the next notebook does not share the CPU with it."""
        try:
            for session in self._request("GET", "api/sessions") or []:
                self._request("DELETE", f"api/sessions/{session['id']}")
        except (OSError, urllib.error.URLError, ValueError):
            pass

    def log_tail(self, n: int = 25) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "<no server log>"
        return "\n".join(lines[-n:])


def _clean_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_"))}
    env.pop("IPYTHONDIR", None)
    dirs = {
        "JUPYTER_CONFIG_DIR": tmp / "config",
        "JUPYTER_DATA_DIR": tmp / "data",
        "JUPYTER_RUNTIME_DIR": tmp / "runtime",
        "JUPYTERLAB_SETTINGS_DIR": tmp / "lab-settings",
        "JUPYTERLAB_WORKSPACES_DIR": tmp / "lab-workspaces",
        "IPYTHONDIR": tmp / "ipython",
    }
    for key, path in dirs.items():
        path.mkdir(parents=True, exist_ok=True)
        env[key] = str(path)
    env["LABKIT_PROFILE"] = "smoke"
    env["PYTHONUNBUFFERED"] = "1"
    # User settings: no autosave (the copy is thrown away anyway), no news / update toasts over the page.
    settings = tmp / "lab-settings" / "@jupyterlab"
    (settings / "docmanager-extension").mkdir(parents=True, exist_ok=True)
    (settings / "docmanager-extension" / "plugin.jupyterlab-settings").write_text(json.dumps({"autosave": False}))
    (settings / "apputils-extension").mkdir(parents=True, exist_ok=True)
    (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    return env


def _stop(process: subprocess.Popen, url: str | None, token: str) -> None:
    if process.poll() is not None:
        return
    if url:  # a clean shutdown first: the server stops its kernels
        try:
            req = urllib.request.Request(f"{url}api/shutdown", method="POST",
                                         headers={"Authorization": f"token {token}"})
            urllib.request.urlopen(req, timeout=5).close()
        except (OSError, urllib.error.URLError):
            pass
        try:
            process.wait(timeout=SERVER_STOP_S)
            return
        except subprocess.TimeoutExpired:
            pass
    # The server runs in its own session (process group); this ends it and the kernels it started.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=SERVER_STOP_S)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory):
    """``jupyter lab`` on 127.0.0.1 (random port, known token) serving a temporary copy of ``notebooks/``."""
    try:
        import jupyterlab  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"jupyterlab is not importable from {sys.executable} ({exc}); {INSTALL_HINT}")
    tmp = tmp_path_factory.mktemp("browser-lab")
    root = tmp / "root"
    shutil.copytree(NOTEBOOKS_DIR, root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    env = _clean_env(tmp / "jupyter")
    token = secrets.token_hex(16)
    log = tmp / "jupyter-lab.log"
    cmd = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser", "--ServerApp.ip=127.0.0.1", "--ServerApp.port=0", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--ServerApp.terminals_enabled=False",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run cells and read kernel state robustly
        "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",  # no PyPI queries from the extension manager
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    with open(log, "wb") as log_file:
        process = subprocess.Popen(cmd, cwd=root, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    url = None
    try:
        runtime = Path(env["JUPYTER_RUNTIME_DIR"])
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            info_file = runtime / f"jpserver-{process.pid}.json"
            if url is None and info_file.is_file():
                try:
                    url = json.loads(info_file.read_text())["url"]
                except (ValueError, KeyError):
                    url = None
            if url:
                try:
                    with urllib.request.urlopen(f"{url}api/status?token={token}", timeout=5) as resp:
                        if resp.status == 200:
                            break
                except (OSError, urllib.error.URLError):
                    pass
            time.sleep(0.5)
        else:
            process.poll()
        server = LabServer(url or "", token, process, log)
        if process.returncode is not None:
            pytest.fail(f"jupyter lab exited with code {process.returncode} while starting:\n{server.log_tail()}")
        if not url or time.monotonic() >= deadline:
            pytest.fail(f"jupyter lab did not answer on localhost within {SERVER_START_S}s:\n{server.log_tail()}")
        assert url.startswith("http://127.0.0.1:"), url  # loopback only
        yield server
    finally:
        _stop(process, url, token)


# ------------------------------------------------------------------------------------------------ browser


@pytest.fixture(scope="session")
def chromium(request) -> Path:
    """A Chromium binary, installed on first use when the machine has none (labkit.browser.ensure_chromium)."""
    from labkit.browser import BrowserUnavailableError, ensure_chromium

    capture = request.config.pluginmanager.getplugin("capturemanager")

    def progress(message: str) -> None:  # shown at once, even under pytest's output capture
        with capture.global_and_fixture_disabled():
            print(f"\n[browser] {message}", flush=True)

    try:
        return ensure_chromium(progress)
    except BrowserUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def browser(chromium):
    """Headless Chromium (the one :func:`chromium` provides) driven by Playwright."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.fail(f"playwright is not installed ({exc}); {INSTALL_HINT}")
    args = ["--disable-dev-shm-usage", "--disable-gpu"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to start its sandbox as root (CI containers)
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=str(chromium), headless=True, args=args, timeout=60_000)
        except Exception as exc:  # noqa: BLE001 - the message says what to do
            pytest.fail(f"could not launch {chromium} through Playwright: {exc}\n{INSTALL_HINT}")
        try:
            yield browser
        finally:
            browser.close()


# JavaScript run in the page. `window.jupyterapp` exists because of --LabApp.expose_app_in_browser.
JS_STATE = """() => {
  const app = window.jupyterapp;
  const dialog = document.querySelector('.jp-Dialog');
  const out = {app: !!app, kernel: null, dialog: dialog ? dialog.innerText.slice(0, 500) : null};
  const panel = app && app.shell.currentWidget;
  const kernel = panel && panel.sessionContext && panel.sessionContext.session && panel.sessionContext.session.kernel;
  if (kernel) out.kernel = kernel.status;
  return out;
}"""

JS_RUN_ALL = """async (ms) => {
  const run = window.jupyterapp.commands.execute('notebook:run-all-cells');
  const timer = new Promise(resolve => setTimeout(() => resolve('timeout'), ms));
  return await Promise.race([run.then(ok => ok === false ? 'failed' : 'done'), timer]);
}"""

JS_CELL_ERRORS = """() => {
  const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
  const errors = [];
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type !== 'code') continue;
    for (const o of cell.outputs.toJSON()) {
      if (o.output_type === 'error') errors.push({cell: i, ename: o.ename, evalue: o.evalue,
                                                  traceback: (o.traceback || []).slice(-3).join('\\n')});
    }
  }
  return errors;
}"""

# What every plotly figure of the widget draws: the SVG path geometry and all text (titles, ticks, annotations).
JS_FIGURE_SIGNATURE = """(el, selector) => JSON.stringify(Array.from(el.querySelectorAll(selector)).map(fig => [
  Array.from(fig.querySelectorAll('svg path')).map(p => p.getAttribute('d') || ''),
  Array.from(fig.querySelectorAll('svg text')).map(t => t.textContent),
]))"""

# Issue 11's end-to-end switchboard latency, in the page: from the key's keydown (capture phase) to the first DOM
# change of the readout's text and of the figures' signature (JS_FIGURE_SIGNATURE), each by performance.now(). Armed
# before a key press, read after the test saw both change.
JS_ARM_LATENCY = """(el, [readoutSelector, figureSelector]) => {
  const readout = el.querySelector(readoutSelector);
  const signature = () => (""" + JS_FIGURE_SIGNATURE + """)(el, figureSelector);
  const state = {key: null, readout: null, figure: null, text: readout.innerText, signature: signature()};
  window.__labkitLatency = state;
  document.addEventListener('keydown', () => { if (state.key === null) state.key = performance.now(); },
                            {capture: true, once: true});
  const observer = new MutationObserver(() => {
    const now = performance.now();
    if (state.readout === null && readout.innerText !== state.text) state.readout = now;
    if (state.figure === null && signature() !== state.signature) state.figure = now;
    if (state.readout !== null && state.figure !== null) observer.disconnect();
  });
  observer.observe(el, {subtree: true, childList: true, attributes: true, characterData: true});
}"""

JS_READ_LATENCY = """() => {
  const s = window.__labkitLatency;
  if (!s || s.key === null || s.readout === null || s.figure === null) return null;
  return {readout_ms: s.readout - s.key, figure_ms: s.figure - s.key,
          both_ms: Math.max(s.readout, s.figure) - s.key};
}"""

# Where the end-to-end latencies of the slider moves go, one JSON line per notebook (benchmarks/run.py's
# switchboard_browser group sets it); they are printed with the test's summary line in any case.
LATENCY_FILE = os.environ.get("LABKIT_BROWSER_LATENCY_FILE")
# More timed left/right pairs of the first slider after the checked moves (the benchmark asks for some; tests: none).
LATENCY_REPEATS = int(os.environ.get("LABKIT_BROWSER_LATENCY_MOVES", "0"))

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _wait_for_idle_kernel(page, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    state = {}
    while time.monotonic() < deadline:
        state = page.evaluate(JS_STATE)
        if state["dialog"]:
            raise AssertionError(f"a JupyterLab dialog blocks the page {what}: {state['dialog']!r}")
        if state["kernel"] == "dead":
            raise AssertionError(f"the notebook's kernel died {what}")
        if state["kernel"] == "idle":
            return
        time.sleep(0.25)
    raise AssertionError(f"the kernel was not idle within {seconds}s {what} (last state {state})")


def _readout_bits(text: str, pattern: str) -> int:
    match = re.search(pattern, text)
    if not match:
        raise AssertionError(f"the readout {text!r} does not name its bit-width ({pattern!r})")
    return int(match.group(1))


def _move_by_keyboard(page, slider: str, readout_selector: str, pattern: str) -> None:
    """Press ArrowLeft then ArrowRight on ``slider``: the bits its readout names go down one step, then back up."""
    from playwright.sync_api import expect

    output = page.locator(".jp-OutputArea-output", has=page.locator(slider)).first
    handle, readout = output.locator(f"{slider} .noUi-handle").first, output.locator(readout_selector).first
    handle.wait_for(state="visible", timeout=WIDGET_RENDER_S * 1000)
    output.evaluate("el => el.scrollIntoView({block: 'start'})")
    start = _readout_bits(readout.inner_text(), pattern)
    steps = []
    for key in ("ArrowLeft", "ArrowRight"):
        text = readout.inner_text().strip()
        handle.focus()
        handle.press(key)
        expect(readout).not_to_have_text(text, use_inner_text=True, timeout=READOUT_CHANGE_S * 1000)
        steps.append(_readout_bits(readout.inner_text(), pattern))
    if not steps[0] < start == steps[1]:
        raise AssertionError(f"{slider}: ArrowLeft then ArrowRight read out {start} → {steps[0]} → {steps[1]} bits; "
                             "left must be the lower precision")


def _read_latency(page) -> dict:
    """The armed move's key → readout / figures times once both changed ({} if they did not within the limit)."""
    deadline = time.monotonic() + FIGURE_CHANGE_S
    while page.evaluate(JS_READ_LATENCY) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return page.evaluate(JS_READ_LATENCY) or {}


def _screenshot(page, name: str, record_property) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), timeout=30_000)
    record_property(f"screenshot-{name}", str(path))
    return path


def _drive_switch_widget(page, notebook: str, readout_pattern: str | None, record_property,
                         shots: list[Path], latencies: list[dict] | None = None) -> tuple[str, str]:
    """Move the first precision slider of the page by keyboard: its readout and its figures must change, the key's
    direction must show in the bits read out, the key back must return it; then :data:`OTHER_SLIDERS`. Returns the
    readout before and after the first move; screenshots go to ``shots``, the key → readout and figures times of
    the move and of the move back (:data:`JS_ARM_LATENCY`) to ``latencies``."""
    latencies = [] if latencies is None else latencies
    from playwright.sync_api import expect

    # The first output area holding the slider; the readout and the figures (all of them: the change may
    # show in any) are looked up inside that same output.
    output = page.locator(".jp-OutputArea-output", has=page.locator(WIDGET)).first
    handle = output.locator(f"{WIDGET} .noUi-handle").first
    readout = output.locator(READOUT).first
    figure = output.locator(FIGURE).first
    handle.wait_for(state="visible", timeout=WIDGET_RENDER_S * 1000)
    readout.wait_for(state="visible", timeout=WIDGET_RENDER_S * 1000)
    figure.locator("svg.main-svg path").first.wait_for(state="attached", timeout=WIDGET_RENDER_S * 1000)
    output.evaluate("el => el.scrollIntoView({block: 'start'})")  # the widget at the top of the shot

    before_text = readout.inner_text().strip()
    before_figure = output.evaluate(JS_FIGURE_SIGNATURE, FIGURE)
    if not before_text:
        raise AssertionError("the readout is empty before the slider moves")
    if readout_pattern and not re.search(readout_pattern, before_text):
        raise AssertionError(f"the readout {before_text!r} does not match {readout_pattern!r}")
    shots.append(_screenshot(page, f"{notebook}-before", record_property))

    # Move the slider one step with the keyboard: left (a lower precision) unless it is at the left end;
    # the key back, below, checks the other direction.
    position = handle.get_attribute("aria-valuenow")
    key = "ArrowLeft" if float(position) > float(handle.get_attribute("aria-valuemin")) else "ArrowRight"
    handle.focus()
    output.evaluate(JS_ARM_LATENCY, [READOUT, FIGURE])
    handle.press(key)
    expect(handle).not_to_have_attribute("aria-valuenow", position, timeout=5_000)
    moved_to = handle.get_attribute("aria-valuenow")
    assert (float(moved_to) > float(position)) == (key == "ArrowRight"), (key, position, moved_to)

    # innerText, as read above (textContent would differ at every <br> and pass at once).
    expect(readout).not_to_have_text(before_text, use_inner_text=True, timeout=READOUT_CHANGE_S * 1000)
    after_text = readout.inner_text().strip()
    deadline = time.monotonic() + FIGURE_CHANGE_S
    after_figure = output.evaluate(JS_FIGURE_SIGNATURE, FIGURE)
    while after_figure == before_figure and time.monotonic() < deadline:
        time.sleep(0.25)
        after_figure = output.evaluate(JS_FIGURE_SIGNATURE, FIGURE)
    if after_figure == before_figure:
        raise AssertionError(f"the readout changed but the figure did not within {FIGURE_CHANGE_S}s "
                             "of the slider move")
    latencies.append({"move": f"{position} → {moved_to}", **_read_latency(page)})
    if readout_pattern and not re.search(readout_pattern, after_text):
        raise AssertionError(f"after the move, the readout {after_text!r} does not match {readout_pattern!r}")
    output.evaluate("el => el.scrollIntoView({block: 'start'})")  # the widget at the top of the shot
    shots.append(_screenshot(page, f"{notebook}-after", record_property))

    # Left to right is low to high precision: the key's direction shows in the bit-width read out, and
    # the opposite key comes back to where the slider started.
    bits_pattern = READOUT_BITS.get(notebook)
    if bits_pattern:
        before_bits, after_bits = (_readout_bits(text, bits_pattern) for text in (before_text, after_text))
        if (after_bits > before_bits) != (key == "ArrowRight"):
            raise AssertionError(f"{key} moved the bit-width from {before_bits} to {after_bits}: the slider "
                                 "must run from the lowest precision (left) to the highest (right)")
        back = "ArrowLeft" if key == "ArrowRight" else "ArrowRight"
        output.evaluate(JS_ARM_LATENCY, [READOUT, FIGURE])
        handle.press(back)
        expect(handle).to_have_attribute("aria-valuenow", position, timeout=5_000)
        expect(readout).to_have_text(re.compile(bits_pattern.replace(r"(\d+)", str(before_bits))),
                                     use_inner_text=True, timeout=READOUT_CHANGE_S * 1000)
        latencies.append({"move": f"{moved_to} → {position}", **_read_latency(page)})
        for _ in range(LATENCY_REPEATS):
            for press, was, expected in ((key, position, moved_to), (back, moved_to, position)):
                output.evaluate(JS_ARM_LATENCY, [READOUT, FIGURE])
                handle.press(press)
                expect(handle).to_have_attribute("aria-valuenow", expected, timeout=5_000)
                latencies.append({"move": f"{was} → {expected}", **_read_latency(page)})

    for slider, other_readout, pattern in OTHER_SLIDERS.get(notebook, []):
        _move_by_keyboard(page, slider, other_readout, pattern)
    return before_text, after_text


# ----------------------------------------------------------------------------------------------------- test


@pytest.mark.parametrize("notebook", list(BROWSER_NOTEBOOKS))
def test_notebook_widget_in_a_real_browser(notebook, browser, lab_server, record_property, capsys):
    from playwright.sync_api import Error as PlaywrightError

    assert (NOTEBOOKS_DIR / f"{notebook}.ipynb").is_file(), (
        f"notebooks/{notebook}.ipynb is listed in BROWSER_NOTEBOOKS (tests/test_browser.py) but does not exist")
    readout_pattern = BROWSER_NOTEBOOKS[notebook]
    for old in ARTIFACTS.glob(f"{notebook}-*.png"):
        old.unlink()

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    page = context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    shots: list[Path] = []
    latencies: list[dict] = []
    started = time.monotonic()
    try:
        try:
            page.goto(lab_server.notebook_url(notebook), timeout=PAGE_LOAD_S * 1000, wait_until="domcontentloaded")
            page.wait_for_selector(".jp-NotebookPanel .jp-Notebook", timeout=PAGE_LOAD_S * 1000)
            _wait_for_idle_kernel(page, KERNEL_IDLE_S, "after opening the notebook")

            outcome = page.evaluate(JS_RUN_ALL, RUN_ALL_S * 1000)
            errors = page.evaluate(JS_CELL_ERRORS)
            if errors:
                raise AssertionError("cells raised in the browser run:\n" + "\n".join(
                    f"  cell {e['cell']}: {e['ename']}: {e['evalue']}\n{ANSI.sub('', e['traceback'])}"
                    for e in errors))
            assert outcome == "done", f"Run All Cells: {outcome} (limit {RUN_ALL_S}s)"
            _wait_for_idle_kernel(page, KERNEL_IDLE_S, "after Run All Cells")

            before_text, after_text = _drive_switch_widget(page, notebook, readout_pattern, record_property,
                                                           shots, latencies)
        except (AssertionError, PlaywrightError) as exc:
            failure = f"{type(exc).__name__}: {exc}"
            try:
                shots.append(_screenshot(page, f"{notebook}-failure", record_property))
            except PlaywrightError:
                pass
        else:
            failure = None
    finally:
        context.close()
        lab_server.shut_down_kernels()
    if failure:
        details = [f"browser test of notebooks/{notebook}.ipynb failed", failure]
        if shots:
            details.append("screenshots: " + ", ".join(str(s) for s in shots))
        if page_errors:
            details.append("page errors: " + " | ".join(page_errors[:5]))
        details.append("jupyter lab log (tail):\n" + lab_server.log_tail())
        pytest.fail("\n".join(details), pytrace=False)

    for entry in latencies:  # the DOM did change (asserted above), so each move has its times
        assert {"readout_ms", "figure_ms", "both_ms"} <= set(entry), entry
    record_property("switchboard_latency_ms", json.dumps(latencies))
    if LATENCY_FILE:
        with open(LATENCY_FILE, "a") as stream:
            stream.write(json.dumps({"notebook": notebook, "moves": latencies,
                                     "profile": os.environ.get("LABKIT_PROFILE", "")}) + "\n")
    with capsys.disabled():
        print(f"\n[browser] {notebook}: readout {before_text!r} -> {after_text!r} "
              f"({time.monotonic() - started:.1f}s); key → readout and figures: "
              + ", ".join(f"{m['move']} {m['both_ms']:.0f} ms" for m in latencies)
              + "; screenshots: " + ", ".join(str(s) for s in shots))



# --------------------------------------------------------------------------------- live training (notebook 03)

# The notebook with a live training run, the source text that finds its training cell and the cell that opens the
# trained model in the switchboard, the name of the loss trace that is counted (one point per step) and the
# progress bar's description.
LIVE_NOTEBOOK = "03_cifar10_joint_training"
LIVE_CELL = "train_live("
LIVE_BOARD_CELL = "precision_switchboard(live_model"
LIVE_TRACE = "8-bit"
LIVE_BAR = "joint training"
LIVE_RUN_S = 420  # smoke: a 3-step fine-tune plus loading the data and the model, on 2 busy CPU cores
READOUT_BITS[LIVE_NOTEBOOK] = r"at INT(\d+) \(uniform\)"

JS_FIND_CELL = """(text) => {
  const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type === 'code' && cell.sharedModel.getSource().includes(text)) return i;
  }
  return -1;
}"""

# Run every cell above `index` (JupyterLab's "Run All Above Selected Cell") without waiting for it here.
JS_RUN_ABOVE = """(index) => {
  const panel = window.jupyterapp.shell.currentWidget;
  panel.content.activeCellIndex = index;
  window.__labkitRun = 'running';
  window.jupyterapp.commands.execute('notebook:run-all-above').then(
    ok => { window.__labkitRun = ok === false ? 'failed' : 'done'; },
    err => { window.__labkitRun = 'failed: ' + err; });
  return true;
}"""

# Every 50 ms, in the page: the number of points of the loss trace in the live cell's figure, and the text of its
# progress bar ("n/total"), each recorded when it changes.
JS_WATCH_LIVE = """([index, traceName, barText]) => {
  const live = window.__labkitLive = {points: [], bar: [], evaluated: 0};
  window.__labkitLiveTimer = setInterval(() => {
    const cell = window.jupyterapp.shell.currentWidget.content.widgets[index].node;
    const gd = cell.querySelector('.js-plotly-plot');
    if (gd && gd.data) {
      const trace = gd.data.find(d => d.name === traceName);
      const n = trace && trace.x ? trace.x.length : 0;
      if (!live.points.length || live.points[live.points.length - 1] !== n) live.points.push(n);
      live.evaluated = gd.data.filter(d => d.name.startsWith(traceName + ' ') && d.mode === 'markers+lines')
                              .reduce((sum, d) => sum + (d.x ? d.x.length : 0), 0);
    }
    // tqdm pads its text with figure spaces (U+2007): JavaScript's \\s matches them
    const text = Array.from(cell.querySelectorAll('.widget-hbox')).map(b => b.textContent.replace(/\\s+/g, ' '))
                      .find(t => t.includes(barText));
    const match = text && text.match(/(\\d+)\\/(\\d+)/);
    if (match && live.bar[live.bar.length - 1] !== match[0]) live.bar.push(match[0]);
  }, 50);
  return true;
}"""


def test_live_training_in_a_real_browser(browser, lab_server, record_property, capsys):
    """Notebook 03's live run at the smoke profile: the figure's loss trace grows while it trains, the progress
    bar reaches its end, the test accuracies appear, and the trained model then opens in the switchboard, whose
    slider is driven by keyboard as in the test above."""
    from playwright.sync_api import Error as PlaywrightError

    notebook = LIVE_NOTEBOOK
    assert (NOTEBOOKS_DIR / f"{notebook}.ipynb").is_file(), f"notebooks/{notebook}.ipynb does not exist"
    for old in ARTIFACTS.glob(f"{notebook}-*.png"):
        old.unlink()
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    page = context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    shots: list[Path] = []
    started = time.monotonic()
    live: dict = {}
    try:
        try:
            page.goto(lab_server.notebook_url(notebook), timeout=PAGE_LOAD_S * 1000, wait_until="domcontentloaded")
            page.wait_for_selector(".jp-NotebookPanel .jp-Notebook", timeout=PAGE_LOAD_S * 1000)
            _wait_for_idle_kernel(page, KERNEL_IDLE_S, "after opening the notebook")
            live_cell, board_cell = (page.evaluate(JS_FIND_CELL, text) for text in (LIVE_CELL, LIVE_BOARD_CELL))
            if live_cell < 0 or board_cell < live_cell:
                raise AssertionError(f"notebook {notebook} has no code cell with {LIVE_CELL!r} followed by one "
                                     f"with {LIVE_BOARD_CELL!r} (found cells {live_cell}, {board_cell})")

            page.evaluate(JS_WATCH_LIVE, [live_cell, LIVE_TRACE, LIVE_BAR])
            page.evaluate(JS_RUN_ABOVE, board_cell + 1)  # everything up to the switchboard of the trained model
            deadline = time.monotonic() + LIVE_RUN_S
            mid_shot = False
            while page.evaluate("() => window.__labkitRun") == "running" and time.monotonic() < deadline:
                live = page.evaluate("() => window.__labkitLive")
                final_total = int(live["bar"][-1].split("/")[1]) if live["bar"] else None
                if not mid_shot and final_total and any(0 < n < final_total for n in live["points"]):
                    page.evaluate("(i) => window.jupyterapp.shell.currentWidget.content.widgets[i].node"
                                  ".scrollIntoView({block: 'start'})", live_cell)
                    shots.append(_screenshot(page, f"{notebook}-live-training", record_property))
                    mid_shot = True
                time.sleep(0.25)
            outcome = page.evaluate("() => window.__labkitRun")
            _wait_for_idle_kernel(page, KERNEL_IDLE_S, "after the live run")
            time.sleep(1.0)  # the last figure update after the run
            live = page.evaluate("() => (clearInterval(window.__labkitLiveTimer), window.__labkitLive)")
            errors = page.evaluate(JS_CELL_ERRORS)
            if errors:
                raise AssertionError("cells raised in the browser run:\n" + "\n".join(
                    f"  cell {e['cell']}: {e['ename']}: {e['evalue']}\n{ANSI.sub('', e['traceback'])}"
                    for e in errors))
            assert outcome == "done", f"running the cells up to the switchboard: {outcome} (limit {LIVE_RUN_S}s)"

            # The bar counted every step; the loss trace grew while the model trained, one point per step.
            if not live["bar"]:
                shown = page.evaluate("(i) => window.jupyterapp.shell.currentWidget.content.widgets[i].node"
                                      ".querySelectorAll('.jp-OutputArea-output').values().map(o => [o.firstElementChild && "
                                      "o.firstElementChild.className, o.innerText.slice(0, 300)]).toArray()", live_cell)
                raise AssertionError(f"no progress bar '{LIVE_BAR} … n/total' in the live cell; its output: {shown}")
            done, total = map(int, live["bar"][-1].split("/"))
            if done != total or total < 2:
                raise AssertionError(f"the progress bar ended at {live['bar'][-1]} (seen: {live['bar']})")
            points = live["points"]
            if points != sorted(set(points)) or not points or points[-1] != total:
                raise AssertionError(f"the {LIVE_TRACE} loss trace had {points} points over the run; expected it "
                                     f"to grow to one per step ({total})")
            if not any(0 < n < total for n in points):
                raise AssertionError(f"the live figure showed {points} loss points: it never updated while the "
                                     "model trained, only at the end")
            if live["evaluated"] < 1:
                raise AssertionError("the live figure shows no test-set accuracy after the run")
            if not mid_shot:
                raise AssertionError("no screenshot while training (the figure had no intermediate state)")
            page.evaluate("(i) => window.jupyterapp.shell.currentWidget.content.widgets[i].node"
                          ".scrollIntoView({block: 'start'})", live_cell)
            shots.append(_screenshot(page, f"{notebook}-live-trained", record_property))

            # Then the trained model in the switchboard (the first precision slider of the page).
            board = page.locator(".jp-Cell").nth(board_cell).locator(f"{WIDGET} .noUi-handle")
            board.first.wait_for(state="visible", timeout=WIDGET_RENDER_S * 1000)
            before_text, after_text = _drive_switch_widget(page, notebook, r"Accuracy \d+\.\d+ %", record_property,
                                                           shots)
        except (AssertionError, PlaywrightError) as exc:
            failure = f"{type(exc).__name__}: {exc}"
            try:
                shots.append(_screenshot(page, f"{notebook}-failure", record_property))
            except PlaywrightError:
                pass
        else:
            failure = None
    finally:
        context.close()
        lab_server.shut_down_kernels()
    if failure:
        details = [f"browser test of the live training in notebooks/{notebook}.ipynb failed", failure,
                   f"live figure / bar as seen: {live}"]
        if shots:
            details.append("screenshots: " + ", ".join(str(s) for s in shots))
        if page_errors:
            details.append("page errors: " + " | ".join(page_errors[:5]))
        details.append("jupyter lab log (tail):\n" + lab_server.log_tail())
        pytest.fail("\n".join(details), pytrace=False)

    with capsys.disabled():
        print(f"\n[browser] {notebook} live run: loss points {live['points']}, bar {live['bar']}; switchboard "
              f"{before_text!r} -> {after_text!r} ({time.monotonic() - started:.1f}s); screenshots: "
              + ", ".join(str(s) for s in shots))
