"""Put chunks of frames back in order by the index of their first frame."""

import heapq

import numpy as np


class OrderError(RuntimeError):
    pass


class Reorderer:
    """Takes chunks in any order, gives back each frame exactly once, in order; refuses overlaps."""

    def __init__(self) -> None:
        self.next_index = 0
        self._held: list[tuple[int, int, np.ndarray]] = []  # (first index, arrival, frames)
        self._arrivals = 0

    def push(self, first: int, frames: np.ndarray) -> list[np.ndarray]:
        """Add a chunk; return the frames that are now in order (possibly none)."""
        if first < self.next_index or any(first < f + len(c) and f < first + len(frames) for f, _, c in self._held):
            raise OrderError(f"frames {first}..{first + len(frames) - 1} arrived twice")
        heapq.heappush(self._held, (first, self._arrivals, frames))
        self._arrivals += 1
        ready = []
        while self._held and self._held[0][0] == self.next_index:
            _, _, chunk = heapq.heappop(self._held)
            ready.extend(chunk)
            self.next_index += len(chunk)
        return ready

    @property
    def held_frames(self) -> int:
        return sum(len(c) for _, _, c in self._held)

    def finish(self) -> None:
        """Check that nothing is left waiting for a missing frame."""
        if self._held:
            raise OrderError(f"frames {self.next_index}..{self._held[0][0] - 1} never arrived")
