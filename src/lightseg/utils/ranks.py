"""Which process of a launched job this is, read from the launcher's environment (before any
process group exists, and in the process that launches ddp_spawn's ranks)."""

import os

#: Where launchers put a process's place in its job: torchrun, srun, and Lightning's own
#: launch of one process per GPU (trainer=ddp), which sets only the local and node ranks.
RANKS = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")


def is_first_process() -> bool:
    """Rank 0 of a launched job, or a lone process: the one that owns the run folder."""
    return all(os.environ.get(name, "0") == "0" for name in RANKS)
