"""The decoder runs only as far ahead as the entry model's credits allow, and stops when they are withdrawn.

Called here directly, as the entry model calls it, with a credits pipe made by the test (same host as the server).
"""

import queue
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import CPU_VIDEO, SETTINGS

from pipelines import decode
from repo import models
from repo.flow_control import CREDITS_PARAMETER, Credits, CreditsClosed, CreditWait

CHUNKS = 5


@pytest.fixture
def decoder_stream(server):
    """(send(video, credits_path), responses queue) on a gRPC stream to the decoder model."""
    client = grpcclient.InferenceServerClient(server.url)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put(error or result))

    def send(data: bytes, credits: Credits) -> None:
        array = np.frombuffer(data, np.uint8)[None]
        tensor = grpcclient.InferInput(decode.VIDEO, list(array.shape), "UINT8")
        tensor.set_data_from_numpy(array)
        client.async_stream_infer(
            models.DECODER,
            [tensor],
            outputs=[grpcclient.InferRequestedOutput(decode.MODEL_INPUT)],
            parameters={CREDITS_PARAMETER: str(credits.path)},
        )

    yield send, responses
    client.stop_stream()
    client.close()


def chunks_within(responses: queue.Queue, seconds: float) -> list:
    got, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            got.append(responses.get(timeout=left))
        except queue.Empty:
            break
    return got


def test_the_decoder_sends_one_chunk_per_credit(decoder_stream, video):
    send, responses = decoder_stream
    with Credits(2) as credits:
        send(video(CHUNKS * SETTINGS.frames_per_chunk, **CPU_VIDEO), credits)
        assert len(chunks_within(responses, 10)) == 2  # and no more: it waits
        credits.give()
        (third,) = chunks_within(responses, 5)
        assert third.as_numpy(decode.MODEL_INPUT).shape[:2] == (1, SETTINGS.frames_per_chunk)
        credits.give(CHUNKS - 3)
        assert len(chunks_within(responses, 10)) == CHUNKS - 3


def test_withdrawn_credits_stop_the_decoder_and_it_serves_the_next_video(decoder_stream, video):
    send, responses = decoder_stream
    credits = Credits(1)
    send(video(CHUNKS * SETTINGS.frames_per_chunk, **CPU_VIDEO), credits)
    assert len(chunks_within(responses, 10)) == 1
    credits.close(cancel=True)
    (error,) = chunks_within(responses, 10)
    assert "cancelled by the caller" in str(error)
    with Credits(CHUNKS) as credits:
        send(video(2 * SETTINGS.frames_per_chunk, **CPU_VIDEO), credits)
        assert len(chunks_within(responses, 10)) == 2


def test_a_wait_without_credit_times_out_and_a_closed_pipe_ends_it():
    credits = Credits(1)
    with CreditWait(str(credits.path), timeout=0.2) as wait:
        wait.take()
        with pytest.raises(CreditsClosed, match="no credit"):
            wait.take()
        credits.give(3)
        credits.close(cancel=True)
        with pytest.raises(CreditsClosed, match="cancelled"):
            wait.take()
    with pytest.raises(CreditsClosed, match="let go"):
        CreditWait(str(credits.path), timeout=0.2)
