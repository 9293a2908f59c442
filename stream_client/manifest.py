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
    segments: int
    done: dict[int, float] = field(default_factory=dict)  # finished segment -> its duration in seconds
    class_name: str | None = None  # the class kept: the one asked for, else the server's default

    @classmethod
    def new(cls, source: Path, options: dict, plan: list[SegmentPlan], class_name: str | None = None) -> "Manifest":
        stat = source.stat()
        digest = hashlib.sha256(json.dumps([asdict(p) for p in plan]).encode()).hexdigest()
        return cls(str(source.resolve()), stat.st_size, stat.st_mtime_ns, options, digest, len(plan), {}, class_name)

    def same_run(self, other: "Manifest") -> bool:
        return (self.source, self.source_size, self.source_mtime_ns, self.options, self.plan_digest) == (
            other.source, other.source_size, other.source_mtime_ns, other.options, other.plan_digest
        )  # fmt: skip

    def finished_prefix(self) -> list[float]:
        """Durations of the segments done in order from the first: what a playlist may list."""
        durations = []
        while len(durations) in self.done:
            durations.append(self.done[len(durations)])
        return durations

    def save(self, folder: Path) -> None:
        tmp = folder / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, folder / MANIFEST)

    @classmethod
    def load(cls, folder: Path) -> "Manifest | None":
        path = folder / MANIFEST
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        data["done"] = {int(k): v for k, v in data["done"].items()}
        return cls(**data)
