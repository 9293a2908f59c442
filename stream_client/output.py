"""The output of a run, written while it runs: an HLS playlist of MPEG-TS segments, then one MP4.

Each input segment becomes `segment_NNNNN.ts` (H.264, the source's timestamps, the source's audio of that time span
copied unchanged); `playlist.m3u8` lists the finished segments in order as soon as all before them are done, so a
player (ffplay, VLC, Safari, hls.js) can open it mid-run. At the end the segments are remuxed into one MP4.
"""

import math
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

PLAYLIST = "playlist.m3u8"
TS_AUDIO = {"aac", "mp3", "ac3", "eac3", "mp2"}  # audio codecs MPEG-TS carries


def segment_name(index: int) -> str:
    return f"segment_{index:05d}.ts"


class SegmentWriter:
    """Encodes one segment's frames with their source timestamps and copies the source audio of its time span."""

    def __init__(self, path: Path, source: Path, size: tuple[int, int], time_base: Fraction, rate: Fraction | None):
        self.path, self.source, self.time_base = path, source, time_base
        self.height, self.width = size
        self._partial = path.with_name(path.name + ".partial")
        self.container = av.open(str(self._partial), "w", format="mpegts")
        self.video = self.container.add_stream("libx264", rate=Fraction(rate or 30))
        self.video.height, self.video.width = self.height + self.height % 2, self.width + self.width % 2
        self.video.pix_fmt = "yuv420p"
        self.video.codec_context.time_base = time_base
        # One thread: the same frames always give the same bytes, so a resumed run equals an uninterrupted one.
        # No B-frames: decode order is display order, so the segments' timestamps join up in the final MP4.
        self.video.codec_context.options = {"crf": "18", "preset": "veryfast", "threads": "1", "bf": "0"}
        self.audio_in, self.audio = self._audio_stream()
        self.count = 0
        self.first_pts: int | None = None
        self.last_pts: int | None = None

    def _audio_stream(self):
        with av.open(str(self.source)) as source:
            if not source.streams.audio:
                return None, None
            audio = source.streams.audio[0]
            if audio.codec_context.name not in TS_AUDIO:
                return None, None  # MPEG-TS cannot carry it (the README says which codecs are kept)
            return audio.index, self.container.add_stream_from_template(audio)

    def write(self, frame: np.ndarray, pts: int) -> None:
        h, w = frame.shape[:2]
        if h % 2 or w % 2:  # yuv420p needs even sizes: repeat the last row / column
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame.pts, video_frame.time_base = pts, self.time_base
        self.container.mux(self.video.encode(video_frame))
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


def write_playlist(folder: Path, durations: list[float], finished: bool) -> None:
    """The playlist of the segments done in order so far; EVENT while running, ENDLIST when finished."""
    target = max([math.ceil(d) for d in durations] + [1])
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{target}", "#EXT-X-MEDIA-SEQUENCE:0"]
    lines.append("#EXT-X-PLAYLIST-TYPE:" + ("VOD" if finished else "EVENT"))
    for index, duration in enumerate(durations):
        lines += [f"#EXTINF:{duration:.6f},", segment_name(index)]
    if finished:
        lines.append("#EXT-X-ENDLIST")
    tmp = folder / (PLAYLIST + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, folder / PLAYLIST)


def concat(folder: Path, count: int, out: Path) -> None:
    """Remux segments 0..count-1 into one MP4 (no re-encoding; timestamps are already the source's)."""
    partial = out.with_name(out.name + ".partial")
    with av.open(str(partial), "w", format="mp4") as container:
        streams: dict[str, av.stream.Stream] = {}
        for index in range(count):
            # The format named: FFmpeg's probe does not recognise a segment of a few tiny frames as MPEG-TS.
            with av.open(str(folder / segment_name(index)), format="mpegts") as segment:
                for stream in segment.streams:
                    if stream.type not in streams:
                        streams[stream.type] = container.add_stream_from_template(stream)
                for packet in segment.demux():
                    if packet.dts is None or packet.stream.type not in streams:
                        continue
                    packet.stream = streams[packet.stream.type]
                    container.mux(packet)
    os.replace(partial, out)
