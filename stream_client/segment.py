"""The main job: segment one video file through a server and write the segmented video, frames in order."""

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from pipelines.probe import probe
from stream_client import videos
from stream_client.reorder import Reorderer
from stream_client.stream import Chunk, Failed, Finished, SegmentationStream


class SegmentError(RuntimeError):
    pass


@dataclass
class Summary:
    source: str
    output: str
    frames: int
    seconds: float
    frames_per_second: float
    first_chunk_seconds: float | None
    kept_pixels: float  # the share of pixels the mask kept, over the whole video
    reencoded_to: str | None  # the codec the client re-encoded to for a CPU server, if it did

    def line(self) -> str:
        first = f"{self.first_chunk_seconds:.2f} s" if self.first_chunk_seconds is not None else "-"
        note = f", re-encoded to {self.reencoded_to} for the server's CPU decoder" if self.reencoded_to else ""
        return (
            f"{self.frames} frames in {self.seconds:.1f} s: {self.frames_per_second:.1f} frames/s, "
            f"first chunk after {first}, {100 * self.kept_pixels:.1f} % of pixels kept{note} -> {self.output}"
        )

    def as_dict(self) -> dict:
        return asdict(self)


class Progress:
    """A line per chunk with a bar, frames/s and the time left."""

    def __init__(self, total: int, out: TextIO, width: int = 24) -> None:
        self.total, self.out, self.width = total, out, width
        self.start = time.monotonic()
        self.chunks = 0

    def chunk(self, first: int, count: int, done: int) -> None:
        self.chunks += 1
        elapsed = time.monotonic() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        filled = self.width * done // max(self.total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        print(
            f"chunk {self.chunks:4d}  frames {first:6d}-{first + count - 1:<6d} [{bar}] {done}/{self.total} "
            f"{100 * done / max(self.total, 1):5.1f}%  {rate:7.1f} frames/s  ETA {eta:6.1f} s",
            file=self.out,
            flush=True,
        )


def segment_file(
    source: Path,
    output: Path,
    url: str,
    *,
    class_name: str | None = None,
    threshold: float | None = None,
    dump_images: Path | None = None,
    progress_out: TextIO | None = None,
) -> Summary:
    """`progress_out`: where the per-chunk lines go (default: standard error)."""
    progress_out = progress_out or sys.stderr
    data = Path(source).read_bytes()
    try:
        found = probe(data)
    except ValueError as e:
        raise SegmentError(f"{source}: {e}") from None
    with SegmentationStream(url) as stream:
        server = stream.server_info()
        reencoded = None
        if found.codec not in server.codecs:
            print(
                f"the server decodes on the {server.decoder_device} and reads {', '.join(server.codecs)}: "
                f"re-encoding {found.codec} to {videos.CPU_CODEC} for it",
                file=progress_out,
            )
            data = videos.reencode_for_cpu(data, found.rate)
            reencoded = videos.CPU_CODEC
            found = probe(data)
        originals = videos.frames(Path(source)) if dump_images else None
        if dump_images:
            dump_images.mkdir(parents=True, exist_ok=True)
        progress = Progress(found.packets, progress_out)
        reorder = Reorderer()
        first_chunk = None
        kept = total = 0
        start = time.monotonic()
        stream.send("video", data, class_name=class_name, threshold=threshold)
        with videos.VideoWriter(Path(output), found.rate) as writer:
            while True:
                event = stream.next_event()
                if isinstance(event, Failed):
                    raise SegmentError(
                        f"the server failed on {source}: {event.message} "
                        f"(the {writer.count} frames done before are in {output})"
                    )
                if isinstance(event, Finished):
                    break
                assert isinstance(event, Chunk)
                first_chunk = first_chunk if first_chunk is not None else time.monotonic() - start
                kept += int(event.frames.any(axis=-1).sum())
                total += event.frames.shape[0] * event.frames.shape[1] * event.frames.shape[2]
                for frame in reorder.push(event.first, event.frames):
                    if originals is not None:
                        videos.save_image(dump_images / f"original_{writer.count:06d}.png", next(originals))
                        videos.save_image(dump_images / f"segmented_{writer.count:06d}.png", frame)
                    writer.write(frame)
                progress.chunk(event.first, len(event.frames), reorder.next_index)
        seconds = time.monotonic() - start
    reorder.finish()
    if writer.count != found.packets:
        raise SegmentError(f"{writer.count} frames came back for the {found.packets} of {source}")
    return Summary(
        str(source),
        str(output),
        writer.count,
        seconds,
        writer.count / seconds,
        first_chunk,
        kept / max(total, 1),
        reencoded,
    )
