"""What a run of `segment-video` segments, and where each output goes.

The command line names videos, folders (their video files, by extension; their subfolders' too with `recursive`),
`-` (a stream on standard input) and URLs (live sources). With an output folder, each input's output is named after
it there, `NAME_segmented.mp4`, in the subfolder it had in its folder; two inputs of one name (`a.mp4`, `a.mkv`)
keep their extensions apart (`a_mp4_segmented.mp4`).
"""

import re
from dataclasses import dataclass
from pathlib import Path

from stream_client.live import STDIN, is_live

# What a folder's video files are called (a named file is taken whatever its name).
VIDEO_SUFFIXES = {
    ".3gp", ".avi", ".flv", ".m2ts", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".mts", ".mxf", ".ogv", ".ts",
    ".webm", ".wmv", ".y4m",
}  # fmt: skip
SUFFIX = "_segmented.mp4"


@dataclass(frozen=True)
class Input:
    source: str  # a file's path, `-` or a URL
    folder: Path  # where its output goes under the output folder (a subfolder of a named folder, or `.`)

    @property
    def name(self) -> str:
        """What its output is named after."""
        if self.source == STDIN:
            return "stdin"
        if is_live(self.source):
            return re.sub(r"[^A-Za-z0-9.-]+", "_", self.source).strip("_")
        return Path(self.source).stem


def expand(names: list[str], recursive: bool = False, out_dir: Path | None = None) -> tuple[list[Input], bool]:
    """The inputs the names stand for, and whether a folder was among them. ValueError for a name that is neither a
    file, a folder, `-` nor a URL. A folder's files are sorted; parts folders, and the outputs of a run in the output
    folder, are passed over."""
    inputs, folders = [], False
    skip = out_dir.resolve() if out_dir else None
    for name in names:
        if is_live(name):
            inputs.append(Input(name, Path(".")))
            continue
        path = Path(name)
        if path.is_dir():
            folders = True
            found = sorted(path.rglob("*") if recursive else path.iterdir())
            for file in found:
                if (
                    file.is_file()
                    and file.suffix.lower() in VIDEO_SUFFIXES
                    and not any(part.endswith(".parts") for part in file.relative_to(path).parts)
                    and not (skip and file.resolve().is_relative_to(skip) and _an_output(file))
                ):
                    inputs.append(Input(str(file), file.parent.relative_to(path)))
        elif path.exists():
            inputs.append(Input(name, Path(".")))
        else:
            raise ValueError(f"no such file or folder: {name} (a live source is `-` or a URL)")
    if [i.source for i in inputs].count(STDIN) > 1:
        raise ValueError("standard input (-) can be read once in a run")
    return inputs, folders


def _an_output(file: Path) -> bool:
    """A segmented video or its matte, as a run writes them."""
    return file.name.endswith((SUFFIX, SUFFIX.replace(".mp4", "_matte.mp4")))


def outputs(inputs: list[Input], out_dir: Path) -> list[Path]:
    """Each input's output in `out_dir`, named after it; no two alike."""
    first = [out_dir / i.folder / (i.name + SUFFIX) for i in inputs]
    names = list(first)
    for k, i in enumerate(inputs):
        if first.count(first[k]) > 1 and not is_live(i.source):
            extension = Path(i.source).suffix.lstrip(".")
            names[k] = out_dir / i.folder / f"{i.name}_{extension}{SUFFIX}"
    seen: dict[Path, int] = {}
    for k, name in enumerate(names):
        if name in seen:
            seen[name] += 1
            names[k] = name.with_name(f"{name.name[: -len(SUFFIX)]}_{seen[name]}{SUFFIX}")
        else:
            seen[name] = 1
    return names


def default_output(source: str) -> Path:
    """The output of a run of one video without --out: named after it, here."""
    return Path(Input(source, Path(".")).name + SUFFIX)
