"""Where a training step's time goes: torch.profiler over 30 default steps, in one process.

    python docs/experiments/profile_step.py

The step of ``step_time.py`` (batch 256, 9,066 items, 2 threads, the default config with the
mismatch term), 20 warm-up steps, then the 30 profiled; prints the top ops by their own CPU time.
"""

import torch
from step_time import variant
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    torch.set_num_threads(2)
    step = variant(d_mismatch=1.0)
    for _ in range(20):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(30):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
