"""Triton's trace of a run: per step of the ensembles, where a request's time goes; for one video, its chunks' time
line through decoder, segmenter and masker.

    server = TritonServer(repository, args=server_args(settings) + triton_trace.server_args(path))
    ... the run; the server stops (the trace file is written then) ...
    requests = triton_trace.load(path)
    videos = triton_trace.videos(requests, since_ns, until_ns)     # the ensemble requests of the run
    print(triton_trace.format_steps(triton_trace.steps(requests, videos)))
    print(triton_trace.format_chunks(triton_trace.chunks(requests, videos)))

The file (Triton's trace API, level TIMESTAMPS) is a JSON list of records, each with a request's `id`: one names the
request's model, its `request_id` (the client's id: the video's) and, for an ensemble's step, the ensemble request's
`parent_id`; every other record holds one timestamp (ns, the steady clock: `time.monotonic_ns()` on Linux). What this
server writes (tritonserver 2.51, read on the CPU machine, 2026-12-05):
- each ensemble request has an id, and so does each request it makes of a step; after the decoupled decoder the
  ensemble makes a segmenter request, then a masker request, per chunk: a video's chunks are those, in order;
- the decoder's request has no record per response, and its REQUEST_END is when its `execute` returned (the Python
  runner decodes on threads after that): when a chunk left the decoder is when its segmenter request started;
- an ensemble request has no COMPUTE_* timestamps; its GRPC_SEND_START/_END come once per response sent;
- requests batched into one execution share their COMPUTE_* timestamps.
"""

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from repo import models
from stream_client import protocol

ENSEMBLES = (protocol.ENTRY, protocol.MASK_ENTRY)
DECODERS = (models.DECODER, models.INPUT_DECODER)
MASKERS = (models.MASKER, models.CLASS_MASKER)
# The table's order: the way a chunk goes.
STEPS = (*ENSEMBLES, models.CHECK, *DECODERS, models.SEGMENTER, *MASKERS)

# Each phase of a request: from one timestamp to another.
PHASES = {
    "queue": ("QUEUE_START", "COMPUTE_START"),
    "compute_input": ("COMPUTE_START", "COMPUTE_INPUT_END"),
    "compute_infer": ("COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START"),
    "compute_output": ("COMPUTE_OUTPUT_START", "COMPUTE_END"),
    "total": ("REQUEST_START", "REQUEST_END"),
}


def server_args(path: Path, rate: int = 1) -> list[str]:
    """tritonserver options that trace every `rate`-th request's timestamps into `path` (written when it stops)."""
    return [
        f"--trace-config=triton,file={path}",
        "--trace-config=triton,log-frequency=0",  # one file, at the end (else path.0, path.1, ...)
        f"--trace-config=rate={rate}",
        "--trace-config=level=TIMESTAMPS",
        "--trace-config=count=-1",
    ]


@dataclass
class Request:
    """One traced request: of a model, or of an ensemble (`parent` None)."""

    id: int
    model: str = ""
    request_id: str = ""
    parent: int | None = None
    times: dict[str, list[int]] = field(default_factory=dict)  # name -> its ns, in order (GRPC_SEND_* repeat)

    def at(self, name: str) -> int | None:
        found = self.times.get(name)
        return found[0] if found else None

    def seconds(self, start: str, end: str) -> float | None:
        a, b = self.at(start), self.at(end)
        return None if a is None or b is None else (b - a) / 1e9


def load(path: Path) -> dict[int, Request]:
    """The trace file's records, gathered per request id."""
    requests: dict[int, Request] = {}
    for record in json.loads(Path(path).read_text()):
        request = requests.setdefault(record["id"], Request(record["id"]))
        if "model_name" in record:
            request.model, request.request_id = record["model_name"], record.get("request_id", "")
            request.parent = record.get("parent_id")
        for stamp in record.get("timestamps", []):
            request.times.setdefault(stamp["name"], []).append(int(stamp["ns"]))
    for request in requests.values():
        for values in request.times.values():
            values.sort()
    return requests


def videos(requests: dict[int, Request], since_ns: int = 0, until_ns: int | None = None) -> list[Request]:
    """The ensemble requests (one per video or segment) that started in [since_ns, until_ns], in order."""
    until_ns = until_ns if until_ns is not None else 1 << 63
    found = [r for r in requests.values() if r.model in ENSEMBLES and r.parent is None
             and since_ns <= (r.at("REQUEST_START") or -1) <= until_ns]  # fmt: skip
    return sorted(found, key=lambda r: r.at("REQUEST_START"))


def children(requests: dict[int, Request], video: Request, model: str | tuple[str, ...]) -> list[Request]:
    """The requests `video`'s ensemble made of `model` (or of any of several), by start."""
    wanted = (model,) if isinstance(model, str) else model
    found = [r for r in requests.values() if r.parent == video.id and r.model in wanted]
    return sorted(found, key=lambda r: r.at("REQUEST_START") or 0)


def _quantiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return {"median_ms": 1000 * statistics.median(ordered), "p90_ms": 1000 * p90}


def steps(requests: dict[int, Request], chosen: list[Request]) -> list[dict]:
    """Per model (the ensembles and their steps), over the chosen ensemble requests and what they asked of their steps:
    requests, executions (requests batched together count once) and each phase's median and p90."""
    ids = {v.id for v in chosen}
    involved = [r for r in requests.values() if r.id in ids or r.parent in ids]
    rows = []
    for model in [*STEPS, *sorted({r.model for r in involved} - set(STEPS))]:
        mine = [r for r in involved if r.model == model]
        if not mine:
            continue
        executions = {r.at("COMPUTE_START") for r in mine if r.at("COMPUTE_START") is not None}
        row = {"model": model, "requests": len(mine), "executions": len(executions)}
        for phase, (start, end) in PHASES.items():
            row[phase] = _quantiles([s for r in mine if (s := r.seconds(start, end)) is not None])
        rows.append(row)
    return rows


# Each chunk's moments, in order, as the columns of the time line: what each names is in `chunks`.
MOMENTS = ("decoded", "segmenter_start", "segmenter_end", "masker_start", "masker_end", "sent")


def chunks(requests: dict[int, Request], chosen: list[Request]) -> list[dict]:
    """Every chunk of the chosen ensemble requests (a video's segments), in order of leaving the decoder, with when it
    did (`decoded`: its segmenter request's start), when the segmenter and the masker computed it and when its
    response was sent to the client (ms from the first request's start; None where the trace has no such moment)."""
    if not chosen:
        return []
    zero = min(v.at("REQUEST_START") for v in chosen)
    rows = []
    for video in chosen:
        segmenter = children(requests, video, models.SEGMENTER)
        masker = children(requests, video, MASKERS)
        sent = video.times.get("GRPC_SEND_END", [])
        decoder = next(iter(children(requests, video, DECODERS)), None)
        previous = decoder.at("COMPUTE_START") if decoder else None
        for k, s in enumerate(segmenter):
            m = masker[k] if k < len(masker) else Request(-1)
            moments = (s.at("REQUEST_START"), s.at("COMPUTE_START"), s.at("COMPUTE_END"), m.at("COMPUTE_START"),
                       m.at("COMPUTE_END"), sent[k] if k < len(sent) else None)  # fmt: skip
            row = {"video": video.request_id, "chunk": k}
            row |= {name: None if t is None else (t - zero) / 1e6 for name, t in zip(MOMENTS, moments, strict=True)}
            # The decoder's time for this chunk: since the previous one left (the first: since the decoder started).
            decoded = s.at("REQUEST_START")
            row["decode_ms"] = None if previous is None or decoded is None else (decoded - previous) / 1e6
            previous = decoded
            rows.append(row)
    return sorted(rows, key=lambda r: (r["decoded"] is None, r["decoded"] or 0.0))


# Where a chunk's time goes, between the moments of the time line.
LEGS = {
    "decode": None,  # decode_ms
    "wait_segmenter": ("decoded", "segmenter_start"),
    "segmenter": ("segmenter_start", "segmenter_end"),
    "wait_masker": ("segmenter_end", "masker_start"),
    "masker": ("masker_start", "masker_end"),
    "to_client": ("masker_end", "sent"),
    "decoded_to_sent": ("decoded", "sent"),
}


def legs(rows: list[dict]) -> dict[str, dict[str, float] | None]:
    """Median and p90 of each leg of the chunks' way (ms)."""
    out = {}
    for leg, span in LEGS.items():
        if span is None:
            values = [r["decode_ms"] for r in rows if r["decode_ms"] is not None]
        else:
            values = [r[span[1]] - r[span[0]] for r in rows if r[span[0]] is not None and r[span[1]] is not None]
        out[leg] = _quantiles([v / 1000 for v in values])
    return out


def _ms(q: dict[str, float] | None) -> str:
    return "-" if q is None else f"{q['median_ms']:.2f} / {q['p90_ms']:.2f}"


def format_steps(rows: list[dict]) -> str:
    """The per-step table: each phase as `median / p90` in ms; `-` where the step has no such phase."""
    header = ["model", "requests", "executions", *PHASES]
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    for row in rows:
        lines.append(" | ".join([row["model"], str(row["requests"]), str(row["executions"]),
                                 *(_ms(row[p]) for p in PHASES)]))  # fmt: skip
    return "\n".join(lines)


def format_chunks(rows: list[dict], most: int = 40) -> str:
    """Where a chunk's time goes (median / p90, ms), then the time line of the first `most` chunks (ms from the
    first request's start)."""
    spent = legs(rows)
    lines = [f"{len(rows)} chunks; leg: median / p90 ms", *(f"  {leg}: {_ms(q)}" for leg, q in spent.items())]
    header = ["video", "chunk", "decode_ms", *MOMENTS]
    lines += [" | ".join(header), " | ".join("---" for _ in header)]
    for row in rows[:most]:
        cells = [row["video"], str(row["chunk"])]
        cells += ["-" if row[k] is None else f"{row[k]:.1f}" for k in ("decode_ms", *MOMENTS)]
        lines.append(" | ".join(cells))
    if len(rows) > most:
        lines.append(f"... {len(rows) - most} more chunks")
    return "\n".join(lines)
