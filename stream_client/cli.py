"""Segment a video: `segment-video VIDEO` (or `python -m stream_client VIDEO`).

With --url, the video goes to that server (repeat it to spread a long video over several). Without, a local
tritonserver is started on loopback with a model repository built for this machine and stopped at the end (the server
side: `pip install './triton-video-segmentation[server]'` from a checkout). Writes the segmented video (H.264 MP4)
and, with --returns mask or both, the class mask as a grayscale (matte) video beside it; prints a line per chunk and a
summary.

    segment-video --sample                                  # a generated sample video
    segment-video path/to/video.mp4 --out segmented.mp4 --class person --threshold 0.5
    segment-video video.mp4 --url triton.example:8001 --returns both     # also segmented_matte.mp4
    segment-video video.mp4 --url triton.example:8001 --preview 8080      # watch it at http://127.0.0.1:8080/
    segment-video --preview 8080 --out segmented.mp4                      # the page of a finished run
    segment-video hour.mp4 --url gpu-a:8001 --url gpu-b:8001 --window 16 # watch hour_segmented.mp4.parts/playlist.m3u8
    segment-video hour.mp4 --url gpu-a:8001 --resume                      # after a crash: go on where it stopped
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
from stream_client.output import PRESETS, Encoding
from stream_client.preview import FinishedRun, PreviewServer, Watch, parse_address
from stream_client.sample import make_video
from stream_client.segment import RETURNS, SegmentError, parts_folder, segment_file
from stream_client.stream import StreamError

SERVER_EXTRA = (
    "the local server (no --url) is the server side of this package: install it from its checkout, pip install "
    "'./triton-video-segmentation[server]' (NVIDIA DALI, torch, tritonserver), or give --url HOST:PORT of a running "
    "server"
)


def client_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "video", type=Path, nargs="?", help="the video to segment (any container and codec FFmpeg reads)"
    )
    parser.add_argument("--sample", action="store_true", help="segment a generated sample video instead")
    parser.add_argument("--out", type=Path, help="the segmented video (default: VIDEO_segmented.mp4)")
    parser.add_argument(
        "--url",
        action="append",
        dest="urls",
        metavar="HOST:PORT",
        help="a running server's gRPC address; repeat it to spread segments over several servers "
        "(default: start one locally)",
    )
    parser.add_argument("--class", dest="class_name", help="the VOC class to keep (default: the server's, 'person')")
    parser.add_argument("--threshold", type=float, help="keep pixels whose class probability is above this")
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
        default=4.0,
        help="cut the video at the first safe keyframe after this many seconds (default 4)",
    )
    long.add_argument("--segment-bytes", type=int, help="... or after this many bytes")
    long.add_argument(
        "--window",
        type=int,
        default=16,
        help="segments in flight at once; their encoders run in parallel, a process per core (default 16)",
    )
    long.add_argument("--retries", type=int, default=1, help="times a segment the server rejected is sent again")
    long.add_argument(
        "--resume",
        action="store_true",
        help="go on with the run recorded beside --out, from its first unfinished segment",
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
    finished_run = known.preview and known.out and known.video is None and not known.sample
    local = None if known.urls or finished_run else local_options()
    parser = argparse.ArgumentParser(
        prog="segment-video",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[client, *([local.options()] if local else [])],
        epilog=None if local or known.urls or finished_run else SERVER_EXTRA,
    )
    args = parser.parse_args(argv)
    if args.preview and args.out and args.video is None and not args.sample:
        return args, None  # the page of a finished run: no server
    if (args.video is None) == (not args.sample):
        parser.error("give a VIDEO or --sample (or --preview PORT --out OUT for a finished run's page)")
    access = (args.tls, args.tls_ca, args.tls_cert, args.tls_key, args.header, args.header_from_env)
    if not args.urls and any(access):
        parser.error("--tls, --tls-* and --header* are for servers given with --url (the local server is plain)")
    if not args.urls and local is None:
        parser.exit(2, f"segment-video: {SERVER_EXTRA}\n")
    return args, local


def run(args: argparse.Namespace, local) -> int:
    if args.video is None and not args.sample:
        return show_finished_run(args)
    workdir = Path(tempfile.mkdtemp(prefix="segment-video-"))
    if args.sample:
        args.video = make_video(workdir / "sample.mp4", frames=48, width=320, height=240)
        print(f"sample video: {args.video} (48 frames, 320x240, H.264)", file=sys.stderr)
    out = args.out or Path(f"{args.video.stem}_segmented.mp4")
    watch = Watch(args.video, args.class_name) if args.preview else None
    job = dict(
        class_name=args.class_name, threshold=args.threshold, returns=args.returns, window=args.window,
        max_seconds=args.segment_seconds, max_bytes=args.segment_bytes, resume=args.resume, retries=args.retries,
        encoding=Encoding(args.preset, args.crf), dump_images=args.dump_images, watch=watch,
    )  # fmt: skip
    linger = False  # after the run, done or failed (not cancelled), the page stays up until Ctrl-C
    with contextlib.ExitStack() as stack:
        if watch is not None:
            preview = stack.enter_context(PreviewServer(parse_address(args.preview), parts_folder(out), watch))
            stack.callback(lambda: linger and _linger(preview.url))  # after the local server has stopped
            print(f"watch it while it runs: {preview.url}", file=sys.stderr)
        try:
            if args.urls:
                tls, headers = access_from(args)
                summary = segment_file(args.video, out, args.urls, tls=tls, headers=headers, **job)
            else:
                url = stack.enter_context(local.local_server(args, workdir))
                summary = segment_file(args.video, out, url, **job)
        except Exception:
            linger = True
            raise
        linger = True
        print(summary.line())
        if args.summary_json:
            args.summary_json.write_text(json.dumps(summary.as_dict(), indent=2))
    return 0


def show_finished_run(args: argparse.Namespace) -> int:
    watch = FinishedRun(parts_folder(args.out))
    with PreviewServer(parse_address(args.preview), parts_folder(args.out), watch) as preview:
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
