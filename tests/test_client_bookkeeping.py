"""What the client keeps of a run besides its files: the timeline counts each frame once whatever was retried, and
a run waiting on its encoders fails when one of their processes dies instead of waiting for ever."""

import queue

import numpy as np
import pytest

from stream_client.encoders import Encoders
from stream_client.timeline import Timeline


def test_a_dropped_segment_leaves_the_timeline_and_only_settled_segments_are_saved(tmp_path):
    timeline = Timeline(3.0)
    timeline.add(0, np.array([0.0, 0.5, 1.2]), np.array([0.2, 0.4, 1.0]))
    timeline.commit(0)
    timeline.add(1, np.array([1.5, 2.1]), np.array([0.5, 0.5]))  # a segment that fails half way
    assert timeline.frames.tolist() == [2, 2, 1]  # what the live page shows meanwhile
    timeline.save(tmp_path)
    assert Timeline.load(tmp_path).frames.tolist() == [2, 1, 0]  # a resumed run starts from the settled ones
    timeline.drop(1)
    timeline.add(1, np.array([1.5, 2.1, 2.6]), np.array([0.0, 0.0, 0.3]))  # sent again, now whole
    timeline.commit(1)
    assert timeline.frames.tolist() == [2, 2, 2]
    assert [p["kept"] for p in timeline.points()] == [0.3, 0.5, 0.15]
    timeline.save(tmp_path)
    assert Timeline.load(tmp_path).as_dict() == timeline.as_dict()


def test_a_dead_encoder_process_is_reported():
    with Encoders(2, queue.Queue()) as encoders:
        encoders.check()
        encoders._workers[1].kill()
        encoders._workers[1].join(timeout=30)
        with pytest.raises(RuntimeError, match=r"an encoder process ended \(exit code -9\)"):
            encoders.check()
