"""Weights of an alignment run's last checkpoint, for a look before the run ends.

    python scripts/export_alignment_checkpoint.py --config configs/align-embedded.yaml \\
        --out runs/align-embedded --to runs/align-embedded/at-checkpoint

The folder it writes loads like shipped weights (``EmbeddedVLM.load(weights_dir=...)``,
``scripts/testbed_eval.py --weights``); its config records the step it was taken at.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sdrt.config import load_config
from sdrt.models.embedded import CONFIG_FILE, EmbeddedVLM
from sdrt.training import align as alignment
from sdrt.training.core import load_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the run's folder (holds checkpoints/)")
    parser.add_argument("--to", type=Path, required=True, help="where the weights go")
    args = parser.parse_args(argv)
    config = load_config(alignment.AlignConfig, args.config, out=args.out)
    saved = load_checkpoint(args.out, alignment.run_fingerprint(config), f"not the run of {args.config}")
    if saved is None:
        raise SystemExit(f"{args.out} holds no checkpoint yet")
    vlm = EmbeddedVLM.load(untrained=True, vision=config.vision, seed=config.seed, feature_cache=False)
    alignment.add_lora(vlm, config)
    alignment.load_trainable_state(vlm, saved.trainable)
    alignment.export_weights(vlm, config, None, folder=args.to)
    described = json.loads((args.to / CONFIG_FILE).read_text())
    described["checkpoint_step"] = saved.step
    (args.to / CONFIG_FILE).write_text(json.dumps(described, indent=2, sort_keys=True) + "\n")
    print(f"step {saved.step} -> {args.to}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
