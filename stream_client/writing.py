"""Writing: one video's output while its run goes on, and at its end.

Its parts folder (`OUT.parts`, beside the output) holds the finished segments (written by `encoders`), the playlists
that list them in order as they are done (`output`), the manifest of what is done (what `--resume` goes on from) and
the timeline. At the end the segments are remuxed into the MP4 (and the matte), and the timeline is written beside it.
A video that fails or is cancelled leaves what a resumed run uses: no half-written files, and no parts folder at all
when no segment was finished.
"""

import shutil
from fractions import Fraction
from pathlib import Path

from stream_client import output, protocol
from stream_client.manifest import Manifest
from stream_client.timeline import Timeline


class OutputError(RuntimeError):
    pass


def parts_folder(out: Path) -> Path:
    """Where a run keeps its segments, playlists and manifest: beside the output."""
    return out.with_name(out.name + ".parts")


class VideoOutput:
    def __init__(self, out: Path, kinds: tuple[str, ...], live_window: int | None = None) -> None:
        """`kinds`: "segment" (the segmented video), "matte". `live_window`: list only the last N segments."""
        self.out, self.kinds, self.live_window = Path(out), kinds, live_window
        self.parts = parts_folder(self.out)
        self.manifest: Manifest | None = None
        self.timeline: Timeline | None = None

    @property
    def playlists(self) -> list[tuple[str, str]]:
        """(kind, playlist name) of what is written."""
        names = {"segment": output.PLAYLIST, "matte": output.MATTE_PLAYLIST}
        return [(kind, names[kind]) for kind in self.kinds]

    @property
    def written_paths(self) -> dict[str, Path]:
        paths = {"segment": self.out, "matte": output.matte_path(self.out)}
        return {kind: paths[kind] for kind in self.kinds}

    def prepare(self, manifest: Manifest, resume: bool, timeline: Timeline) -> Manifest:
        """The parts folder for this run: a new one, or with `resume` the earlier run's (which must be the same run)."""
        if resume and (previous := Manifest.load(self.parts)) is not None:
            if not previous.same_run(manifest):
                raise OutputError(
                    f"{self.parts} holds a run of another source or other options: remove it to start anew"
                )
            manifest = previous
            timeline = Timeline.load(self.parts) or timeline
        elif self.parts.exists():
            if Manifest.load(self.parts) is not None and not resume:
                raise OutputError(f"{self.parts} holds an earlier run: add --resume to go on with it, or remove it")
            shutil.rmtree(self.parts)
        self.parts.mkdir(parents=True, exist_ok=True)
        manifest.save(self.parts)
        self.manifest, self.timeline = manifest, timeline
        return manifest

    def cut(self, segments: int) -> None:
        """A live source has been cut into this many segments so far."""
        self.manifest.segments = segments

    def written(self, index: int, duration: float, sizes: list[list[int]] | None) -> list[int]:
        """Segment `index` is done (`sizes`: where its frames change size, `encoders.Written`): recorded, and listed
        once those before it are; the segments newly listed."""
        before = len(self.manifest.listed())
        self.manifest.done[index] = duration
        self.manifest.sizes[index] = sizes or []
        self.manifest.save(self.parts)
        self.timeline.commit(index)
        self.timeline.save(self.parts)
        return self._list(before)

    def dropped(self, indices: list[int]) -> list[int]:
        """Segments of a live source that fell behind: never written, passed over by the playlists."""
        before = len(self.manifest.listed())
        self.manifest.dropped.update(indices)
        self.manifest.save(self.parts)
        return self._list(before)

    def _list(self, before: int, finished: bool = False) -> list[int]:
        listed = self.manifest.listed()
        if len(listed) != before or finished:
            for kind, name in self.playlists:
                output.write_playlist(self.parts, listed, finished=finished, name=name, kind=kind,
                                      window=self.live_window)  # fmt: skip
        return [index for index, _ in listed[before:]]

    def finish(self, class_name: str, refit: output.Refit | None = None) -> None:
        """The run of this video is over: the playlists end, the segments become the MP4 (`refit`'s frames scaled to
        one size), the timeline is beside it."""
        self.timeline.save(self.parts)
        self._list(len(self.manifest.listed()), finished=True)
        indices = [index for index, _ in self.manifest.listed()]
        for kind, path in self.written_paths.items():
            output.concat(self.parts, indices, path, kind, refit if kind == "segment" else None, self.manifest.live)
        self.timeline.write_beside(self.out, class_name)

    def size_changes(self, first: tuple[int, int], time_base: Fraction, first_pts: int) -> list[str]:
        """Where the decoded frames change size, in order: "160x120 to 128x96 at frame 15 (0.60 s)"."""
        changes, size = [], first
        for frame, pts, height, width in sorted(run for runs in self.manifest.sizes.values() for run in runs):
            if (height, width) != size:
                seconds = float((pts - first_pts) * time_base)
                changes.append(f"{size[1]}x{size[0]} to {width}x{height} at frame {frame} ({seconds:.2f} s)")
                size = (height, width)
        return changes

    def refit(self, first: tuple[int, int], rate: Fraction | None, encoding: output.Encoding) -> output.Refit:
        """The segments whose frames are not all of the video's first size (H, W), which the MP4 gets scaled to it."""
        scaled = frozenset(i for i, runs in self.manifest.sizes.items() if any(run[2:] != list(first) for run in runs))
        return output.Refit(scaled, protocol.padded_size(*first), rate, encoding)

    def what_is_done(self) -> str:
        manifest = self.manifest
        if manifest is None or not manifest.done:
            return "no segment was finished"
        return (
            f"{len(manifest.done)} of {manifest.segments} segments are done in {self.parts}; run again with --resume "
            "to go on"
        )

    def tidy(self) -> None:
        """After a failure or a cancellation (once the encoders have stopped writing): what a resumed run uses."""
        if self.manifest is None:
            return
        if self.manifest.done:
            for partial in self.parts.glob("*.partial"):
                partial.unlink(missing_ok=True)
        else:
            shutil.rmtree(self.parts, ignore_errors=True)
