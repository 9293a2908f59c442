"""What a GPU server's decoder takes, asked of the device when the server starts (the `decoder_formats` model).

Two questions, because each alone is wrong: NVDEC's capabilities for this GPU (`repo.nvdec`: codecs, chroma, bit
depths, smallest and largest sizes), and whether DALI's video input decodes each of them, tried on a clip made here
at the format's smallest size. On an H100 (2026-12-08) NVDEC lists MPEG-2 and MJPEG, which DALI's GPU variant refuses
("not supported by the GPU variant of this operator"), and HEVC 4:4:4, which it fails to decode; it lists no AV1 at
all. A format no clip can be made of here is left out: the client converts what is not listed.

    python -m repo.formats [--device N]     # the formats, as JSON (what the model sends)
"""

import argparse
import io
import sys
from fractions import Fraction

import av
import numpy as np

from repo import nvdec
from stream_client.protocol import DecoderFormat, formats_to_json
from stream_client.sample import sample_frame

# (codec, chroma, bit depth) -> the encoder and pixel format of its probe clip.
PROBE_CLIPS = {
    ("h264", "420", 8): ("libx264", "yuv420p"),
    ("h264", "420", 10): ("libx264", "yuv420p10le"),
    ("h264", "422", 8): ("libx264", "yuv422p"),
    ("h264", "444", 8): ("libx264", "yuv444p"),
    ("hevc", "420", 8): ("libx265", "yuv420p"),
    ("hevc", "420", 10): ("libx265", "yuv420p10le"),
    ("hevc", "420", 12): ("libx265", "yuv420p12le"),
    ("hevc", "444", 8): ("libx265", "yuv444p"),
    ("hevc", "444", 10): ("libx265", "yuv444p10le"),
    ("hevc", "444", 12): ("libx265", "yuv444p12le"),
    ("vp8", "420", 8): ("libvpx", "yuv420p"),
    ("vp9", "420", 8): ("libvpx-vp9", "yuv420p"),
    ("vp9", "444", 8): ("libvpx-vp9", "yuv444p"),
    ("av1", "420", 8): ("libsvtav1", "yuv420p"),
    ("av1", "420", 10): ("libsvtav1", "yuv420p10le"),
    ("mpeg1video", "420", 8): ("mpeg1video", "yuv420p"),
    ("mpeg2video", "420", 8): ("mpeg2video", "yuv420p"),
    ("mpeg4", "420", 8): ("mpeg4", "yuv420p"),
    ("mjpeg", "420", 8): ("mjpeg", "yuvj420p"),
    ("mjpeg", "444", 8): ("mjpeg", "yuvj444p"),
}
PROBE_FRAMES = 8


def probe_clip(encoder: str, pix_fmt: str, width: int, height: int) -> bytes:
    """A short clip in Matroska (the container the client sends segments in)."""
    out = io.BytesIO()
    with av.open(out, "w", format="matroska") as container:
        stream = container.add_stream(encoder, rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        # B-frames where the codec has them: MPEG-4 Part 2 decodes on NVDEC without them, not with them.
        stream.codec_context.options = {"bf": "2", "g": str(PROBE_FRAMES)}
        for i in range(PROBE_FRAMES):
            picture = av.VideoFrame.from_ndarray(sample_frame(i, height, width), format="rgb24")
            container.mux(stream.encode(picture.reformat(format=pix_fmt)))
        container.mux(stream.encode())
    return out.getvalue()


def decodes(data: bytes, device: int) -> bool:
    """Whether DALI's video input on this GPU (the decode graph, as the server builds it) decodes the clip whole."""
    import pipelines
    from pipelines import decode

    try:
        pipe = pipelines.build(decode.decode, batch_size=1, device_id=device, device="gpu",
                               frames_per_chunk=PROBE_FRAMES, model_size=(16, 16), with_frames=False)  # fmt: skip
        pipe.feed_input(decode.VIDEO, [np.frombuffer(data, np.uint8)])
        pipe.feed_input(decode.CLASS_ID, [np.array([0], np.int32)])
        pipe.feed_input(decode.THRESHOLD, [np.array([0.0], np.float32)])
        (model_input, *_) = pipe.run()
        return model_input.as_cpu().as_array().shape[:2] == (1, PROBE_FRAMES)
    except RuntimeError:
        return False


def gpu_formats(device: int = 0) -> list[DecoderFormat]:
    found = []
    for caps in nvdec.capabilities(device):
        clip = PROBE_CLIPS.get((caps.codec, caps.chroma, caps.bit_depth))
        if clip is None:
            continue
        # The smallest size NVDEC takes, in whole macroblocks, and not below what every encoder here takes.
        width, height = (max(64, -(-side // 16) * 16) for side in caps.min_size)
        try:
            data = probe_clip(*clip, width, height)
        except (av.FFmpegError, ValueError):
            continue  # no encoder of it here
        if decodes(data, device):
            found.append(DecoderFormat(caps.codec, caps.chroma, caps.bit_depth, caps.min_size, caps.max_size,
                                       caps.max_macroblocks * 256))  # fmt: skip
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        formats = gpu_formats(args.device)
    except nvdec.NvdecError as e:
        raise SystemExit(f"GPU {args.device}: {e}") from None
    if not formats:
        raise SystemExit(f"GPU {args.device}: DALI decodes none of the formats NVDEC lists")
    print(formats_to_json(formats))


if __name__ == "__main__":
    sys.exit(main())
