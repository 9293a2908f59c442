"""The preview page, in a real browser: Debian's Chromium, driven by Playwright, on a real run through the real server.

The page loads, its video plays the first segments as they come (its time advances), the timeline gets a point per
second of video done, the progress reaches 100 %, and a screenshot is kept (out/test-artifacts/preview.png). Then
the bad cases, over HTTP: the page of a finished run's folder, a port in use, a run whose segments fail.
"""

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import as_a_foreground_job
from test_long_video import make_av

from stream_client.stream import SegmentationStream

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "out" / "test-artifacts"
FRAMES, RATE = 200, 25  # 8 seconds, a keyframe every 10 frames
# As the probe of these machines starts it: no network for Chromium's own services (this machine has none).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required",
]  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is not installed (`bash .ci/install` installs it): the preview needs a browser")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*args: str) -> tuple[subprocess.Popen, str]:
    """`segment-video ARGS` with a preview; (its process, the page's address) once it says where."""
    proc = subprocess.Popen([sys.executable, "-m", "stream_client", *args], cwd=ROOT, stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, preexec_fn=as_a_foreground_job)  # fmt: skip
    for line in proc.stderr:
        if found := re.search(r"http://\S+/", line):
            return proc, found.group(0)
    raise AssertionError(f"no preview address: {proc.wait()} {proc.stdout.read()}")


def status(url: str) -> dict:
    with urllib.request.urlopen(url + "status.json", timeout=10) as response:
        return json.loads(response.read())


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGINT)
    return proc.wait(timeout=60)


@pytest.fixture(scope="module")
def run(server, tmp_path_factory):
    """A run with a preview, through the session's server: (process, page address, output)."""
    folder = tmp_path_factory.mktemp("preview")
    source = make_av(folder / "in.mp4", FRAMES)
    out = folder / "out.mp4"
    options = ["--class", "pottedplant", "--threshold", "0.2", "--segment-seconds", "1", "--window", "2"]
    proc, url = start(
        str(source), "--url", server.url, "--out", str(out), *options, "--preview", f"127.0.0.1:{free_port()}"
    )
    yield proc, url, out
    if proc.poll() is None:
        stop(proc)


def test_the_page_plays_the_run_as_it_goes_and_fills_its_timeline(browser, run):
    proc, url, out = run
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(url)
    assert page.title() == "segment-video preview"
    # The first segments play as soon as they are done: the video's time advances.
    page.wait_for_function("window.preview.appended >= 1 && document.getElementById('video').currentTime > 0.3",
                           timeout=180_000)  # fmt: skip
    assert page.evaluate("window.preview.player") == "mse"
    page.wait_for_function("window.preview.status && window.preview.status.state === 'finished'", timeout=180_000)
    page.wait_for_timeout(1500)  # one more poll
    assert page.inner_text("#percent") == "100.0 %"
    seconds = FRAMES // RATE
    assert page.evaluate("window.preview.timeline.length") == seconds  # a point per second of video
    assert page.evaluate("window.preview.status.seconds") == seconds
    # A click on the timeline seeks the player there.
    page.wait_for_function("window.preview.appended === window.preview.status.ready.length", timeout=60_000)
    box = page.locator("#timeline").bounding_box()
    page.locator("#timeline").click(position={"x": box["width"] * 5.5 / seconds, "y": box["height"] / 2})
    page.wait_for_function("Math.abs(document.getElementById('video').currentTime - 5) < 1", timeout=10_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "preview.png"), full_page=True)
    page.close()
    # The timeline is also beside the output, for people who do not open a browser.
    assert stop(proc) == 0
    rows = (out.with_name("out_timeline.csv")).read_text().splitlines()
    assert rows[0] == "second,kept_share" and len(rows) == 1 + seconds
    assert out.with_name("out_timeline.png").stat().st_size > 0
    assert len(json.loads(out.with_name("out_timeline.json").read_text())["per_second"]) == seconds


def test_the_page_of_a_finished_run_serves_its_folder(browser, run):
    proc, _, out = run
    wait_for(lambda: proc.poll() is not None or out.exists(), 300, "the run to finish")
    viewer, url = start("--preview", f"127.0.0.1:{free_port()}", "--out", str(out))
    try:
        state = status(url)
        assert state["state"] == "finished" and len(state["ready"]) == state["segments"] >= 5
        assert len(state["timeline"]) == FRAMES // RATE
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("document.getElementById('video').currentTime > 0.3", timeout=60_000)
        page.close()
    finally:
        assert stop(viewer) == 0


def test_a_port_in_use_is_refused_with_a_free_one_to_try(server, tmp_path):
    source = make_av(tmp_path / "in.mp4", 5, audio=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [
            sys.executable,
            "-m",
            "stream_client",
            str(source),
            "--url",
            server.url,
            "--preview",
            f"127.0.0.1:{port}",
        ]
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use" in done.stderr and "--preview 127.0.0.1:" in done.stderr


def test_a_failed_run_says_which_segments_failed(server, tmp_path):
    source = make_av(tmp_path / "in.mp4", 30, audio=False)
    proc, url = start(str(source), "--url", server.url, "--out", str(tmp_path / "out.mp4"), "--class", "unicorn",
                      "--segment-seconds", "0.3", "--preview", f"127.0.0.1:{free_port()}")  # fmt: skip
    try:
        state = wait_for(lambda: (s := status(url))["state"] == "failed" and s, 120, "the run to fail")
        assert state["failures"] and all("unknown class 'unicorn'" in f["message"] for f in state["failures"])
        assert 0 in {f["segment"] for f in state["failures"]}  # the first segment failed, with why
        assert "unknown class 'unicorn'" in state["error"]
    finally:
        assert stop(proc) == 1


def test_a_run_without_a_class_names_the_servers_default(server, tmp_path):
    with SegmentationStream(server.url) as stream:
        default = stream.server_info().default_class  # what the server says in its parameters
    source = make_av(tmp_path / "in.mp4", 10, audio=False)
    out = tmp_path / "out.mp4"
    proc, url = start(str(source), "--url", server.url, "--out", str(out), "--preview", f"127.0.0.1:{free_port()}")
    try:
        state = wait_for(lambda: (s := status(url))["state"] == "finished" and s, 120, "the run to finish")
        assert state["class"] == default
    finally:
        assert stop(proc) == 0
    viewer, url = start("--preview", f"127.0.0.1:{free_port()}", "--out", str(out))  # the finished run's page
    try:
        assert status(url)["class"] == default
    finally:
        assert stop(viewer) == 0


def test_a_run_of_several_videos_shows_each_and_plays_the_one_picked_a_live_one_as_it_plays(browser, server, tmp_path):
    from test_live import write_ts

    clip = make_av(tmp_path / "clip.mp4", 50, audio=False)
    command = [sys.executable, "-m", "stream_client", "-", str(clip), "--out-dir", str(tmp_path / "out"), "--url",
               server.url, "--threshold", "0", "--preview", f"127.0.0.1:{free_port()}"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            bufsize=0, preexec_fn=as_a_foreground_job)  # fmt: skip
    url = next(found.group(0) for line in proc.stderr if (found := re.search(rb"http://\S+/", line))).decode()
    writer = threading.Thread(target=write_ts, args=(proc.stdin, 150))  # 15 s at 10 frames/s
    writer.start()
    try:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("window.preview.status && window.preview.status.videos.length === 2", timeout=60_000)
        # The first video, the live one, plays while its source still sends.
        page.wait_for_function("document.getElementById('video').currentTime > 0.5", timeout=60_000)
        assert writer.is_alive()
        assert page.inner_text("#percent") == "live" and "behind live" in page.inner_text("#numbers")
        # Picked, the clip plays from its start.
        page.locator("#videos tr[data-k='1']").click()
        page.wait_for_function("window.preview.status && window.preview.status.video === 1 && "
                               "window.preview.appended >= 1 && document.getElementById('video').currentTime > 0.5",
                               timeout=60_000)  # fmt: skip
        assert page.evaluate("window.preview.status.source").endswith("clip.mp4")
        assert page.evaluate("window.preview.player") == "mse"
        page.close()
    finally:
        writer.join()
        proc.stdin.close()
    wait_for(lambda: [v["state"] for v in status(url)["videos"]] == ["finished", "finished"], 120, "the run's end")
    assert stop(proc) == 0
