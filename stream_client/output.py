"""The output of a run, written while it runs: HLS playlists of MPEG-TS segments, then one MP4 per video written.

Each input segment becomes `segment_NNNNN.ts` (the segmented frames, H.264, the source's timestamps, the source's
audio of that time span copied unchanged) and, when the mask is asked for, `matte_NNNNN.ts` (the class mask as a
grayscale video at the model's size, shown at the source's aspect ratio). `playlist.m3u8` (and `matte.m3u8`) list
the finished segments in order as soon as all before them are done, so a player (ffplay, VLC, Safari, hls.js) can
open them mid-run. At the end the segments are remuxed into one MP4 each.

The segments are encoded in parallel, each by a worker process of `encoders`.
"""

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

PLAYLIST = "playlist.m3u8"
MATTE_PLAYLIST = "matte.m3u8"
TS_AUDIO = {"aac", "mp3", "ac3", "eac3", "mp2"}  # audio codecs MPEG-TS carries
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


class VideoWriter:
    """Encodes one segment's pictures into MPEG-TS with their source timestamps; at `close`, copies in the source's
    audio of the segment's span (when `audio_from` is given). A matte is shown at `display_aspect` (the source's
    width / height) however few its pixels. One encoder thread: the same frames always give the same bytes."""

    def __init__(
        self,
        path: Path,
        size: tuple[int, int],
        time_base: Fraction,
        rate: Fraction | None,
        encoding: Encoding,
        *,
        pix_fmt: str = "yuv420p",
        audio_from: Path | None = None,
        display_aspect: Fraction | None = None,
    ) -> None:
        self.path, self.time_base = path, time_base
        self._partial = path.with_name(path.name + ".partial")
        self.container = av.open(str(self._partial), "w", format="mpegts")
        self.video = self.container.add_stream("libx264", rate=Fraction(rate or 30))
        self.video.height, self.video.width = size
        self.video.pix_fmt = pix_fmt
        self.video.codec_context.time_base = time_base
        if display_aspect is not None:
            self.video.codec_context.sample_aspect_ratio = display_aspect * Fraction(size[0], size[1])
        # One thread: the same frames always give the same bytes, so a resumed run equals an uninterrupted one.
        # No B-frames: decode order is display order, so the segments' timestamps join up in the final MP4.
        options = {"crf": str(encoding.crf), "preset": encoding.preset, "threads": "1", "bf": "0"}
        self.video.codec_context.options = options
        self.source = audio_from
        self.audio_in, self.audio = self._audio_stream(audio_from)
        self.count = 0
        self.first_pts: int | None = None
        self.last_pts: int | None = None

    def _audio_stream(self, source: Path | None):
        if source is None:
            return None, None
        with av.open(str(source)) as opened:
            if not opened.streams.audio:
                return None, None
            audio = opened.streams.audio[0]
            if audio.codec_context.name not in TS_AUDIO:
                return None, None  # MPEG-TS cannot carry it (the README says which codecs are kept)
            return audio.index, self.container.add_stream_from_template(audio)

    def write(self, picture: av.VideoFrame, pts: int) -> None:
        picture.pts, picture.time_base = pts, self.time_base
        self.container.mux(self.video.encode(picture))
        self.first_pts = pts if self.first_pts is None else self.first_pts
        self.last_pts = pts
        self.count += 1

    def close(self, audio_from: float | None, audio_until: float | None, frame_duration: float) -> float:
        """Finish the file, with the source's audio in [audio_from, audio_until) s (None: open); its duration (s)."""
        self.container.mux(self.video.encode())
        if self.audio is not None:
            self._copy_audio(audio_from, audio_until)
        self.container.close()
        os.replace(self._partial, self.path)
        if self.first_pts is None:
            return 0.0
        return float((self.last_pts - self.first_pts) * self.time_base) + frame_duration

    def abandon(self) -> None:
        """Drop what was written (the segment will be sent again)."""
        self.container.close()
        self._partial.unlink(missing_ok=True)

    def _copy_audio(self, start: float | None, until: float | None) -> None:
        with av.open(str(self.source)) as source:
            audio = source.streams[self.audio_in]
            if start is not None:
                source.seek(max(0, int(start / audio.time_base) - 1), stream=audio, any_frame=True, backward=True)
            for packet in source.demux(audio):
                if packet.pts is None:
                    continue
                t = float(packet.pts * audio.time_base)
                if start is not None and t < start:
                    continue
                if until is not None and t >= until:
                    break
                packet.stream = self.audio
                self.container.mux(packet)


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


def concat(folder: Path, indices: list[int], out: Path, kind: str = "segment") -> None:
    """Remux these segments, in this order, into one MP4 (no re-encoding; timestamps are already the source's)."""
    partial = out.with_name(out.name + ".partial")
    with av.open(str(partial), "w", format="mp4") as container:
        streams: dict[str, av.stream.Stream] = {}
        for index in indices:
            # The format named: FFmpeg's probe does not recognise a segment of a few tiny frames as MPEG-TS.
            with av.open(str(folder / segment_name(index, kind)), format="mpegts") as segment:
                for stream in segment.streams:
                    if stream.type not in streams:
                        streams[stream.type] = container.add_stream_from_template(stream, opaque=True)
                for packet in segment.demux():
                    if packet.dts is None or packet.stream.type not in streams:
                        continue
                    packet.stream = streams[packet.stream.type]
                    container.mux(packet)
    os.replace(partial, out)
