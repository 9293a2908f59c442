"""The output of a run, written while it runs: HLS playlists of MPEG-TS segments, then one MP4 per video written.

Each input segment becomes `segment_NNNNN.ts` (the segmented frames, H.264, the source's timestamps, the source's
audio of that time span: `audio`) and, when the mask is asked for, `matte_NNNNN.ts` (the class mask as a
grayscale video at the model's size, shown at the source's aspect ratio). `playlist.m3u8` (and `matte.m3u8`) list
the finished segments in order as soon as all before them are done, so a player (ffplay, VLC, Safari, hls.js) can
open them mid-run. At the end the segments are remuxed into one MP4 each.

The segments are encoded in parallel, each by a worker process of `encoders`.
"""

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from av.video.codeccontext import VideoCodecContext

from stream_client import audio, videos
from stream_client.audio import AudioTrack

PLAYLIST = "playlist.m3u8"
MATTE_PLAYLIST = "matte.m3u8"
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


@dataclass(frozen=True)
class Encoding:
    """How the output is encoded: x264's preset (speed against size) and constant rate factor (quality)."""

    preset: str = "ultrafast"  # the encoder is the client's largest cost: the fastest, at a larger file
    crf: int = 18

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"the x264 preset must be one of {', '.join(PRESETS)}, not {self.preset!r}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"the crf must be in [0, 51], not {self.crf}")


def segment_name(index: int, kind: str = "segment") -> str:
    return f"{kind}_{index:05d}.ts"


def matte_path(out: Path) -> Path:
    """Where the matte video of a run goes: beside its segmented video."""
    return out.with_name(f"{out.stem}_matte{out.suffix}")


def h264(
    context: VideoCodecContext | None,
    size: tuple[int, int],
    time_base: Fraction,
    rate: Fraction | None,
    encoding: Encoding,
    pix_fmt: str = "yuv420p",
) -> VideoCodecContext:
    """`context` (None: a new x264 encoder) set up as every segment is encoded, for pictures of `size` (H, W)."""
    context = context or av.CodecContext.create("libx264", "w")
    context.height, context.width = size
    context.pix_fmt, context.time_base, context.framerate = pix_fmt, time_base, Fraction(rate or 30)
    # One thread: the same frames always give the same bytes, so a resumed run equals an uninterrupted one.
    # No B-frames: decode order is display order, so the segments' timestamps join up in the final MP4.
    context.options = {"crf": str(encoding.crf), "preset": encoding.preset, "threads": "1", "bf": "0"}
    return context


class VideoWriter:
    """Encodes one segment's pictures into MPEG-TS with their source timestamps; at `close`, copies in the `audio`
    tracks' packets of the segment's span. A matte is shown at `display_aspect` (the source's width / height) however
    few its pixels. One encoder thread: the same frames always give the same bytes.

    A picture of another size than the one before starts a new encoder for its size: MPEG-TS carries H.264 whose
    size changes at a keyframe (its parameter sets come with each keyframe)."""

    def __init__(
        self,
        path: Path,
        size: tuple[int, int],
        time_base: Fraction,
        rate: Fraction | None,
        encoding: Encoding,
        *,
        pix_fmt: str = "yuv420p",
        audio: Sequence[AudioTrack] = (),
        display_aspect: Fraction | None = None,
    ) -> None:
        self.path, self.time_base, self.rate, self.encoding, self.pix_fmt = path, time_base, rate, encoding, pix_fmt
        self._partial = path.with_name(path.name + ".partial")
        self.container = av.open(str(self._partial), "w", format="mpegts")
        self.video = self.container.add_stream("libx264", rate=Fraction(rate or 30))
        self.size = size
        self.encoder = h264(self.video.codec_context, size, time_base, rate, encoding, pix_fmt)
        if display_aspect is not None:
            self.encoder.sample_aspect_ratio = display_aspect * Fraction(size[0], size[1])
        self.audio = [(track, self._audio_stream(track)) for track in audio if track.file is not None]
        self.count = 0
        self.first_pts: int | None = None
        self.last_pts: int | None = None

    def _audio_stream(self, track: AudioTrack) -> av.stream.Stream:
        with av.open(track.file, format="mpegts" if track.file.endswith(".ts") else None) as opened:
            return self.container.add_stream_from_template(opened.streams[track.stream], opaque=True)

    def write(self, picture: av.VideoFrame, pts: int) -> None:
        if (picture.height, picture.width) != self.size:
            self._mux(self.encoder.encode(None))
            self.size = (picture.height, picture.width)
            self.encoder = h264(None, self.size, self.time_base, self.rate, self.encoding, self.pix_fmt)
        picture.pts, picture.time_base = pts, self.time_base
        self._mux(self.encoder.encode(picture))
        self.first_pts = pts if self.first_pts is None else self.first_pts
        self.last_pts = pts
        self.count += 1

    def close(self, audio_from: float | None, audio_until: float | None, frame_duration: float) -> float:
        """Finish the file, with the source's audio in [audio_from, audio_until) s (None: open); its duration (s)."""
        self._mux(self.encoder.encode(None))
        for track, stream in self.audio:
            audio.copy_span(self.container, stream, track, audio_from, audio_until)
        self.container.close()
        os.replace(self._partial, self.path)
        if self.first_pts is None:
            return 0.0
        return float((self.last_pts - self.first_pts) * self.time_base) + frame_duration

    def _mux(self, packets: list[av.Packet]) -> None:
        _mux_to(self.container, self.video, packets)  # also those of an encoder after a size change: no stream

    def abandon(self) -> None:
        """Drop what was written (the segment will be sent again)."""
        self.container.close()
        self._partial.unlink(missing_ok=True)


def write_playlist(folder: Path, listed: list[tuple[int, float]], finished: bool, name: str = PLAYLIST,
                   kind: str = "segment", window: int | None = None) -> None:  # fmt: skip
    """The playlist of the segments done in order so far, `listed` as (segment, duration): EVENT while running,
    ENDLIST when finished. With `window`, a live playlist of the last `window` only (its media sequence counts those
    left out). A segment after one that was dropped (a live source that fell behind) follows a discontinuity."""
    skipped = max(0, len(listed) - window) if window else 0
    shown = listed[skipped:]
    target = max([math.ceil(d) for _, d in shown] + [1])
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{target}", f"#EXT-X-MEDIA-SEQUENCE:{skipped}"]
    if not window:
        lines.append("#EXT-X-PLAYLIST-TYPE:" + ("VOD" if finished else "EVENT"))
    previous = listed[skipped - 1][0] if skipped else -1
    for index, duration in shown:
        if previous >= 0 and index != previous + 1:
            lines.append("#EXT-X-DISCONTINUITY")
        lines += [f"#EXTINF:{duration:.6f},", segment_name(index, kind)]
        previous = index
    if finished:
        lines.append("#EXT-X-ENDLIST")
    tmp = folder / (name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, folder / name)


@dataclass(frozen=True)
class Refit:
    """Segments whose frames are not all of the video's first size, which an MP4's one H.264 track must have: their
    frames are scaled to `size` (H, W), their aspect kept, and encoded again."""

    segments: frozenset[int]
    size: tuple[int, int]
    rate: Fraction | None
    encoding: Encoding


def concat(folder: Path, indices: list[int], out: Path, kind: str = "segment", refit: Refit | None = None,
           rebase: bool = False) -> None:  # fmt: skip
    """Remux these segments, in this order, into one MP4 (no re-encoding but `refit`'s; timestamps are already the
    source's). `rebase`: the MP4 starts at its first frame (a live source's clock started long before: kept as it
    is, players that honour the MP4's edit list would show that long of nothing first)."""
    partial = out.with_name(out.name + ".partial")
    origin: int | None = None if rebase else 0  # subtracted from every timestamp (MPEG-TS: one time base)
    with av.open(str(partial), "w", format="mp4") as container:
        streams: dict[int, av.stream.Stream] = {}  # every segment has the same streams: the video, then the audio
        for index in indices:
            # The format named: FFmpeg's probe does not recognise a segment of a few tiny frames as MPEG-TS.
            with av.open(str(folder / segment_name(index, kind)), format="mpegts") as segment:
                for stream in segment.streams:
                    if stream.index not in streams:
                        streams[stream.index] = container.add_stream_from_template(stream, opaque=True)
                video = segment.streams.video[0]
                encoder = None
                if refit is not None and index in refit.segments:
                    encoder = h264(None, refit.size, video.time_base, refit.rate, refit.encoding)
                for packet in segment.demux():
                    if origin is None and packet.dts is not None:
                        origin = packet.dts  # the first in decode order: the smallest
                    if encoder is not None and packet.stream.index == video.index:
                        for frame in packet.decode():  # the last, empty packet ends the decoding
                            picture = videos.fit(frame, *refit.size)
                            _mux_to(container, streams[video.index], encoder.encode(picture), origin or 0)
                        continue
                    if packet.dts is None or packet.stream.index not in streams:
                        continue
                    _mux_to(container, streams[packet.stream.index], [packet], origin or 0)
                if encoder is not None:
                    _mux_to(container, streams[video.index], encoder.encode(None), origin or 0)
    os.replace(partial, out)


def _mux_to(container: av.container.OutputContainer, stream: av.stream.Stream, packets: list[av.Packet],
            origin: int = 0) -> None:  # fmt: skip
    for packet in packets:
        packet.stream = stream
        packet.dts = None if packet.dts is None else packet.dts - origin
        packet.pts = None if packet.pts is None else packet.pts - origin
        container.mux(packet)
