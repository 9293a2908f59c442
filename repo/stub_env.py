"""Make the packages of this environment visible to the Python backend's stub.

The stub in the nvidia-pytriton wheel (`python_backend_stubs/3.X/triton_python_backend_stub`) embeds the libpython it
finds on the system, not this virtualenv's Python, and ignores PYTHONPATH. A `.pth` file in that Python's site
directory that adds this environment's site-packages (with `site.addsitedir`, so that the project's editable
install is seen too) lets the stub import numpy, torch, DALI and the project. The environment variable
`TRITON_STUB_SITE_PACKAGES`, which `repo.serve` sets to its own environment's, takes precedence over the path the
file names, so that several checkouts and environments on one machine each serve their own code.

    python -m repo.stub_env            # say which Python the stub runs and whether it sees what it needs
    python -m repo.stub_env --install  # write the .pth file, then check
"""

import argparse
import importlib.util
import re
import site
import subprocess
import sys
from pathlib import Path

PTH_NAME = "triton-video-segmentation.pth"
SITE_VARIABLE = "TRITON_STUB_SITE_PACKAGES"
NEEDED = "import numpy, torch, torchvision, av, nvidia.dali, pipelines, export, repo; print(numpy.__version__)"


def pytriton_server_root() -> Path:
    """The tritonserver inside the nvidia-pytriton wheel, found without importing pytriton (its client needs more)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("no nvidia-pytriton here: `pip install nvidia-pytriton` (or put tritonserver on PATH)")
    return Path(spec.submodule_search_locations[0]) / "tritonserver"


def stub_binary() -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return pytriton_server_root() / "python_backend_stubs" / version / "triton_python_backend_stub"


def stub_python() -> Path:
    """The interpreter that goes with the libpython the stub loads."""
    ldd = subprocess.run(["ldd", str(stub_binary())], capture_output=True, text=True, check=True).stdout
    found = re.search(r"(libpython(\d+\.\d+)\S*) => (\S+)", ldd)
    if not found or found.group(3) == "not":
        raise SystemExit(f"the Python-backend stub finds no libpython on this system:\n{ldd}")
    lib = Path(found.group(3)).resolve()
    prefix = next(p.parent for p in lib.parents if p.name == "lib")
    return prefix / "bin" / f"python{found.group(2)}"


def check(python: Path) -> str:
    result = subprocess.run([str(python), "-c", NEEDED], capture_output=True, text=True)
    if result.returncode != 0:
        return f"FAILS: {result.stderr.strip().splitlines()[-1]}"
    if int(result.stdout.split(".")[0]) >= 2:
        return f"FAILS: the stub sees numpy {result.stdout.strip()}; it needs numpy < 2"
    return "ok"


def install(python: Path) -> Path:
    target_dir = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True, text=True, check=True
    ).stdout.strip()
    pth = Path(target_dir) / PTH_NAME
    pth.parent.mkdir(parents=True, exist_ok=True)
    default = site.getsitepackages()[0]
    pth.write_text(f"import os, site; site.addsitedir(os.environ.get({SITE_VARIABLE!r}) or {default!r})\n")
    return pth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--install", action="store_true")
    args = parser.parse_args()
    python = stub_python()
    if args.install:
        print(f"wrote {install(python)}")
    status = check(python)
    print(f"Python-backend stub runs {python}: {status}")
    if status != "ok":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
