"""Which example a training sample is: a pure function of its global index.

Sample ``g`` is example ``perm_epoch[g % n]`` with a seeded permutation per epoch, and the
samples of one optimizer step are split over micro-batches and processes in a fixed pattern.
Resuming therefore needs only the step, and N processes see exactly what one would.
"""

from __future__ import annotations

import numpy as np

from lmforge.train.distributed import DistInfo


class EpochSampler:
    def __init__(self, size: int, seed: int) -> None:
        if size <= 0:
            raise ValueError("nothing to sample from: the training set is empty")
        self.size, self.seed = size, seed
        self._perm: tuple[int, np.ndarray] | None = None

    def index(self, sample: int) -> int:
        epoch, offset = divmod(sample, self.size)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.size))
        return int(self._perm[1][offset])

    def micro_batch(self, step: int, micro: int, micro_batches: int, micro_size: int,
                    dist: DistInfo) -> list[int]:
        global_batch = micro_batches * dist.world * micro_size
        first = step * global_batch + (micro * dist.world + dist.rank) * micro_size
        return [self.index(first + j) for j in range(micro_size)]
