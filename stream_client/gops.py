"""Split an encoded video at safe keyframes into independently decodable Matroska segments, without re-encoding.

A keyframe is a safe cut when decoding from it alone gives exactly the frames the whole file gives from there on:
- every packet before it in decode order is shown before it, and every packet after it is shown after it (no leading
  pictures, which in open GOPs reference the previous GOP; checked on the packets' pts);
- for H.264 it is an IDR picture, or an I picture with a recovery point SEI (recovery_frame_cnt 0, exact match);
  for HEVC it is an IRAP picture (IDR, CRA, BLA); other codecs trust the container's keyframe flag.
"""

import io
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from itertools import islice
from pathlib import Path

import av


@dataclass(frozen=True)
class SegmentPlan:
    """Where segment `index` lies: packets [first_packet, end_packet) of the video stream, counted in demux order
    over its non-empty packets."""

    index: int
    first_packet: int
    end_packet: int
    first_frame: int
    frames: int
    start_pts: float
    size: int  # bytes of its packets


@dataclass(frozen=True)
class Segment:
    """One piece of the video that decodes on its own to the whole decode's frames [first_frame, first_frame+frames)."""

    index: int  # 0, 1, 2, ...
    first_frame: int  # index, in display order of the whole video, of this segment's first frame
    frames: int  # how many frames decoding this segment gives
    data: bytes  # a Matroska file holding only the video stream's packets of this segment
    start_pts: float  # presentation time (s) of its first frame in the source
    pts: tuple[int, ...] = ()  # its frames' timestamps in display order, in the source's time base


def plan(
    path: Path, *, max_seconds: float | None = 10.0, max_bytes: int | None = None, max_frames: int | None = None
) -> list[SegmentPlan]:
    """Plan the segments: each ends at the first safe keyframe at or past `max_seconds` or `max_bytes` (None: no
    limit; 0: cut at every safe keyframe), and at the last safe keyframe that keeps it within `max_frames` (a
    server's limit; longer only where the safe keyframes are further apart).

    Only demuxes; reads the bytes of keyframe packets of H.264 and HEVC to check their NAL units."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        time_base = stream.time_base or Fraction(1, 1)
        context = stream.codec_context
        nal_check = _nal_checker(context.codec.canonical_name, bytes(context.extradata or b""))
        times, sizes = array("q"), array("q")
        candidates: list[int] = []  # keyframes whose bitstream allows a clean start
        timed = True
        last_corrupt = False
        for packet in container.demux(stream):
            if not packet.size:
                continue
            ts = packet.pts if packet.pts is not None else packet.dts
            if ts is None:
                timed = False
                ts = 0
            if packet.is_keyframe and len(times) and (nal_check is None or nal_check(bytes(packet))):
                candidates.append(len(times))
            times.append(ts)
            sizes.append(packet.size)
            last_corrupt = packet.is_corrupt
    if last_corrupt:  # a file cut short ends in part of a frame (AVI): not a frame, and a decoder fails on it
        times.pop()
        sizes.pop()
        candidates = [c for c in candidates if c < len(times)]
    count = len(times)
    if not count:
        return []
    offsets = array("q", [0])  # offsets[i]: the bytes of packets before i
    for size in sizes:
        offsets.append(offsets[-1] + size)
    starts = [0]
    cuts = _safe_cuts(times, candidates) if timed else []
    for i, cut in enumerate(cuts):
        seconds = float((times[cut] - times[starts[-1]]) * time_base)
        size = offsets[cut] - offsets[starts[-1]]
        # Cut here when the next chance to cut (or the end) would come too late for `max_frames`.
        next_too_far = (
            max_frames is not None and (cuts[i + 1] if i + 1 < len(cuts) else count) - starts[-1] > max_frames
        )
        if (
            (max_seconds is not None and seconds >= max_seconds)
            or (max_bytes is not None and size >= max_bytes)
            or next_too_far
        ):
            starts.append(cut)
    plans = []
    first_frame = 0
    for i, (start, end) in enumerate(zip(starts, [*starts[1:], count], strict=True)):
        start_pts = float(min(times[start:end]) * time_base)
        plans.append(SegmentPlan(i, start, end, first_frame, end - start, start_pts, offsets[end] - offsets[start]))
        first_frame += end - start
    return plans


_plan = plan


def segments(path: Path, plan: list[SegmentPlan] | None = None, **limits) -> Iterator[Segment]:
    """Yield the segments of `plan` (by default `plan(path, **limits)`) one at a time, as standalone Matroska files."""
    if plan is None:
        plan = _plan(path, **limits)
    if not plan:
        return
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = (packet for packet in container.demux(stream) if packet.size)
        position = 0
        for part in plan:
            for _ in islice(packets, part.first_packet - position):  # a hand-made plan may skip packets
                pass
            pts: list[int] = []
            data = mux(stream, _noting_pts(islice(packets, part.end_packet - part.first_packet), pts))
            position = part.end_packet
            yield Segment(part.index, part.first_frame, part.frames, data, part.start_pts, tuple(sorted(pts)))


def mux(stream: av.video.stream.VideoStream, packets: Iterable[av.Packet]) -> bytes:
    """Packets of `stream` as a Matroska file of their own (no re-encoding)."""
    out = io.BytesIO()
    with av.open(out, "w", format="matroska") as output:
        # Opaque: the stream's parameters copied as they are. Otherwise PyAV looks for an encoder named after the
        # decoder, and a decoder with no encoder of its name (libdav1d, AV1's) fails the copy.
        target = output.add_stream_from_template(stream, opaque=True)
        for packet in packets:
            packet.stream = target
            output.mux(packet)
    return out.getvalue()


def _noting_pts(packets: Iterable[av.Packet], pts: list[int]) -> Iterator[av.Packet]:
    for packet in packets:
        pts.append(_timestamp(packet))
        yield packet


def _timestamp(packet: av.Packet) -> int:
    if packet.pts is not None:
        return packet.pts
    return packet.dts if packet.dts is not None else -1


class Cutter:
    """Cuts a video stream's packets into segments as they arrive (a live source: there is no whole file to plan).

    The cuts are `plan`'s, judged on what has arrived: a keyframe whose bitstream starts a clean decode, after every
    packet before it is shown, is a cut once the packet that follows it is shown after it too (leading pictures come
    right after their keyframe in decode order). A segment ends at the first cut at or past `max_seconds` or
    `max_bytes`, or, when one more packet would take it past `max_frames`, at the last cut within it. Packets before
    the first clean keyframe (a stream joined mid-GOP) cannot be decoded and are skipped.

        cutter = Cutter(stream, max_seconds=1.0)
        for packet in container.demux(stream):
            if (segment := cutter.push(packet)) is not None: ...
        last = cutter.flush()
    """

    def __init__(
        self,
        stream: av.video.stream.VideoStream,
        *,
        max_seconds: float | None = 1.0,
        max_bytes: int | None = None,
        max_frames: int | None = None,
    ) -> None:
        self.stream = stream
        self.time_base = stream.time_base or Fraction(1, 1)
        context = stream.codec_context
        self._clean = _nal_checker(context.codec.canonical_name, bytes(context.extradata or b""))
        self.max_seconds, self.max_bytes, self.max_frames = max_seconds, max_bytes, max_frames
        self.index = self.first_frame = self.skipped = 0
        self._packets: list[av.Packet] = []  # the segment being gathered, from its first keyframe
        self._latest = -(2**63)  # the latest timestamp gathered
        self._candidate: int | None = None  # a keyframe in `_packets` waiting for the packet after it
        self._cuts: list[int] = []  # where in `_packets` the segment may be cut, were it too long

    def push(self, packet: av.Packet) -> Segment | None:
        """Take the next packet (decode order); a segment when this packet completes one."""
        if not packet.size:
            return None
        ts = _timestamp(packet)
        done = None
        if self._candidate is not None:
            candidate, self._candidate = self._candidate, None
            if ts > _timestamp(self._packets[candidate]):
                if self._long_enough(candidate):
                    done = self._cut(candidate)
                else:
                    self._cuts.append(candidate)
        clean = packet.is_keyframe and (self._clean is None or self._clean(bytes(packet)))
        if not self._packets and not clean:
            self.skipped += 1
            return done
        if clean and self._packets and ts > self._latest:
            self._candidate = len(self._packets)
        self._packets.append(packet)
        self._latest = max(self._latest, ts)
        if done is None and self.max_frames is not None and len(self._packets) > self.max_frames and self._cuts:
            within = [c for c in self._cuts if c <= self.max_frames]
            # A keyframe waiting for its next packet may be a later cut within the limit.
            if self._candidate is None or self._candidate > self.max_frames:
                done = self._cut(within[-1] if within else self._cuts[0])
        return done

    def flush(self) -> Segment | None:
        """What is gathered, as the last segment (the source has ended)."""
        self._candidate = None
        return self._cut(len(self._packets)) if self._packets else None

    def _long_enough(self, cut: int) -> bool:
        start, end = _timestamp(self._packets[0]), _timestamp(self._packets[cut])
        return (self.max_seconds is not None and float((end - start) * self.time_base) >= self.max_seconds) or (
            self.max_bytes is not None and sum(p.size for p in self._packets[:cut]) >= self.max_bytes
        )

    def _cut(self, end: int) -> Segment:
        packets, self._packets = self._packets[:end], self._packets[end:]
        self._cuts = [c - end for c in self._cuts if c > end]
        if self._candidate is not None:
            self._candidate -= end
        self._latest = max((_timestamp(p) for p in self._packets), default=-(2**63))
        pts = tuple(sorted(_timestamp(p) for p in packets))
        segment = Segment(self.index, self.first_frame, len(packets), mux(self.stream, packets),
                          float(pts[0] * self.time_base), pts)  # fmt: skip
        self.index += 1
        self.first_frame += len(packets)
        return segment


def _safe_cuts(times: array, candidates: list[int]) -> list[int]:
    """The candidates (ascending) before which every packet is shown earlier and after which every one later."""
    count = len(times)
    later = array("q", times)  # later[i]: the earliest time of packets i.. in decode order
    for i in range(count - 2, -1, -1):
        later[i] = min(later[i], later[i + 1])
    cuts, latest, seen = [], times[0], 1  # latest: the latest time of packets 0..seen-1
    for i in candidates:
        latest, seen = max(latest, max(times[seen:i], default=latest)), i
        if latest < times[i] and (i + 1 == count or later[i + 1] > times[i]):
            cuts.append(i)
    return cuts


def _nal_checker(codec: str, extradata: bytes) -> Callable[[bytes], bool] | None:
    """For H.264 and HEVC, a function telling whether a keyframe packet's NAL units start a clean decode."""
    if codec == "h264":
        length_size = (extradata[4] & 3) + 1 if len(extradata) > 4 and extradata[0] == 1 else 0
        return lambda data: _h264_clean(_nal_units(data, length_size))
    if codec == "hevc":
        length_size = (extradata[21] & 3) + 1 if len(extradata) > 22 and extradata[0] == 1 else 0
        return lambda data: any(16 <= (unit[0] >> 1) & 0x3F <= 23 for unit in _nal_units(data, length_size) if unit)
    return None


def _nal_units(data: bytes, length_size: int) -> list[bytes]:
    """The NAL units of a packet: length-prefixed (avcC/hvcC, `length_size` bytes) or else Annex B."""
    units, pos = [], 0
    while length_size and pos + length_size <= len(data):
        size = int.from_bytes(data[pos : pos + length_size], "big")
        pos += length_size
        units.append(data[pos : pos + size])
        pos += size
    if length_size and pos == len(data):
        return units
    return [unit for part in data.split(b"\x00\x00\x01") if (unit := part.rstrip(b"\x00"))]


def _h264_clean(units: list[bytes]) -> bool:
    """An IDR picture, or an I picture with a recovery point SEI that recovers exactly at once."""
    types = [unit[0] & 0x1F for unit in units if unit]
    if 5 in types:
        return True
    return any(_h264_recovers_at_once(unit) for unit in units if unit and unit[0] & 0x1F == 6)


def _h264_recovers_at_once(sei: bytes) -> bool:
    """Whether an SEI NAL unit holds a recovery point with recovery_frame_cnt 0 and exact_match_flag 1."""
    rbsp = sei[1:].replace(b"\x00\x00\x03", b"\x00\x00")
    pos = 0
    while pos < len(rbsp) and rbsp[pos:] != b"\x80":
        kind = size = 0
        while pos < len(rbsp) and rbsp[pos] == 0xFF:
            kind, pos = kind + 255, pos + 1
        if pos >= len(rbsp):
            return False
        kind, pos = kind + rbsp[pos], pos + 1
        while pos < len(rbsp) and rbsp[pos] == 0xFF:
            size, pos = size + 255, pos + 1
        if pos >= len(rbsp):
            return False
        size, pos = size + rbsp[pos], pos + 1
        if kind == 6 and size:
            bits = "".join(f"{byte:08b}" for byte in rbsp[pos : pos + size])
            zeros = len(bits) - len(bits.lstrip("0"))  # ue(v): recovery_frame_cnt is 0 when its code is "1"
            return zeros == 0 and len(bits) > 1 and bits[1] == "1"
        pos += size
    return False
