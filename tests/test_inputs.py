"""What a command line names: files, folders (their video files, subfolders with --recursive), live sources; and an
output each, named after its input, none alike."""

from pathlib import Path

import pytest

from stream_client.inputs import default_output, expand, outputs


def test_folders_give_their_videos_and_each_output_is_named_after_its_input(tmp_path):
    clips = tmp_path / "clips"
    (clips / "sub").mkdir(parents=True)
    for name in ("a.mp4", "a.mkv", "B.webm", "notes.txt", "sub/c.ts"):
        (clips / name).write_bytes(b"")
    out = clips  # outputs written among the inputs: passed over the next time
    (out / "B_segmented.mp4").write_bytes(b"")
    (out / "B_segmented.mp4.parts").mkdir()
    (out / "B_segmented.mp4.parts" / "segment_00000.ts").write_bytes(b"")

    flat, folders = expand([str(clips)], out_dir=out)
    assert folders and [Path(i.source).name for i in flat] == ["B.webm", "a.mkv", "a.mp4"]
    deep, _ = expand([str(clips), "-", "udp://127.0.0.1:5000"], recursive=True, out_dir=out)
    names = [str(path.relative_to(out)) for path in outputs(deep, out)]
    assert names == ["B_segmented.mp4", "a_mkv_segmented.mp4", "a_mp4_segmented.mp4", "sub/c_segmented.mp4",
                     "stdin_segmented.mp4", "udp_127.0.0.1_5000_segmented.mp4"]  # fmt: skip
    assert default_output("-") == Path("stdin_segmented.mp4")


def test_a_name_that_is_nothing_is_refused_and_standard_input_is_read_once(tmp_path):
    with pytest.raises(ValueError, match="no such file or folder: .*missing.mp4"):
        expand([str(tmp_path / "missing.mp4")])
    with pytest.raises(ValueError, match="standard input"):
        expand(["-", "-"])
