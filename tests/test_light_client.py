"""The client installs on its own, with the README's commands as written ("The client alone": from a checkout, and
from a wheel built there): the client and its CLI without DALI, torch or anything of NVIDIA's GPU stack, and that CLI
does the whole job against a server of the full install."""

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_long_video import assert_frame_exact, make_av

ROOT = Path(__file__).resolve().parent.parent
SERVER_SIDE = ("torch", "torchvision", "nvidia-dali-cuda120", "nvidia-pytriton")
CHECKOUT = "triton-video-segmentation"  # what the README's commands call the checkout


def du_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def readme_installs() -> list[list[list[str]]]:
    """The pip commands of each code block of the README's "The client alone", as a user types them."""
    section = (ROOT / "README.md").read_text().split("### The client alone\n", 1)[1].split("\n### ", 1)[0]
    blocks = section.split("```bash\n")[1:]
    return [[shlex.split(line, comments=True) for line in block.split("```")[0].splitlines() if line.startswith("pip ")]
            for block in blocks]  # fmt: skip


def installed(folder: Path, commands: list[list[str]]) -> Path:
    """A fresh virtual environment in `folder` after `commands`, run in `folder` beside the checkout: its bin."""
    (folder / CHECKOUT).symlink_to(ROOT)
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    start = time.monotonic()
    for command in commands:
        assert command[0] == "pip", command
        done = subprocess.run([venv / "bin" / "python", "-m", *command], cwd=folder, capture_output=True, text=True,
                              timeout=900)  # fmt: skip
        assert done.returncode == 0, f"{shlex.join(command)}: {done.stderr}"
    seconds = time.monotonic() - start
    print(f"{' && '.join(map(shlex.join, commands))}: {seconds:.0f} s, the venv {du_mib(venv):.0f} MiB")
    return venv / "bin"


@pytest.fixture(scope="module")
def checkout_install(tmp_path_factory) -> Path:
    (from_checkout, _) = readme_installs()
    return installed(tmp_path_factory.mktemp("checkout"), from_checkout)


@pytest.fixture(scope="module")
def light(tmp_path_factory) -> Path:
    """The client installed from a wheel, as the README's second block says: its bin folder."""
    (_, from_wheel) = readme_installs()
    return installed(tmp_path_factory.mktemp("wheel"), from_wheel)


def test_the_readme_installs_the_client_from_a_checkout(checkout_install):
    done = subprocess.run([checkout_install / "segment-video", "--help"], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0 and "--url" in done.stdout, done.stderr
    listed = subprocess.run([checkout_install / "python", "-m", "pip", "list", "--format", "json"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert not {p["name"].lower() for p in json.loads(listed)} & set(SERVER_SIDE)


def test_the_wheel_lists_the_server_side_as_its_extra(light):
    code = "import importlib.metadata as m; print('\\n'.join(m.requires('triton-video-segmentation')))"
    requires = subprocess.run([light / "python", "-c", code], capture_output=True, text=True, check=True).stdout
    for name in SERVER_SIDE:
        assert any(line.startswith(name) and 'extra == "server"' in line for line in requires.splitlines()), requires


def test_a_plain_install_holds_no_torch_and_nothing_of_nvidias_gpu_stack(light):
    listed = subprocess.run([light / "python", "-m", "pip", "list", "--format", "json"], capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    names = {p["name"].lower() for p in json.loads(listed)}
    assert not names & set(SERVER_SIDE), names
    assert not [n for n in names if n.startswith(("nvidia", "cuda", "triton-python"))], names
    assert {"tritonclient", "av", "numpy", "grpcio"} <= names
    # The client's modules import; the server's need what is not there.
    code = "import stream_client.cli, stream_client.stream, stream_client.segment; import repo.models"
    done = subprocess.run([light / "python", "-c", code], capture_output=True, text=True, cwd="/")
    assert "No module named 'nvidia'" in done.stderr or "No module named 'torch'" in done.stderr, done.stderr


def test_the_plain_install_segments_a_long_video_through_a_server_of_the_full_install(light, server, tmp_path):
    source = make_av(tmp_path / "in.mp4", 47)  # keyframes every 10 frames, AAC audio
    out = tmp_path / "out.mp4"
    command = [light / "segment-video", source, "--url", server.url, "--out", out, "--threshold", "0",
               "--segment-seconds", "0.3", "--window", "4", "--returns", "both"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd="/")
    assert done.returncode == 0, done.stderr
    assert_frame_exact(source, out)
    assert (tmp_path / "out_matte.mp4").exists() and (tmp_path / "out.mp4.parts" / "playlist.m3u8").exists()


def test_without_the_server_extra_the_local_server_says_in_one_line_what_to_install(light, tmp_path):
    source = make_av(tmp_path / "in.mp4", 5, audio=False)
    done = subprocess.run([light / "segment-video", source], capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "pip install './triton-video-segmentation[server]'" in line and "--url" in line
