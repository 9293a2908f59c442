"""Helpers the tests share."""

import signal

from stream_client.stream import Chunk, Failed, Finished, SegmentationStream


def collect(stream: SegmentationStream, videos: set[str]) -> dict[str, list[Chunk] | str]:
    """Drain the stream until every video has finished: its chunks in arrival order, or its error message."""
    results: dict[str, list[Chunk] | str] = {v: [] for v in videos}
    open_videos = set(videos)
    while open_videos:
        event = stream.next_event()
        if isinstance(event, Failed):
            assert event.video in open_videos, f"an error for no video in flight: {event.message}"
            results[event.video] = event.message
            open_videos.discard(event.video)
        elif isinstance(event, Finished):
            open_videos.discard(event.video)
        else:
            results[event.video].append(event)
    return results


def as_a_foreground_job() -> None:
    """Popen's `preexec_fn` for a CLI the test stops with SIGINT, as Ctrl-C stops a terminal's foreground job: when
    the tests run as a script's background job, their children inherit SIGINT ignored, and Python then never raises
    KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
