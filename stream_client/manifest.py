"""What a run has finished, kept beside its output so that `--resume` goes on from the first unfinished segment."""

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from stream_client.gops import SegmentPlan

MANIFEST = "manifest.json"


@dataclass
class Manifest:
    source: str
    source_size: int
    source_mtime_ns: int
    options: dict  # what changes the output: class, threshold, segment limits
    plan_digest: str
    segments: int  # of a live source: cut so far
    done: dict[int, float] = field(default_factory=dict)  # finished segment -> its duration in seconds
    class_name: str | None = None  # the class kept: the one asked for, else the server's default
    sizes: dict[int, list[list[int]]] = field(default_factory=dict)  # finished segment -> `encoders.Written.sizes`
    live: bool = False  # a live source: its segments are cut as it plays, and it cannot be resumed
    dropped: set[int] = field(default_factory=set)  # segments of a live source that fell behind, never written
    # A live source's clock at its first frame (s): the segments keep that clock, the MP4 starts at 0.
    source_start: float | None = None

    @classmethod
    def new(cls, source: Path, options: dict, plan: list[SegmentPlan], class_name: str | None = None) -> "Manifest":
        stat = source.stat()
        digest = hashlib.sha256(json.dumps([asdict(p) for p in plan]).encode()).hexdigest()
        return cls(str(source.resolve()), stat.st_size, stat.st_mtime_ns, options, digest, len(plan), {}, class_name)

    @classmethod
    def new_live(cls, source: str, options: dict, class_name: str | None = None) -> "Manifest":
        return cls(source, 0, 0, options, "", 0, {}, class_name, live=True)

    def same_run(self, other: "Manifest") -> bool:
        return (self.source, self.source_size, self.source_mtime_ns, self.options, self.plan_digest) == (
            other.source, other.source_size, other.source_mtime_ns, other.options, other.plan_digest
        )  # fmt: skip

    def __post_init__(self) -> None:
        self._listed: list[tuple[int, float]] = []  # grows only: segments are done or dropped once
        self._next = 0

    def listed(self) -> list[tuple[int, float]]:
        """(segment, duration) of the segments done in order from the first, past any dropped: what a playlist may
        list."""
        while self._next in self.done or self._next in self.dropped:
            if self._next in self.done:
                self._listed.append((self._next, self.done[self._next]))
            self._next += 1
        return list(self._listed)

    def finished_prefix(self) -> list[float]:
        """Durations of the listed segments."""
        return [duration for _, duration in self.listed()]

    @property
    def complete(self) -> bool:
        return len(self.done) + len(self.dropped) == self.segments

    def save(self, folder: Path) -> None:
        tmp = folder / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps({**asdict(self), "dropped": sorted(self.dropped)}, indent=1))
        os.replace(tmp, folder / MANIFEST)

    @classmethod
    def load(cls, folder: Path) -> "Manifest | None":
        path = folder / MANIFEST
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        for name in ("done", "sizes"):
            data[name] = {int(k): v for k, v in data.get(name, {}).items()}
        data["dropped"] = set(data.get("dropped", ()))
        return cls(**data)
