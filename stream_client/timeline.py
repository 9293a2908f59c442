"""Where in the video the class is: the share of its pixels per second of video, filled in as chunks arrive.

Kept beside a run's segments while it runs (`timeline.json` in the parts folder: what the preview page draws), and
written beside its output at the end as JSON, CSV and a PNG, for people who do not open a browser.
"""

import json
import math
import os
from pathlib import Path

import numpy as np

from stream_client.videos import save_image

FILE = "timeline.json"


class Timeline:
    """Per second of video (from the video's first frame): frames seen and the sum of their kept shares.

    A segment's frames count as they arrive and are settled when its files are written (`commit`); a segment that
    fails is taken out again (`drop`) before it is sent again, and a saved timeline holds settled segments only, so
    that a retried or resumed segment is never counted twice."""

    def __init__(self, seconds: float, grows: bool = False) -> None:
        """`seconds` of video; with `grows` (a live source) as many more as its frames reach."""
        self.length = max(1, math.ceil(seconds))
        self.grows = grows
        self._frames = np.zeros(self.length, np.int64)
        self._kept = np.zeros(self.length, np.float64)
        self._pending: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}

    @property
    def frames(self) -> np.ndarray:
        return self._frames[: self.length]

    @property
    def kept(self) -> np.ndarray:
        return self._kept[: self.length]

    def add(self, segment: int, seconds: np.ndarray, shares: np.ndarray) -> None:
        """The segment's frames at `seconds` (from the start) with the share of their pixels the mask kept."""
        index = seconds.astype(np.int64)
        if self.grows and len(index) and index.max() >= self.length:
            self._grow(int(index.max()) + 1)
        index = np.clip(index, 0, self.length - 1)
        np.add.at(self.frames, index, 1)
        np.add.at(self.kept, index, shares)
        self._pending.setdefault(segment, []).append((index, shares))

    def _grow(self, length: int) -> None:
        if length > len(self._frames):  # doubled: a long live run copies its arrays a few times, not every second
            capacity = max(length, 2 * len(self._frames))
            self._frames = np.concatenate([self._frames, np.zeros(capacity - len(self._frames), np.int64)])
            self._kept = np.concatenate([self._kept, np.zeros(capacity - len(self._kept), np.float64)])
        self.length = length

    def commit(self, segment: int) -> None:
        self._pending.pop(segment, None)

    def drop(self, segment: int) -> None:
        _take_out(self.frames, self.kept, self._pending.pop(segment, []))

    def points(self) -> list[dict]:
        """The seconds with frames: {"second", "kept"} (the mean share over that second's frames)."""
        return [{"second": int(s), "kept": round(float(self.kept[s] / self.frames[s]), 5)}
                for s in np.flatnonzero(self.frames)]  # fmt: skip

    def as_dict(self) -> dict:
        """The settled segments' counts."""
        frames, kept = self.frames.copy(), self.kept.copy()
        _take_out(frames, kept, [part for parts in self._pending.values() for part in parts])
        return {"seconds": len(frames), "frames": frames.tolist(), "kept": kept.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "Timeline":
        timeline = cls(data["seconds"])
        timeline.frames[:] = data["frames"]
        timeline.kept[:] = data["kept"]
        return timeline

    def save(self, folder: Path) -> None:
        tmp = folder / (FILE + ".tmp")
        tmp.write_text(json.dumps(self.as_dict()))
        os.replace(tmp, folder / FILE)

    @classmethod
    def load(cls, folder: Path) -> "Timeline | None":
        path = folder / FILE
        return cls.from_dict(json.loads(path.read_text())) if path.exists() else None

    def write_beside(self, out: Path, class_name: str) -> list[Path]:
        """`OUT_timeline.json`, `.csv` and `.png` beside the output."""
        stem = out.with_name(f"{out.stem}_timeline")
        points = self.points()
        stem.with_suffix(".json").write_text(json.dumps({"class": class_name, "per_second": points}, indent=1))
        csv = ["second,kept_share"] + [f"{p['second']},{p['kept']}" for p in points]
        stem.with_suffix(".csv").write_text("\n".join(csv) + "\n")
        save_image(stem.with_suffix(".png"), self.picture())
        return [stem.with_suffix(s) for s in (".json", ".csv", ".png")]

    def picture(self, height: int = 120) -> np.ndarray:
        """Bars, a column (or more) per second: the kept share as the bar's height; seconds not seen are grey."""
        seconds = len(self.frames)
        width = max(2, math.ceil(640 / seconds)) * seconds if seconds < 640 else seconds
        image = np.full((height, width, 3), 24, np.uint8)
        columns = np.arange(width) * seconds // width
        seen = self.frames[columns] > 0
        share = np.where(seen, self.kept[columns] / np.maximum(self.frames[columns], 1), 0)
        rows = np.arange(height)[:, None]
        bar = rows >= height - np.round(share * (height - 1))[None, :]
        image[:, ~seen] = 64
        image[bar & seen[None, :]] = (64, 200, 120)
        return image


def _take_out(frames: np.ndarray, kept: np.ndarray, parts: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Subtract what `Timeline.add` added for these parts."""
    for index, shares in parts:
        np.subtract.at(frames, index, 1)
        np.subtract.at(kept, index, shares)
