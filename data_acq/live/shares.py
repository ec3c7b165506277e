"""Which buckets a live worker owns: disjoint shares, so workers never refresh the same unit."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Share:
    """Worker `worker` (1-based) of `workers`: the buckets whose number modulo `workers` is
    `worker - 1`. The first worker also stages, for everyone: one cursor, one writer."""

    worker: int = 1
    workers: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.worker <= self.workers:
            raise ValueError(f"live worker {self.worker} is not one of 1..{self.workers}")

    def owns(self, bucket: int) -> bool:
        return bucket % self.workers == self.worker - 1

    @property
    def stages(self) -> bool:
        return self.worker == 1

    def __str__(self) -> str:
        return f"live worker {self.worker} of {self.workers}"
