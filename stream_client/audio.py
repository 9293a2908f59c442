"""The source's audio in the output: every track, copied where MPEG-TS (the segments) carries its codec, else
transcoded once to AAC into the parts folder at the start of the run and copied from there; a track that cannot be
carried is left out, and the run says why.

Each segment gets the audio of its own span, copied packet by packet (`copy_span`), so the final MP4 holds every
track whole, with the source's timing.
"""

import itertools
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import av

TS_AUDIO = {"aac", "mp3", "ac3", "eac3", "mp2"}  # audio codecs MPEG-TS carries (and MP4)
TRANSCODED = "aac"
AAC_BITS_PER_CHANNEL = 64000  # per second: 128 kbit/s for stereo


@dataclass(frozen=True)
class AudioTrack:
    """An audio track of the source and what the output gets of it."""

    number: int  # 1, 2, ... among the source's audio tracks
    codec: str
    outcome: str  # "copied", "transcoded to aac" or "left out"
    reason: str = ""  # why it is not copied
    file: str | None = None  # where its packets are copied from: the source, or its AAC copy in the parts folder
    stream: int = 0  # their stream's index in that file

    def line(self) -> str:
        return f"audio {self.number} ({self.codec}) {self.outcome}" + (f": {self.reason}" if self.reason else "")

    def as_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key not in ("file", "stream")}


def tracks(source: Path, parts: Path, say: Callable[[str], None] = print) -> list[AudioTrack]:
    """What the output gets of each audio track of `source`; AAC copies of the others are written into `parts` (those
    an earlier run left there are kept). `say` is told of every track not copied, before it is transcoded."""
    with av.open(str(source)) as container:
        streams = list(container.streams.audio)
        codecs = {s.index: s.codec_context.codec.canonical_name for s in streams}
        packets = dict.fromkeys(codecs, 0)
        for packet in container.demux(streams) if streams else ():
            if packet.size:  # not the empty packets that end each stream
                packets[packet.stream.index] += 1
    found = []
    for number, (index, codec) in enumerate(codecs.items(), 1):
        if not packets[index]:
            track = AudioTrack(number, codec, "left out", "the track holds no sound")
        elif codec in TS_AUDIO:
            track = AudioTrack(number, codec, "copied", file=str(source), stream=index)
        else:
            out, why = parts / f"audio_{number}.ts", f"MPEG-TS does not carry {codec}"
            track = AudioTrack(number, codec, f"transcoded to {TRANSCODED}", why, str(out))
            say(track.line())
            try:
                if not out.exists():
                    _transcode(source, index, out)
            except (av.FFmpegError, ValueError) as e:
                track = AudioTrack(number, codec, "left out", f"transcoding it to {TRANSCODED} failed: {e}")
        if track.outcome == "left out":
            say(track.line())
        found.append(track)
    return found


def _transcode(source: Path, index: int, out: Path) -> None:
    """Audio stream `index` of `source` as AAC in MPEG-TS, with the source's timestamps."""
    partial = out.with_name(out.name + ".partial")
    try:
        _encode_aac(source, index, partial)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, out)


def _encode_aac(source: Path, index: int, partial: Path) -> None:
    with av.open(str(source)) as container, av.open(str(partial), "w", format="mpegts") as target:
        context = container.streams[index].codec_context
        rates = av.Codec(TRANSCODED, "w").audio_rates
        rate = context.sample_rate if context.sample_rate in rates else 48000
        stream = target.add_stream(TRANSCODED, rate=rate)
        stream.layout = f"{context.channels}c"  # the default layout of its channels (a PCM track may name none)
        stream.bit_rate = AAC_BITS_PER_CHANNEL * max(2, context.channels)
        for frame in itertools.chain(container.decode(container.streams[index]), [None]):
            for packet in stream.encode(frame):  # PyAV resamples and cuts the frames as the encoder wants them
                # The encoder's priming packet comes before the source's first sample: no segment copies it.
                if packet.pts is not None and packet.pts >= 0:
                    target.mux(packet)


def copy_span(container: av.container.OutputContainer, target: av.stream.Stream, track: AudioTrack,
              start: float | None, until: float | None) -> None:  # fmt: skip
    """Copy `track`'s packets of [start, until) s (None: open) into `target` of `container`."""
    # The format named: FFmpeg's probe may not recognise a short audio-only MPEG-TS.
    with av.open(track.file, format="mpegts" if track.file.endswith(".ts") else None) as source:
        audio = source.streams[track.stream]
        if start is not None:  # a second early: seeking lands near, not exactly, and the loop skips what is before
            source.seek(max(0, int((start - 1) / audio.time_base)), stream=audio, any_frame=True, backward=True)
        for packet in source.demux(audio):
            if packet.pts is None:
                continue
            t = float(packet.pts * audio.time_base)
            if start is not None and t < start:
                continue
            if until is not None and t >= until:
                break
            packet.stream = target
            container.mux(packet)
