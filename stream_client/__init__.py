"""The client: stream videos to a Triton server of this project over gRPC and get their segmentation back.

It installs without the server (`pip install ./triton-video-segmentation` from a checkout: tritonclient, PyAV, numpy)
and meets the server only at `protocol`, the wire protocol both sides import. Modules: `stream` (one gRPC stream:
videos in, chunk events out), `segment` (the whole job for videos of any length and live sources: windows over
servers, resume) in stages: `sources` and `live` (where segments come from), `sending`, `encoders`, `writing` and
`output` (the output files, written in parallel); `job` and `report` (one video of a run, what it says), `gops`
(cutting at safe keyframes), `inputs`, `probe`, `videos` (PyAV), `audio` (the source's audio tracks in the output),
`access` (TLS, access keys), `cli` (the `segment-video` command).

    from stream_client.stream import Chunk, Failed, Finished, SegmentationStream

    with SegmentationStream("triton.example:8001") as stream:
        stream.send("clip", open("clip.mp4", "rb").read(), class_name="person", returns="both")
        while not isinstance(event := stream.next_event(), (Finished, Failed)):
            print(event.first, event.frames.shape, event.mask.mean())  # frames first..first+len: RGB, the mask
"""
