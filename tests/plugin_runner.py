"""Running `kubectl finetune` the way a user does: kubectl finds the plugin on PATH and hands it the
args; the dashboard as a process, and the system's Chromium to look at it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from devcluster import tool_path

PLUGIN_DIR = Path(sys.executable).parent
"""Where `pip install finetune-operator[operator]` put the kubectl-finetune script (the venv's bin)."""


def kubectl_finetune(kubeconfig: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    assert (PLUGIN_DIR / "kubectl-finetune").exists(), f"kubectl-finetune is not installed in {PLUGIN_DIR}"
    env = {**os.environ, "PATH": f"{PLUGIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}", "KUBECONFIG": str(kubeconfig)}
    return subprocess.run(
        [str(tool_path("kubectl")), "finetune", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@contextmanager
def dashboard(kubeconfig: Path, *args: str) -> Iterator[str]:
    """`kubectl finetune dashboard --port 0 ...` running; yields its URL."""
    process = subprocess.Popen(
        [str(PLUGIN_DIR / "kubectl-finetune"), "dashboard", "--port", "0", "--kubeconfig", str(kubeconfig), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout
        line = process.stdout.readline()
        assert "Dashboard for" in line, line + (process.stderr.read() if process.stderr else "")
        yield line.split(" at ")[1].split()[0]
    finally:
        process.terminate()
        process.wait(10)


def _chromium() -> str:
    """The system's Chromium (hack/build-tools.sh apt-installs it): Playwright drives it over CDP and
    downloads no browser of its own (nothing but package registries is reachable here)."""
    found = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if found is None:
        pytest.fail("no Chromium on PATH: `apt-get install chromium` (hack/build-tools.sh does it as root)")
    return found


@contextmanager
def browser_page(url: str) -> Iterator[tuple[Any, list[str]]]:
    """A headless Chromium page at `url`, and the list of requests it made anywhere else."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            outside: list[str] = []
            page.on("request", lambda r: None if r.url.startswith(url) else outside.append(r.url))
            page.goto(url)
            page.wait_for_selector("#live")
            yield page, outside
        finally:
            browser.close()
