"""FSDP on CPU processes: what accelerate leaves out and torch supports.

accelerate 1.15 turns `distributed_type: FSDP` into plain DDP when the processes run on CPU (`use_cpu:
true`): its state marks every CPU process group MULTI_CPU and keeps the FSDP plugin for accelerators only,
without a word. torch's FSDP2 (`fully_shard`) shards, gathers and checkpoints on CPU over gloo all the same,
so `enable_cpu_fsdp` lets an FSDP launch config (`configs/accelerate/cpu_fsdp_2proc.yaml`) shard on a CPU
machine too: the same code paths a GPU cluster takes (sharded checkpoints, gathered saves), testable here.
"""

from __future__ import annotations

import functools
import os
from typing import Any


def enable_cpu_fsdp() -> None:
    """Where `accelerate launch` asked for FSDP and there is no GPU, make the Accelerators this process builds
    shard with FSDP instead of falling back to DDP. A no-op otherwise; once per process."""
    import torch
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or torch.cuda.is_available():
        return
    original = AcceleratorState.__init__
    if getattr(original, "cpu_fsdp", False):
        return

    @functools.wraps(original)
    def init(self: AcceleratorState, *args: Any, fsdp_plugin: Any = None, **kwargs: Any) -> None:
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            # what accelerate does for a GPU process group (AcceleratorState.__init__, the FSDP branch)
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = self.distributed_type

    init.cpu_fsdp = True  # type: ignore[attr-defined]
    AcceleratorState.__init__ = init  # type: ignore[method-assign]
