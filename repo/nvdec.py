"""What a GPU's video decoder (NVDEC) takes, asked of the device: `cuvidGetDecoderCaps` for every codec, chroma
format and bit depth NVDEC knows, through the driver's own libraries (libcuda, libnvcuvid; no toolkit needed).

    python -m repo.nvdec [GPU]      # print the formats this GPU decodes, with their smallest and largest sizes
"""

import ctypes
import sys
from dataclasses import dataclass

# FFmpeg's codec names -> NVDEC's cudaVideoCodec (cuviddec.h).
CODECS = {"mpeg1video": 0, "mpeg2video": 1, "mpeg4": 2, "vc1": 3, "h264": 4, "mjpeg": 5, "hevc": 8, "vp8": 9,
          "vp9": 10, "av1": 11}  # fmt: skip
# Chroma formats by their subsampling name -> cudaVideoChromaFormat.
CHROMA = {"400": 0, "420": 1, "422": 2, "444": 3}
BIT_DEPTHS = (8, 10, 12)


class _Caps(ctypes.Structure):
    """CUVIDDECODECAPS (cuviddec.h); the fields after nMinHeight are reserved or unused here."""

    _fields_ = [
        ("eCodecType", ctypes.c_int),
        ("eChromaFormat", ctypes.c_int),
        ("nBitDepthMinus8", ctypes.c_uint),
        ("reserved1", ctypes.c_uint * 3),
        ("bIsSupported", ctypes.c_ubyte),
        ("nNumNVDECs", ctypes.c_ubyte),
        ("nOutputFormatMask", ctypes.c_ushort),
        ("nMaxWidth", ctypes.c_uint),
        ("nMaxHeight", ctypes.c_uint),
        ("nMaxMBCount", ctypes.c_uint),
        ("nMinWidth", ctypes.c_ushort),
        ("nMinHeight", ctypes.c_ushort),
        ("reserved3", ctypes.c_uint * 11),
    ]


@dataclass(frozen=True)
class Caps:
    codec: str  # FFmpeg's name
    chroma: str  # "420", "422", "444", "400"
    bit_depth: int
    min_size: tuple[int, int]  # (width, height)
    max_size: tuple[int, int]
    max_macroblocks: int  # width * height / 256 at most


class NvdecError(RuntimeError):
    pass


def capabilities(device: int = 0) -> list[Caps]:
    """Every (codec, chroma, bit depth) the GPU decodes, with its size limits. Raises NvdecError where there is no
    driver, no such GPU or no NVDEC library."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        cuvid = ctypes.CDLL("libnvcuvid.so.1")
    except OSError as e:
        raise NvdecError(f"no NVIDIA driver libraries here: {e}") from None

    def check(result: int, what: str) -> None:
        if result != 0:
            raise NvdecError(f"{what} failed with CUDA error {result}")

    check(cuda.cuInit(0), "cuInit")
    handle, context = ctypes.c_int(), ctypes.c_void_p()
    check(cuda.cuDeviceGet(ctypes.byref(handle), device), f"cuDeviceGet({device})")
    check(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), handle), "cuDevicePrimaryCtxRetain")
    found = []
    try:
        check(cuda.cuCtxPushCurrent_v2(context), "cuCtxPushCurrent")
        try:
            for codec, codec_id in CODECS.items():
                for chroma, chroma_id in CHROMA.items():
                    for depth in BIT_DEPTHS:
                        caps = _Caps(eCodecType=codec_id, eChromaFormat=chroma_id, nBitDepthMinus8=depth - 8)
                        if cuvid.cuvidGetDecoderCaps(ctypes.byref(caps)) != 0 or not caps.bIsSupported:
                            continue
                        found.append(Caps(codec, chroma, depth, (caps.nMinWidth, caps.nMinHeight),
                                          (caps.nMaxWidth, caps.nMaxHeight), caps.nMaxMBCount))  # fmt: skip
        finally:
            cuda.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))
    finally:
        cuda.cuDevicePrimaryCtxRelease_v2(handle)
    return found


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    for caps in capabilities(int(argv[0]) if argv else 0):
        (w0, h0), (w1, h1) = caps.min_size, caps.max_size
        print(f"{caps.codec:11} {caps.chroma} {caps.bit_depth:2}-bit  {w0}x{h0} to {w1}x{h1}, "
              f"{caps.max_macroblocks} macroblocks")  # fmt: skip


if __name__ == "__main__":
    main()
