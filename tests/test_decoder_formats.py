"""What a server's decoder takes, and what the client converts for it.

A GPU server asks its device when it starts (`repo.formats`: NVDEC's capabilities, each tried through DALI); that
runs in the GPU lane (tests/gpu). Here: the decisions taken from such an answer, with the one an H100 gave
(2026-12-08, `python -m repo.formats` there), the conversion itself, and a CPU server, which lists no formats.
"""

import io

import av
import numpy as np
import pytest

from stream_client import videos
from stream_client.probe import layout, probe
from stream_client.protocol import DecoderFormat, ServerInfo, formats_from_json, formats_to_json
from stream_client.sample import sample_frame

MB = 256  # pixels per macroblock
H100 = (
    DecoderFormat("mpeg4", "420", 8, (48, 16), (2048, 2048), 8192 * MB),
    DecoderFormat("h264", "420", 8, (48, 16), (4096, 4096), 65536 * MB),
    DecoderFormat("hevc", "420", 8, (144, 144), (8192, 8192), 262144 * MB),
    DecoderFormat("hevc", "420", 10, (144, 144), (8192, 8192), 262144 * MB),
    DecoderFormat("hevc", "420", 12, (144, 144), (8192, 8192), 262144 * MB),
    DecoderFormat("vp8", "420", 8, (48, 16), (4096, 4096), 65536 * MB),
    DecoderFormat("vp9", "420", 8, (128, 128), (8192, 8192), 262144 * MB),
)
CPU = ServerInfo("cpu", ("vp8", "vp9", "mjpeg"), "person", 0.5, (64, 64), 1 << 30, 18000)
GPU = ServerInfo("gpu", ("h264",), "person", 0.5, (224, 224), 1 << 30, 18000).with_formats(H100)
ORDER = videos.conversions_for("gpu")


def test_formats_travel_as_json_and_name_the_codecs_the_decoder_reads():
    assert formats_from_json(formats_to_json(H100)) == H100
    assert GPU.codecs == ("mpeg4", "h264", "hevc", "vp8", "vp9")


@pytest.mark.parametrize(
    "video,why",
    [
        (("hevc", "420", 8, 160, 128), "reads hevc 4:2:0 8-bit from 144x144 to 8192x8192, not 160x128"),
        (("vp9", "420", 8, 160, 120), "reads vp9 4:2:0 8-bit from 128x128 to 8192x8192, not 160x120"),
        (("h264", "444", 8, 97, 55), "reads h264 in 4:2:0 8-bit, not 4:4:4 8-bit"),
        (("h264", "420", 10, 640, 360), "reads h264 in 4:2:0 8-bit, not 4:2:0 10-bit"),
        (("mjpeg", "420", 8, 640, 360), "reads mpeg4, h264, hevc, vp8, vp9, not mjpeg"),
        (("av1", "420", 8, 640, 360), "not av1"),
        (("h264", "420", 8, 8192, 4320), "reads h264 4:2:0 8-bit from 48x16 to 4096x4096, not 8192x4320"),
    ],
)
def test_a_gpu_server_refuses_what_its_device_said_it_does_not_take(video, why):
    assert why in GPU.refusal(*video)


def test_what_the_gpu_takes_goes_as_it_is_and_an_unknown_layout_counts_as_420_8_bit():
    assert GPU.refusal("h264", "420", 8, 1920, 1080) is None
    assert GPU.refusal("hevc", "420", 10, 3840, 2160) is None
    assert GPU.refusal("h264", "", 0, 64, 48) is None


def test_the_conversion_is_h264_where_it_fits_scaled_up_to_the_smallest_size_else_a_larger_codec():
    assert GPU.conversion(160, 128, ORDER) == ("h264", 160, 128)  # HEVC too small: H.264 takes it as it is
    assert GPU.conversion(97, 55, ORDER) == ("h264", 98, 56)  # even, for 4:2:0
    assert GPU.conversion(40, 12, ORDER) == ("h264", 48, 16)  # below H.264's smallest: scaled up to it
    assert GPU.conversion(8192, 4320, ORDER) == ("hevc", 8192, 4320)  # above H.264's largest: HEVC takes it
    with pytest.raises(ValueError, match="frames of 16384x8640 are larger than this server's GPU decoder takes"):
        GPU.conversion(16384, 8640, ORDER)


def test_a_cpu_server_lists_no_formats_its_codecs_say_it_all():
    assert CPU.refusal("vp9", "444", 10, 16, 16) is None
    assert "its CPU decoder reads vp8, vp9, mjpeg, not h264" == CPU.refusal("h264", "420", 8, 64, 48)
    assert CPU.conversion(97, 55, videos.conversions_for("cpu")) == ("mjpeg", 97, 55)


def test_a_conversion_keeps_every_frame_at_the_size_asked_in_a_layout_nvdec_takes(tmp_path):
    source = tmp_path / "small444.mp4"
    with av.open(str(source), "w") as container:  # H.264 4:4:4 with B-frames, at an odd size: NVDEC takes neither
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 97, 55, "yuv444p"
        stream.codec_context.options = {"bf": "2"}
        for i in range(12):
            frame = av.VideoFrame.from_ndarray(sample_frame(i, 55, 97), format="rgb24").reformat(format="yuv444p")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    assert (probe(source).chroma, probe(source).width) == ("444", 97)
    data = videos.convert(source, None, "h264", (56, 98))
    found = probe(data)
    assert (found.codec, found.width, found.height, found.packets) == ("h264", 98, 56, 12)
    assert (found.chroma, found.bit_depth) == ("420", 8)
    with av.open(io.BytesIO(data)) as container:
        converted = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    small = np.stack([np.asarray(av.VideoFrame.from_ndarray(f, format="rgb24").reformat(width=98, height=56)
                      .to_ndarray(format="rgb24")) for f in videos.frames(source)])  # fmt: skip
    assert np.abs(converted.astype(int) - small).mean() < 4  # the same frames, in order


def test_the_layout_of_a_pixel_format():
    assert layout("yuv420p") == ("420", 8) and layout("yuvj444p") == ("444", 8)
    assert layout("yuv420p10le") == ("420", 10) and layout("gray") == ("400", 8) and layout(None) == ("", 0)


def test_a_cpu_server_says_it_lists_no_formats(stream):
    assert stream.server_info().formats == () and stream.server_info().codecs == ("vp8", "vp9", "mjpeg")
