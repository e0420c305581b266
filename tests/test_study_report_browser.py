"""study.html in a real headless Chromium: it renders, logs no console error, and every image on it loads."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from server.report import build_study_report
from tests.study_fixture import write_study_fixture

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium, chromium-browser or google-chrome on PATH: the headless-browser test of study.html needs one "
    "(Debian: apt-get install chromium; .ci/run installs it)",
)

TIMEOUT_S = 60
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--enable-logging=stderr",
    "--v=0", "--virtual-time-budget=5000",
)  # fmt: skip
CONSOLE_ERRORS = ("Uncaught", "Failed to load resource", "net::ERR_FILE_NOT_FOUND")
# Test-only: appended to a copy of the page (study.html itself has no script), it records on <body> how many
# images finished loading with real pixels, which --dump-dom then shows.
IMAGE_PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const loaded = images.filter((image) => image.complete && image.naturalWidth > 0).length;
  document.body.setAttribute("data-images-loaded", loaded + "/" + images.length);
});
</script>
</body>"""


def _chromium(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """Run headless Chromium with its own profile; kill its whole process group if it outlives the timeout."""
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    command = [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"chromium did not finish within {TIMEOUT_S} s: {' '.join(command)}")
    return process.returncode, out, err


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if any(text in line for text in CONSOLE_ERRORS)]


def _images_loaded(tmp_path: Path, report: Path) -> str:
    """``loaded/total`` images of ``report`` in Chromium, read through a test-only copy beside it."""
    probe = report.with_name("probe_" + report.name)
    probe.write_text(report.read_text(encoding="utf-8").replace("</body>", IMAGE_PROBE), encoding="utf-8")
    code, dom, err = _chromium(tmp_path, "--dump-dom", probe.as_uri())
    assert code == 0, err[-2000:]
    found = re.search(r'data-images-loaded="(\d+/\d+)"', dom)
    assert found, f"the probe did not run: {dom[:500]}"
    return found.group(1)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("study")
    write_study_fixture(folder, with_nulls=True)
    return build_study_report(folder)


def test_chromium_renders_the_page_without_console_errors(report: Path, tmp_path: Path) -> None:
    code, dom, err = _chromium(tmp_path, "--dump-dom", report.as_uri())

    assert code == 0, err[-2000:]
    assert "<h1>fedmammo study: cross-site generalization study</h1>" in dom
    assert "Federated − local (95% CI)" in dom and "Comparison of the three ways to train" in dom
    assert _console_errors(err) == []


def test_every_image_loads_in_chromium(report: Path, tmp_path: Path) -> None:
    sources = re.findall(r'<img src="([^"]+)"', report.read_text(encoding="utf-8"))

    loaded = _images_loaded(tmp_path, report)

    assert len(sources) == 5 and loaded == f"{len(sources)}/{len(sources)}"
    for source in sources:
        with Image.open(report.parent / source) as image:
            assert image.format == "PNG" and image.width > 0 and image.height > 0


def test_the_image_check_notices_a_missing_image(report: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(report.parent, copy)
    (copy / "study_roc.png").unlink()

    assert _images_loaded(tmp_path, copy / report.name) == "4/5"


def test_chromium_takes_a_screenshot_of_the_page(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"

    code, _, err = _chromium(tmp_path, "--hide-scrollbars", "--window-size=1280,2000", f"--screenshot={shot}",
                             report.as_uri())  # fmt: skip

    assert code == 0, err[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        assert image.convert("L").getextrema()[0] < 64  # dark text: not a blank page
    assert _console_errors(err) == []
