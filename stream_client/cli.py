"""Segment videos: `segment-video VIDEO...` (or `python -m stream_client VIDEO...`).

With --url, the videos go to that server (repeat it to spread them over several). Without, a local tritonserver is
started on loopback with a model repository built for this machine and stopped at the end (the server side:
`pip install './triton-video-segmentation[server]'` from a checkout): one server for the whole run. Writes the
segmented video (H.264 MP4) and, with --returns mask or both, the class mask as a grayscale (matte) video beside it;
prints a line per chunk and a summary. Several videos, or folders: an output each in --out-dir, a line per video as
it finishes and a table at the end. A live source (`-`, standard input, or a URL) is segmented as it plays, until it
ends or Ctrl-C.

    segment-video --sample                                  # a generated sample video
    segment-video path/to/video.mp4 --out segmented.mp4 --class person --threshold 0.5
    segment-video video.mp4 --url triton.example:8001 --returns both     # also segmented_matte.mp4
    segment-video video.mp4 --url triton.example:8001 --preview 8080      # watch it at http://127.0.0.1:8080/
    segment-video --preview 8080 --out segmented.mp4                      # the page of a finished run
    segment-video hour.mp4 --url gpu-a:8001 --url gpu-b:8001 --window 16 # watch hour_segmented.mp4.parts/playlist.m3u8
    segment-video hour.mp4 --url gpu-a:8001 --resume                      # after a crash: go on where it stopped
    segment-video a.mp4 b.mkv clips/ --recursive --out-dir out/           # many videos, one server, one window
    ffmpeg -i rtsp://camera/stream -c copy -f mpegts - | segment-video - --out camera.mp4     # live, until Ctrl-C
    segment-video udp://0.0.0.0:5000 --out udp.mp4 --live-window 6        # a live source by URL
    segment-video video.mp4 --url triton.example:8001 --tls-ca ca.crt --header-from-env \\
        triton-grpc-protocol-segment-key=SEGMENT_KEY    # TLS, and an access key from $SEGMENT_KEY (README "Access")
"""

import argparse
import contextlib
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

from stream_client.access import access_from, add_access_arguments
from stream_client.inputs import default_output, expand, outputs
from stream_client.output import PRESETS, Encoding
from stream_client.preview import FinishedRun, PreviewServer, Watch, parse_address
from stream_client.sample import make_video
from stream_client.segment import RETURNS, Outcome, SegmentError, Settings, parts_folder, segment_videos
from stream_client.stream import StreamError

SERVER_EXTRA = (
    "the local server (no --url) is the server side of this package: install it from its checkout, pip install "
    "'./triton-video-segmentation[server]' (NVIDIA DALI, torch, tritonserver), or give --url HOST:PORT of a running "
    "server"
)


def client_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "videos",
        nargs="*",
        metavar="VIDEO",
        help="what to segment: video files (any container and codec FFmpeg reads), folders (their video files), "
        "- (a live stream on standard input) or a URL FFmpeg opens (udp://, rtsp://, srt://, http(s)://, live HLS)",
    )
    parser.add_argument("--sample", action="store_true", help="segment a generated sample video instead")
    parser.add_argument("--out", type=Path, help="the segmented video of one VIDEO (default: VIDEO_segmented.mp4)")
    parser.add_argument(
        "--out-dir",
        type=Path,
        help="where the outputs go, each named after its input (NAME_segmented.mp4; the default for several videos "
        "or a folder: here)",
    )
    parser.add_argument("--recursive", action="store_true", help="a folder's subfolders' videos too")
    parser.add_argument(
        "--url",
        action="append",
        dest="urls",
        metavar="HOST:PORT",
        help="a running server's gRPC address; repeat it to spread segments over several servers "
        "(default: start one locally)",
    )
    parser.add_argument("--class", dest="class_name", help="the VOC class to keep (default: the server's, 'person')")
    parser.add_argument(
        "--threshold", type=float, help="keep pixels whose class probability is above this (0: every pixel, 1: none)"
    )
    parser.add_argument(
        "--returns",
        choices=RETURNS,
        default="segmented",
        help="what to write: the segmented video, the class mask as a grayscale (matte) video OUT_matte.mp4, or both",
    )
    parser.add_argument(
        "--dump-images", type=Path, metavar="DIR", help="also write original and segmented frames as PNG"
    )
    parser.add_argument("--summary-json", type=Path, help="also write the summary as JSON")
    parser.add_argument(
        "--preview",
        metavar="[HOST:]PORT",
        help="serve a page that plays the run as it goes, with its progress and timeline (loopback by default); "
        "it stays up after the run until Ctrl-C. With --out and no VIDEO: the page of that finished run",
    )
    encoding = parser.add_argument_group("encoding (x264)")
    encoding.add_argument("--preset", choices=PRESETS, default=Encoding.preset, help="speed against size")
    encoding.add_argument("--crf", type=int, default=Encoding.crf, help="quality: lower is better (0-51)")
    long = parser.add_argument_group("long videos")
    long.add_argument(
        "--segment-seconds",
        type=float,
        help="cut the video at the first safe keyframe after this many seconds (default 4; 1 for a live source)",
    )
    long.add_argument("--segment-bytes", type=int, help="... or after this many bytes")
    long.add_argument(
        "--window",
        type=int,
        default=16,
        help="segments at the servers at once; their encoders run in parallel, a process per core (default 16)",
    )
    long.add_argument("--retries", type=int, default=1, help="times a segment the server rejected is sent again")
    long.add_argument(
        "--resume",
        action="store_true",
        help="go on with the run recorded beside --out (or each in --out-dir), from its first unfinished segment; "
        "finished videos are kept",
    )
    live = parser.add_argument_group("live sources")
    live.add_argument(
        "--live-window", type=int, metavar="N", help="the playlist lists only the last N segments (default: all)"
    )
    live.add_argument(
        "--live-backlog",
        type=float,
        default=Settings.live_backlog,
        metavar="SECONDS",
        help="seconds of video that may wait to be sent when the source runs ahead of the servers; past it the "
        "oldest waiting segments are dropped, whole (default %(default)s)",
    )
    live.add_argument(
        "--live-timeout",
        type=float,
        default=Settings.live_timeout,
        metavar="SECONDS",
        help="a URL that sends nothing for this long has ended (default %(default)s)",
    )
    add_access_arguments(parser)
    return parser


def local_options():
    """The local server's module (the server side), or None where the server extra is not installed."""
    try:
        from repo import local
    except ImportError:
        return None
    return local


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, object]:
    client = client_parser()
    known, _ = client.parse_known_args(argv)
    finished_run = known.preview and known.out and not known.videos and not known.sample
    local = None if known.urls or finished_run else local_options()
    parser = argparse.ArgumentParser(
        prog="segment-video",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[client, *([local.options()] if local else [])],
        epilog=None if local or known.urls or finished_run else SERVER_EXTRA,
    )
    args = parser.parse_args(argv)
    if args.preview and args.out and not args.videos and not args.sample:
        return args, None  # the page of a finished run: no server
    if bool(args.videos) == args.sample:
        parser.error("give a VIDEO or --sample (or --preview PORT --out OUT for a finished run's page)")
    if args.out and (len(args.videos) > 1 or args.out_dir):
        parser.error("--out names the output of one VIDEO; for several, give --out-dir")
    access = (args.tls, args.tls_ca, args.tls_cert, args.tls_key, args.header, args.header_from_env)
    if not args.urls and any(access):
        parser.error("--tls, --tls-* and --header* are for servers given with --url (the local server is plain)")
    if not args.urls and local is None:
        parser.exit(2, f"segment-video: {SERVER_EXTRA}\n")
    return args, local


def run(args: argparse.Namespace, local) -> int:
    if not args.videos and not args.sample:
        return show_finished_run(args)
    workdir = Path(tempfile.mkdtemp(prefix="segment-video-"))
    if args.sample:
        args.videos = [str(make_video(workdir / "sample.mp4", frames=48, width=320, height=240))]
        print(f"sample video: {args.videos[0]} (48 frames, 320x240, H.264)", file=sys.stderr)
    inputs, folders = expand(args.videos, args.recursive, args.out_dir)
    if not inputs:
        raise ValueError(f"no video files in {', '.join(args.videos)} (--recursive for their subfolders)")
    many = len(inputs) > 1 or folders or args.out_dir is not None
    if many and args.out:
        raise ValueError("--out names the output of one VIDEO; for a folder's videos, give --out-dir")
    sources = [i.source for i in inputs]
    outs = outputs(inputs, args.out_dir or Path(".")) if many else [args.out or default_output(sources[0])]
    settings = Settings(
        args.class_name, args.threshold, args.returns, args.window,
        args.segment_seconds if args.segment_seconds is not None else 4.0, args.segment_bytes,
        args.segment_seconds if args.segment_seconds is not None else 1.0, args.live_window, args.live_backlog,
        args.live_timeout, args.resume, args.retries, Encoding(args.preset, args.crf), dump_images=args.dump_images,
    )  # fmt: skip
    watches = [Watch(Path(source), args.class_name) for source in sources] if args.preview else None
    linger = False  # after the run, done or failed (not cancelled), the page stays up until Ctrl-C
    with contextlib.ExitStack() as stack:
        if watches is not None:
            videos = [(parts_folder(out), watch) for out, watch in zip(outs, watches, strict=True)]
            preview = stack.enter_context(PreviewServer(parse_address(args.preview), videos))
            stack.callback(lambda: linger and _linger(preview.url))  # after the local server has stopped
            print(f"watch it while it runs: {preview.url}", file=sys.stderr)
        try:
            if args.urls:
                tls, headers = access_from(args)
                urls, access = args.urls, {"tls": tls, "headers": headers}
            else:
                urls, access = stack.enter_context(local.local_server(args, workdir)), {}
            result = segment_videos(sources, outs, urls, settings, watches=watches, fail_fast=not many,
                                    finished=_said if many else None, **access)  # fmt: skip
        except Exception:
            linger = True
            raise
        linger = True
        if args.summary_json:
            report = result.as_dict() if many else result.outcomes[0].summary.as_dict()
            args.summary_json.write_text(json.dumps(report, indent=2))
        if not many:
            print(result.outcomes[0].summary.line())
            return 0
        print(result.table())
        failed = [o.source for o in result.outcomes if o.state == "failed"]
        stopped = [o.source for o in result.outcomes if o.state == "stopped"]
        if failed:
            print(f"segment-video: error: {len(failed)} of {len(sources)} videos failed: {', '.join(failed)}",
                  file=sys.stderr)  # fmt: skip
            return 1
        if stopped:
            print(f"segment-video: cancelled: {len(stopped)} of {len(sources)} videos unfinished (--resume goes on)",
                  file=sys.stderr)  # fmt: skip
            return 130
    return 0


def _said(outcome: Outcome) -> None:
    """A video of a run of several has ended."""
    if outcome.summary is not None:
        print(f"{outcome.source}: {outcome.summary.line()}", flush=True)
    else:
        print(f"{outcome.source}: {outcome.state}: {outcome.error}", flush=True)


def show_finished_run(args: argparse.Namespace) -> int:
    watch = FinishedRun(parts_folder(args.out))
    with PreviewServer(parse_address(args.preview), [(parts_folder(args.out), watch)]) as preview:
        _linger(preview.url)
    return 0


def _linger(url: str) -> None:
    """Keep the page up until Ctrl-C (or SIGTERM)."""
    print(f"the preview stays at {url} until Ctrl-C", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM (a supervisor, `kill`) stops it as Ctrl-C does: videos cancelled, server stopped


def main(argv: list[str] | None = None) -> int:
    args, local = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    errors: tuple[type[BaseException], ...] = (SegmentError, StreamError, FileNotFoundError, ValueError)
    if local is not None:
        from repo.serve import ServerError

        errors += (ServerError,)
    try:
        return run(args, local)
    except errors as e:
        print(f"segment-video: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("segment-video: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
