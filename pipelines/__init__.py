"""The DALI pipelines of the chain, each defined once.

`decode`: encoded video -> chunks of frames and model input; `mask`: frames + class probabilities -> segmented frames.

Both server targets (Triton's native DALI backend and the Python-backend runner) build their models from these
functions; nothing else in the project defines a DALI graph.
"""
