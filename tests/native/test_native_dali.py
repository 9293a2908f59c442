"""The Python target's end-to-end proofs, run against Triton's real DALI backend: the same test functions, with this
folder's `server` (tests/native/conftest.py). Skipped, in one line, where the backend is not built."""

from dataclasses import replace

import pytest
from conftest import CPU_VIDEO
from helpers import collect

from repo.build import build
from repo.models import server_args
from repo.serve import TritonServer
from stream_client.stream import SegmentationStream

from .conftest import BACKEND, NATIVE, backend_missing

if reason := backend_missing():
    pytest.skip(reason, allow_module_level=True)

# Imported tests are collected here too, against the native server; so are the module fixtures they need.
from test_bad_input import test_bad_input_has_a_defined_outcome_and_the_server_goes_on  # noqa: E402, F401
from test_cli import (  # noqa: E402, F401
    test_errors_are_one_clear_line,
    test_h264_mp4_is_reencoded_for_the_cpu_server_and_every_frame_is_written,
    test_the_mask_is_written_as_a_grayscale_matte_video_beside_the_output,
)
from test_end_to_end import (  # noqa: E402, F401
    test_a_dali_model_refuses_a_request_for_fewer_than_all_its_outputs_as_tritons_dali_backend_does,
    test_a_request_chooses_what_comes_back,
    test_class_and_threshold_change_the_output_as_they_should,
    test_every_frame_comes_back_once_in_order,
    test_frames_chunks_and_videos_are_counted_on_the_metrics_endpoint,
    test_parameters_that_make_no_sense_are_refused,
    test_the_client_keeps_the_same_pixels_from_the_mask_as_the_server_from_its_frames,
    test_two_videos_at_once_on_one_stream_each_get_their_own_class_and_threshold,
)
from test_faults import (  # noqa: E402, F401
    long_video,
    long_video_seconds,
    test_a_client_that_goes_away_mid_video_fails_its_video_and_the_server_goes_on,
    test_eight_clients_at_once_each_get_their_own_video_frame_exact,
    time_limit,
)
from test_long_video import (  # noqa: E402, F401
    test_a_cancelled_run_leaves_the_server_serving,
    test_a_video_several_segments_long_comes_back_frame_exact,
)
from test_masks import (  # noqa: E402, F401
    asked,
    made_clips,
    test_each_chunk_of_a_decoder_carries_its_own_requests_frames_and_values,
    test_every_segments_masks_agree_with_a_reference_decoded_by_pyav,
)


def test_the_backend_has_no_watchdog_a_video_the_runner_would_fail_as_stuck_comes_back_whole(tmp_path, video):
    """Where the targets differ: with the same settings, the runner fails this video as stuck (its watchdog, see
    test_faults); the backend has none and decodes it to its end, however long each chunk takes."""
    settings = replace(NATIVE, decoder_stall_seconds=0.3, video_memory_bytes=0)
    with TritonServer(build(settings, tmp_path / "repo"), args=server_args(settings), dali_backend=BACKEND) as server:
        with SegmentationStream(server.url, idle_timeout=300) as stream:
            stream.send("slow", video(16, width=3840, height=2160, **CPU_VIDEO), threshold=0.0)
            result = collect(stream, {"slow"})["slow"]
    assert not isinstance(result, str), result
    assert sum(len(c) for c in result) == 16
