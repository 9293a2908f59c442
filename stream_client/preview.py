"""Watch a run in a browser: `segment-video ... --preview [HOST:]PORT` serves a page while the job runs.

The page (`preview.html`, no dependency) plays the finished segments as they come (each remuxed here into fragmented
MP4 for the browser's Media Source Extensions; Safari plays the run's HLS playlist), shows the progress (frames,
frames/s, ETA, segments in flight, per server; for a live source how far behind live it is and the latency) and the
timeline of the whole video: the share of the class's pixels per second, filled in as chunks arrive; a click on it
seeks the player there. A run of several videos shows every video's progress and plays the one picked. On a finished
run's folder (`segment-video --preview PORT --out OUT`) it serves what the folder holds.

Routes: `/` the page, `/status.json` the state, `/segment/N.mp4` segment N, `/playlist.m3u8` and its `.ts` files:
those of the run's first video; `/v/K/...` the same of its video K.
"""

import errno
import http.server
import io
import json
import socket
import threading
import time
from functools import partial
from pathlib import Path

import av

from stream_client import output
from stream_client.manifest import Manifest
from stream_client.timeline import Timeline

PAGE = Path(__file__).with_name("preview.html")
PROFILES = {"High": "6400", "Main": "4d40", "Baseline": "4200", "Constrained Baseline": "42e0"}


class Watch:
    """What a run says as it goes (`segment_file` calls it), and the page's view of it (`status`)."""

    def __init__(self, source: Path, class_name: str | None) -> None:
        self.lock = threading.Lock()
        self.source, self.class_name = str(source), class_name
        self.state, self.error = "starting", None
        self.total = self.done = self.this_run = self.segments = 0
        self.started = time.monotonic()
        self.servers: dict[str, dict[str, int]] = {}
        self.failures: list[dict] = []
        self.manifest: Manifest | None = None
        self.timeline: Timeline | None = None
        self.kind = "segment"
        self.live = False
        self.behind: float | None = None  # a live source: seconds of video between the newest received and segmented
        self.latency: dict | None = None
        self.dropped = 0

    def start(self, manifest: Manifest, timeline: Timeline, total: int | None, done: int, urls: list[str], kind: str,
              live: bool = False) -> None:  # fmt: skip
        """`total`: frames of the video (None: a live source)."""
        with self.lock:
            self.manifest, self.timeline, self.kind, self.live = manifest, timeline, kind, live
            self.class_name = manifest.class_name or self.class_name  # named, the server's default too
            self.total, self.done, self.segments, self.state = total, done, manifest.segments, "running"
            self.servers = {url: {"in_flight": 0, "frames": 0} for url in urls}
            self.started = time.monotonic()

    def sent(self, server: str) -> None:
        with self.lock:
            self.servers[server]["in_flight"] += 1

    def chunk(self, server: str, frames: int, behind: float | None = None) -> None:
        with self.lock:
            self.servers[server]["frames"] += frames
            self.done += frames
            self.this_run += frames
            self.behind = behind if behind is not None else self.behind

    def listed(self, latency: dict | None, dropped: int) -> None:
        """A live source's segments were listed: the latency so far, and the frames dropped."""
        with self.lock:
            self.latency, self.dropped = latency, dropped

    def returned(self, server: str, frames_lost: int = 0) -> None:
        """A segment is back from `server` (done, or failed after `frames_lost` of its frames were counted)."""
        with self.lock:
            self.servers[server]["in_flight"] -= 1
            self.done -= frames_lost
            self.this_run -= frames_lost

    def failed(self, segment: int, message: str) -> None:
        with self.lock:
            self.failures.append({"segment": segment, "message": message})

    def written(self) -> None:
        """The video's output is written; the run goes on (its other videos, or closing its streams)."""
        with self.lock:
            self.state = "written"

    def end(self, error: str | None = None) -> None:
        with self.lock:
            self.state, self.error = ("failed", error) if error else ("finished", None)

    def status(self) -> dict:
        with self.lock:
            elapsed = time.monotonic() - self.started
            fps = self.this_run / elapsed if elapsed > 0 and self.this_run else 0.0
            listed = self.manifest.listed() if self.manifest else []
            segments = self.manifest.segments if self.manifest else self.segments
            return {
                "source": self.source, "class": self.class_name or "the server's default", "state": self.state,
                "error": self.error, "total": self.total, "done": self.done, "fps": fps,
                "eta": (self.total - self.done) / fps if fps and self.total is not None else None,
                "in_flight": sum(s["in_flight"] for s in self.servers.values()),
                "servers": {url: dict(s) for url, s in self.servers.items()}, "segments": segments,
                "ready": [duration for _, duration in listed], "listed": [index for index, _ in listed],
                "failures": list(self.failures), "kind": self.kind,
                "timeline": self.timeline.points() if self.timeline else [],
                "seconds": len(self.timeline.frames) if self.timeline else 0,
                "live": self.live, "behind": self.behind, "latency": self.latency, "dropped": self.dropped,
            }  # fmt: skip

    def brief(self) -> dict:
        """A line of a run of several videos."""
        with self.lock:
            elapsed = time.monotonic() - self.started
            fps = self.this_run / elapsed if elapsed > 0 and self.this_run else 0.0
            return {"source": self.source, "state": self.state, "done": self.done, "total": self.total, "fps": fps,
                    "live": self.live, "error": self.error}  # fmt: skip


class FinishedRun(Watch):
    """A run's folder after the run (or after it stopped): what its manifest and timeline say."""

    def __init__(self, parts: Path) -> None:
        manifest = Manifest.load(parts)
        if manifest is None:
            raise FileNotFoundError(f"{parts} holds no run (no {parts / 'manifest.json'})")
        super().__init__(Path(manifest.source), manifest.options.get("class"))
        timeline = Timeline.load(parts) or Timeline(1)
        kind = "matte" if manifest.options.get("returns") == "mask" else "segment"
        frames = int(timeline.frames.sum())
        self.start(manifest, timeline, frames, frames, [], kind)
        self.state = "finished" if manifest.complete else "stopped"


class _Handler(http.server.BaseHTTPRequestHandler):
    def __init__(self, *args, videos: list[tuple[Path, Watch]], **kwargs) -> None:
        self.videos = videos
        super().__init__(*args, **kwargs)

    def log_message(self, *args) -> None:  # the terminal is the run's
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?")[0]
        if path in ("/", "/index.html"):
            return self._send(PAGE.read_bytes(), "text/html; charset=utf-8")
        video, path = _which_video(path)
        if video >= len(self.videos):
            return self.send_error(404)
        parts, watch = self.videos[video]
        if path == "/status.json":
            status = watch.status()
            first = parts / output.segment_name(status["listed"][0], status["kind"]) if status["listed"] else None
            status["codec"] = _codec(first) if first else None
            status["playlist"] = output.PLAYLIST if status["kind"] == "segment" else output.MATTE_PLAYLIST
            status["video"] = video
            status["videos"] = [w.brief() for _, w in self.videos] if len(self.videos) > 1 else []
            return self._send(json.dumps(status).encode(), "application/json")
        if path.startswith("/segment/") and path.endswith(".mp4") and path[9:-4].isdigit():
            ts = parts / output.segment_name(int(path[9:-4]), watch.kind)
            if ts.exists():
                return self._send(_fragmented_mp4(ts), "video/mp4")
        name = path.lstrip("/")
        if name.endswith((".m3u8", ".ts")) and "/" not in name and (parts / name).exists():
            kind = "application/vnd.apple.mpegurl" if name.endswith(".m3u8") else "video/mp2t"
            return self._send((parts / name).read_bytes(), kind)
        self.send_error(404)

    def _send(self, body: bytes, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


def _which_video(path: str) -> tuple[int, str]:
    """`/v/K/rest` -> (K, `/rest`); any other path is the first video's."""
    head, _, rest = path[3:].partition("/")
    if path.startswith("/v/") and head.isdigit():
        return int(head), "/" + rest
    return 0, path


def _fragmented_mp4(ts: Path) -> bytes:
    """A finished segment's video as fragmented MP4, what Media Source Extensions take (no re-encoding)."""
    out = io.BytesIO()
    options = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
    with av.open(str(ts), format="mpegts") as source, av.open(out, "w", format="mp4", options=options) as target:
        stream = target.add_stream_from_template(source.streams.video[0], opaque=True)
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                target.mux(packet)
    return out.getvalue()


def _codec(ts: Path) -> str | None:
    """The segments' codec as Media Source Extensions name it (avc1.PPCCLL)."""
    if not ts.exists():
        return None
    with av.open(str(ts), format="mpegts") as container:
        context = container.streams.video[0].codec_context
        return f"avc1.{PROFILES.get(context.profile, '6400')}{context.level:02x}"


def parse_address(text: str) -> tuple[str, int]:
    """`PORT` or `HOST:PORT` (loopback by default)."""
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"--preview wants PORT or HOST:PORT, not {text!r}")
    return host or "127.0.0.1", int(port)


class PreviewServer:
    """`with PreviewServer(address, [(parts, watch), ...]) as preview:` serves the page of a run's videos (their parts
    folders and watches) on a thread; `preview.url`."""

    def __init__(self, address: tuple[str, int], videos: list[tuple[Path, Watch]]) -> None:
        handler = partial(_Handler, videos=videos)
        try:
            self.httpd = http.server.ThreadingHTTPServer(address, handler)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            raise ValueError(
                f"the preview's port {address[1]} on {address[0]} is in use: give another, e.g. "
                f"--preview {address[0]}:{_free_port(address[0])} (free now)"
            ) from None
        self.httpd.daemon_threads = True
        host, port = self.httpd.server_address[:2]
        self.url = f"http://{host}:{port}/"

    def __enter__(self) -> "PreviewServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True, name="preview").start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
