"""``vgate worker``: the vLLM launcher, or the dry-run simulator.

    vgate worker [launcher flags]          exec vLLM's OpenAI server (production, GPU pods)
    vgate worker --dry-run [sim flags]     the vLLM simulator (no GPU, no model)

``VGATE_DRY_RUN=1`` selects the simulator as ``--dry-run`` does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

_TRUE = {"1", "true", "yes", "on"}


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    if "--dry-run" in args or os.environ.get("VGATE_DRY_RUN", "").strip().lower() in _TRUE:
        from vgate_worker.sim.server import main as sim_main

        return sim_main([a for a in args if a != "--dry-run"])
    from vgate_worker.launcher import main as launch_main

    return launch_main(args)
