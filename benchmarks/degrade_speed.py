"""How long MATLAB-bicubic degradation of a training batch takes (was a wall-clock assert in
tests/test_degrade.py; timings belong here, not in tests that must pass on a loaded machine).

    python benchmarks/degrade_speed.py   # best of 30 runs of degrade(16x3x384x384, 8)
The test used to demand < 0.1 s, which a loaded machine missed.
"""

from __future__ import annotations

import math
import time

import torch

from clipsr_cli.data.degrade import degrade


def main() -> None:
    hr = torch.rand(16, 3, 384, 384)
    degrade(hr, 8)  # warm-up (weight tables are cached)
    best = math.inf
    for _ in range(30):
        t = time.perf_counter()
        degrade(hr, 8)
        best = min(best, time.perf_counter() - t)
    print(f"degrade 16x3x384x384 at x8: best of 30 = {best * 1000:.1f} ms "
          f"(threads: {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
