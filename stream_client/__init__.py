"""The client: stream videos to the `segment_video` model over gRPC and put the segmented frames back in order.

`stream` (one gRPC stream, videos in, chunk events out), `reorder` (frames back in order by index), `videos`
(PyAV: read, re-encode for CPU servers, write), `segment` (the whole job for one file), `cli` (the command).
"""
