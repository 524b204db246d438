"""Run by ``torchrun`` in the tests: distil a few steps and save this rank's adapter weights."""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from sdrt.distill.config import DistillConfig
from sdrt.distill.trainer import DistillTrainer, run_distillation, world


def main(trace_dir: str, out: str) -> None:
    torch.set_num_threads(1)
    config = DistillConfig(
        model="tiny:llava",
        traces=trace_dir,
        out=out,
        steps=4,
        batch_size=4,
        warmup_steps=0,
        lr=1e-2,
        seed=0,
        loss={"hidden": 1.0, "ce": 1.0, "kl": 0.5},
        cache_teacher=True,  # each rank fills its share of the cache, then reads the others'
    )
    captured = {}
    original = DistillTrainer.__init__

    def remember(self, *args, **kwargs):
        original(self, *args, **kwargs)
        captured["trainer"] = self
        captured["initial"] = {k: v.detach().clone() for k, v in self.adapter.state_dict().items()}

    DistillTrainer.__init__ = remember
    run_distillation(config)
    rank, _ = world()
    state = {k: v.detach().contiguous() for k, v in captured["trainer"].adapter.state_dict().items()}
    Path(out).mkdir(parents=True, exist_ok=True)
    save_file(state, str(Path(out) / f"rank{rank}.safetensors"))
    if rank == 0:
        save_file(
            {k: v.contiguous() for k, v in captured["initial"].items()},
            str(Path(out) / "initial.safetensors"),
        )
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
