"""Sending: a run's segments go to the servers' streams, each to the stream with the fewest in flight, as one request;
the masks come back on one queue shared by every stream. A server whose decoder does not take the segment as it is
(its codec, chroma, bit depth or size: `protocol.ServerInfo.refusal`, from what the server's device said) gets it
converted first (`videos.convert`), and the user is told once.

Request ids name the video of the run, the segment and the attempt, so that the events of a segment that was given up
(its video failed, or it was sent again) are told apart and ignored.
"""

import time
from dataclasses import dataclass, field
from typing import TextIO

from stream_client import videos
from stream_client.protocol import ServerInfo
from stream_client.reorder import Reorderer
from stream_client.sources import Piece, VideoInfo
from stream_client.stream import SegmentationStream, StreamError


@dataclass
class InFlight:
    """A segment on its way: where it was sent, its masks so far."""

    video: int  # the run's number of its video
    piece: Piece
    stream: SegmentationStream
    attempts: int = 1
    reorder: Reorderer = field(default_factory=Reorderer)
    frames: int = 0  # masks handed to its encoder, in order

    @property
    def request_id(self) -> str:
        return f"video-{self.video}-segment-{self.piece.segment.index}-try-{self.attempts}"

    @property
    def key(self) -> tuple[int, int]:
        """The segment's key among the encoders' segments."""
        return self.video, self.piece.segment.index


class Sender:
    """The servers' streams and the segments in flight on them."""

    def __init__(self, streams: list[SegmentationStream], progress_out: TextIO, idle_timeout: float) -> None:
        self.streams = streams
        self.infos = {s.url: s.server_info() for s in streams}
        self.in_flight: dict[str, InFlight] = {}
        self.progress_out = progress_out
        self.idle_timeout = idle_timeout
        self.last_heard = time.monotonic()
        self._told: set[str] = set()  # conversions the user was told of
        self._abandoned: set[str] = set()  # requests given up, not yet ended on the server

    def max_frames(self, height: int, width: int) -> int:
        """The most frames of this size one request may have on every server (a request's frames must fit its share
        of a server's memory)."""
        return min(i.max_frames(height, width, frames=False) for i in self.infos.values())

    def default_class(self) -> str:
        return self.infos[self.streams[0].url].default_class

    @property
    def model_size(self) -> tuple[int, int]:
        return self.infos[self.streams[0].url].model_size

    def check(self, info: VideoInfo) -> None:
        """ValueError, for the user, when a server's decoder cannot take the video even converted (before anything of
        it is sent)."""
        for server in self.infos.values():
            self._conversion(info, server)

    @staticmethod
    def _conversion(info: VideoInfo, server: ServerInfo) -> tuple[str, str, int, int] | None:
        """(why, codec, width, height) when the server's decoder does not take the video as it is; else None."""
        why = server.refusal(info.codec, info.chroma, info.bit_depth, info.width, info.height)
        if why is None:
            return None
        return (why, *server.conversion(info.width, info.height, videos.conversions_for(server.decoder_device)))

    def send(self, video: int, piece: Piece, info: VideoInfo, class_name: str | None, threshold: float | None,
             attempts: int = 1) -> tuple[InFlight, str | None]:  # fmt: skip
        """Send a segment; (what is in flight, the codec it was re-encoded to for the server, if it was)."""
        stream = min(self.streams, key=lambda s: sum(f.stream is s for f in self.in_flight.values()))
        state = InFlight(video, piece, stream, attempts)
        data, reencoded = piece.segment.data, None
        server = self.infos[stream.url]
        # A segment is the source's packets: its codec, layout and size are the source's.
        if (conversion := self._conversion(info, server)) is not None:
            why, codec, width, height = conversion
            data, reencoded = videos.convert(data, info.rate, codec, (height, width)), codec
            if why not in self._told:
                self._told.add(why)
                size = "" if (width, height) == (info.width, info.height) else f" at {width}x{height}"
                print(f"the server at {stream.url}: {why}: re-encoding {info.codec} to {codec}{size} for it",
                      file=self.progress_out)  # fmt: skip
        if not self.in_flight:
            self.last_heard = time.monotonic()  # the servers' silence counts from here
        self.in_flight[state.request_id] = state
        # The mask alone comes back: the client has the frames (it sent them) and keeps the pixels itself.
        stream.send(state.request_id, data, class_name=class_name, threshold=threshold, returns="mask",
                    size=(info.height, info.width))  # fmt: skip
        return state, reencoded

    def heard(self) -> None:
        self.last_heard = time.monotonic()

    def check_silence(self) -> None:
        """A stream that has sent nothing for `idle_timeout` while segments are in flight on it has failed."""
        if self.in_flight and time.monotonic() - self.last_heard > self.idle_timeout:
            urls = sorted({f.stream.url for f in self.in_flight.values()})
            raise StreamError(f"nothing arrived from {', '.join(urls)} for {self.idle_timeout:.0f} s")

    def give_up(self, video: int) -> list[InFlight]:
        """Forget the segments of a video in flight (it failed): their events will be ignored."""
        mine = [rid for rid, f in self.in_flight.items() if f.video == video]
        self._abandoned.update(mine)
        return [self.in_flight.pop(rid) for rid in mine]

    def ended(self, request_id: str) -> None:
        """A request given up has ended on its server."""
        self._abandoned.discard(request_id)

    def close(self) -> None:
        """At the end of a run: requests given up and still on a server are cancelled, not waited for."""
        if self._abandoned:
            for stream in self.streams:
                stream.cancel()
