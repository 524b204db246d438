"""Alignment of the embedded VLM: train the projector (and LoRA on SmolLM2) on image QA.

Data: easy-vqa training questions, plus descriptions and single-hop questions of generated
scenes. Multi-hop scene questions are kept out on purpose: they are where a first-step
analysis (a description) should help a second step, which is the premise SDRT distils, so
the aligned model must not already have been trained to answer them in one step.

Only answer tokens carry loss and only their logits are computed (``score`` does that), image
features are cached, and the batch for step ``s`` depends only on ``(seed, s)``, so a killed
run resumes from its last checkpoint and sees exactly the batches it would have seen.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from safetensors.torch import save_file

from sdrt.data.records import DataError, VQARecord
from sdrt.models.base import EncodedImage, Prompt
from sdrt.models.embedded import (
    CONFIG_FILE,
    LORA_PREFIX,
    PROJECTOR_PREFIX,
    WEIGHTS_FILE,
    EmbeddedVLM,
)

log = logging.getLogger(__name__)

SceneKind = Literal["describe", "single-hop"]
CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "train_log.txt"
DESCRIBE_QUESTION = "Describe the image."


class AlignConfig(BaseModel):
    """Hyperparameters of one alignment run; saved beside the weights it produces."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    out: Path = Path("runs/align")
    steps: int = Field(default=600, gt=0)
    batch_size: int = Field(default=16, gt=0)
    seed: int = 0
    grid: int = Field(default=4, ge=1, le=7)
    lr_projector: float = Field(default=1e-3, gt=0)
    lr_lora: float = Field(default=3e-4, gt=0)
    warmup_steps: int = Field(default=20, ge=0)
    lora_rank: int = Field(default=8, ge=0)  # 0 trains the projector alone
    lora_alpha: int = Field(default=16, gt=0)
    lora_targets: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    easyvqa_limit: int | None = Field(default=None, gt=0)  # training questions; None = all
    scenes: int = Field(default=0, ge=0)  # generated scenes; 0 = easy-vqa only
    scene_kinds: list[SceneKind] = ["describe", "single-hop"]
    scene_share: float = Field(default=0.3, ge=0, le=1)  # fraction of batches drawn from scenes
    describe_share: float = Field(default=0.4, ge=0, le=1)  # of those, the fraction of description batches
    bf16: bool = True  # bfloat16 autocast: about half the step time on CPUs with AVX512-BF16
    instruction_share: float = Field(default=0.7, ge=0, le=1)  # questions with the answer instruction
    checkpoint_every: int = Field(default=25, gt=0)
    log_every: int = Field(default=10, gt=0)
    eval_questions: int = Field(default=200, ge=0)  # seeded easy-vqa test sample scored at the end
    threads: int = Field(default=2, gt=0)
    command: str | None = None  # the command line that ran this, recorded in the weights' config

    @field_validator("scene_kinds", mode="before")
    @classmethod
    def _no_multi_hop(cls, kinds: Any) -> Any:
        if isinstance(kinds, list | tuple | set) and "multi-hop" in kinds:
            raise ValueError("multi-hop scene questions stay out of alignment (SDRT needs them unseen)")
        return kinds


@dataclass
class Example:
    image: int  # index into the run's feature table
    question: str
    answer: str
    source: str  # "easy-vqa" or "scenes"


@dataclass
class AlignData:
    features: torch.Tensor  # (N_images, T, 1280) float16, one row per distinct image
    easyvqa: list[Example]
    single_hop: list[Example]
    describe: list[Example]

    @property
    def scene_count(self) -> int:
        return len(self.single_hop) + len(self.describe)


def align(config: AlignConfig, on_step: Callable[[int, float], None] | None = None) -> Path:
    """Train, checkpointing as it goes; returns the folder holding the exported weights.

    ``on_step(step, loss)`` is called after every step (the CLI drives a progress bar with it).
    """
    torch.set_num_threads(config.threads)
    config.out.mkdir(parents=True, exist_ok=True)
    vlm = EmbeddedVLM.load(untrained=True, grid=config.grid, seed=config.seed)
    data = build_data(vlm, config)
    # Seed right before LoRA's random init: building the data may or may not construct the
    # vision trunk (it does only on feature-cache misses), which would shift the global RNG.
    torch.manual_seed(config.seed)
    add_lora(vlm, config)
    optimizer = make_optimizer(vlm, config)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    start = resume(vlm, optimizer, schedule, config)
    note(
        config,
        f"aligning: {len(data.easyvqa)} easy-vqa + {data.scene_count} scene examples, "
        f"steps {start}..{config.steps}",
    )
    clock, losses = time.perf_counter(), []
    for step in range(start, config.steps):
        loss = train_step(
            vlm, optimizer, schedule, sample_batch(data, config, step), data.features, config.bf16
        )
        losses.append(loss)
        if on_step:
            on_step(step + 1, loss)
        if (step + 1) % config.log_every == 0:
            seconds = (time.perf_counter() - clock) / len(losses)
            note(
                config,
                f"step {step + 1}/{config.steps} loss {sum(losses) / len(losses):.4f} {seconds:.2f} s/step",
            )
            clock, losses = time.perf_counter(), []
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            save_checkpoint(vlm, optimizer, schedule, config, step + 1)
    accuracy = quick_eval(vlm, config) if config.eval_questions else None
    return export_weights(vlm, config, accuracy)


def note(config: AlignConfig, message: str) -> None:
    """Progress goes to the log and to ``out/train_log.txt``, which outlives the terminal."""
    log.info(message)
    with open(config.out / LOG_FILE, "a") as handle:
        handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


# --- data ------------------------------------------------------------------------------------


def build_data(vlm: EmbeddedVLM, config: AlignConfig) -> AlignData:
    """Examples with their images encoded once (the feature cache makes reruns cheap)."""
    from sdrt.data.easyvqa import read_easy_vqa

    easy = read_easy_vqa("train", limit=config.easyvqa_limit, seed=config.seed)
    scene = scene_records(config) if config.scenes and config.scene_share > 0 else []
    table: dict[str, int] = {}
    images: list[Any] = []
    examples: dict[str, list[Example]] = {"easy-vqa": [], "scenes": []}
    for source, records in (("easy-vqa", easy), ("scenes", scene)):
        for record in records:
            # A scene's records share one in-memory image: encode it once.
            key = record.image_path or f"in-memory@{id(record.image)}"
            if key not in table:
                table[key] = len(images)
                images.append(record.load_image())
            if not record.answers:
                raise DataError(f"record {record.id!r}: alignment needs an answer")
            examples[source].append(Example(table[key], record.question, record.answers[0].strip(), source))
    features = torch.cat([encode_chunk(vlm, images[i : i + 256]) for i in range(0, len(images), 256)])
    scenes = examples["scenes"]
    return AlignData(
        features,
        examples["easy-vqa"],
        [e for e in scenes if e.question != DESCRIBE_QUESTION],
        [e for e in scenes if e.question == DESCRIBE_QUESTION],
    )


def encode_chunk(vlm: EmbeddedVLM, images: Sequence[Any]) -> torch.Tensor:
    return torch.stack([e.features for e in vlm.encode_images(images)]).to(torch.float16)


def scene_records(config: AlignConfig) -> list[VQARecord]:
    """Describe and single-hop records of seeded generated scenes (never multi-hop)."""
    from sdrt.data.scenes import make_scenes
    from sdrt.data.scenes import scene_records as records_of

    records = records_of(make_scenes(config.scenes, seed=config.seed), kinds=set(config.scene_kinds))
    kept = [r for r in records if int(r.metadata.get("hops", 0)) <= 1]
    if not kept:
        raise DataError(
            f"the scene generator gave no describe or single-hop records for {config.scenes} scenes"
        )
    return kept


def sample_batch(data: AlignData, config: AlignConfig, step: int) -> list[tuple[Example, bool]]:
    """The batch of ``step``: a pure function of (seed, step), so resuming replays exactly.

    A batch comes from one pool (easy-vqa, scene questions or scene descriptions): left padding
    costs the batch's longest row, and one long description would lengthen every row.
    Each item is (example, whether its prompt carries the short-answer instruction).
    """
    rng = random.Random(config.seed * 1_000_003 + step)
    pool = data.easyvqa
    if data.scene_count and rng.random() < config.scene_share:
        describe = rng.random() < config.describe_share
        pool = data.describe if (describe and data.describe) or not data.single_hop else data.single_hop
    batch = []
    for _ in range(config.batch_size):
        example = pool[rng.randrange(len(pool))]
        batch.append((example, rng.random() < config.instruction_share))
    return batch


def training_prompt(example: Example, with_instruction: bool) -> Prompt:
    """Direct-mode prompts as the evaluation sends them, sometimes bare; descriptions stay bare."""
    from sdrt.prompts.library import direct_prompt

    if with_instruction and example.question != DESCRIBE_QUESTION:
        return direct_prompt(example.question)
    return example.question


# --- model and optimiser ---------------------------------------------------------------------


def add_lora(vlm: EmbeddedVLM, config: AlignConfig) -> None:
    """LoRA on SmolLM2's attention and MLP projections (injected in place; never the embeddings)."""
    if config.lora_rank == 0:
        return
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        target_modules=list(config.lora_targets),
        lora_dropout=0.0,
    )
    vlm.peft_model = get_peft_model(vlm.lm, lora)  # type: ignore[attr-defined]


def lora_parameters(vlm: EmbeddedVLM) -> list[torch.nn.Parameter]:
    return [p for name, p in vlm.lm.named_parameters() if "lora_" in name and p.requires_grad]


def make_optimizer(vlm: EmbeddedVLM, config: AlignConfig) -> torch.optim.Optimizer:
    groups = [{"params": list(vlm.projector.parameters()), "lr": config.lr_projector}]
    if config.lora_rank:
        groups.append({"params": lora_parameters(vlm), "lr": config.lr_lora})
    return torch.optim.AdamW(groups, weight_decay=0.0)


def lr_factor(step: int, config: AlignConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_step(
    vlm: EmbeddedVLM,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    batch: list[tuple[Example, bool]],
    features: torch.Tensor,
    bf16: bool,
) -> float:
    """One optimiser step of answer-token cross-entropy."""
    images = [EncodedImage("embedded", features[example.image].float()) for example, _ in batch]
    prompts = [training_prompt(example, instructed) for example, instructed in batch]
    answers = [example.answer for example, _ in batch]
    with torch.autocast(vlm.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = vlm.score(images, prompts, answers)
        logits = out.answer_logits[out.answer_token_mask]  # (n_answer_tokens, V)
        loss = F.cross_entropy(logits.float(), out.answer_ids[out.answer_token_mask])
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


# --- checkpoints and export ------------------------------------------------------------------


def trainable_state(vlm: EmbeddedVLM) -> dict[str, torch.Tensor]:
    """Projector and LoRA tensors under the prefixes ``EmbeddedVLM.load`` reads."""
    state = {PROJECTOR_PREFIX + k: v.detach().clone() for k, v in vlm.projector.state_dict().items()}
    if hasattr(vlm, "peft_model"):
        from peft import get_peft_model_state_dict

        lora = get_peft_model_state_dict(vlm.peft_model)
        state.update({LORA_PREFIX + k: v.detach().clone() for k, v in lora.items()})
    return state


def load_trainable_state(vlm: EmbeddedVLM, state: dict[str, torch.Tensor]) -> None:
    vlm.projector.load_state_dict(
        {k.removeprefix(PROJECTOR_PREFIX): v for k, v in state.items() if k.startswith(PROJECTOR_PREFIX)}
    )
    lora = {k.removeprefix(LORA_PREFIX): v for k, v in state.items() if k.startswith(LORA_PREFIX)}
    if lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(vlm.peft_model, lora)


def run_fingerprint(config: AlignConfig) -> dict[str, Any]:
    """The settings a checkpoint must share with the run that resumes it."""
    return config.model_dump(
        mode="json", exclude={"out", "checkpoint_every", "log_every", "eval_questions", "threads", "command"}
    )


def save_checkpoint(
    vlm: EmbeddedVLM, optimizer: torch.optim.Optimizer, schedule: Any, config: AlignConfig, step: int
) -> None:
    """Written to a temporary file and renamed, so a kill mid-write keeps the previous checkpoint."""
    path = config.out / CHECKPOINT_FILE
    staging = path.with_suffix(".tmp")
    torch.save(
        {
            "step": step,
            "fingerprint": run_fingerprint(config),
            "trainable": trainable_state(vlm),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
        },
        staging,
    )
    staging.replace(path)


def resume(vlm: EmbeddedVLM, optimizer: torch.optim.Optimizer, schedule: Any, config: AlignConfig) -> int:
    """The step to start from: 0, or the last checkpoint's step when the settings match."""
    path = config.out / CHECKPOINT_FILE
    if not path.is_file():
        return 0
    saved = torch.load(path, map_location="cpu", weights_only=False)
    if saved.get("fingerprint") != run_fingerprint(config):
        raise DataError(
            f"{path} was written by a run with other settings; use another --out or delete it to start over"
        )
    load_trainable_state(vlm, saved["trainable"])
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    note(config, f"resumed from {path} at step {saved['step']}")
    return int(saved["step"])


@torch.no_grad()
def quick_eval(vlm: EmbeddedVLM, config: AlignConfig) -> dict[str, Any]:
    """Exact-match accuracy on a seeded easy-vqa test sample, in direct mode."""
    from sdrt.data.easyvqa import read_easy_vqa
    from sdrt.prompts.library import direct_prompt

    records = read_easy_vqa("test", limit=config.eval_questions, seed=config.seed)
    correct = 0
    for start in range(0, len(records), 32):
        chunk = records[start : start + 32]
        gens = vlm.generate(
            [r.load_image() for r in chunk], [direct_prompt(r.question) for r in chunk], max_new_tokens=6
        )
        correct += sum(
            g.text.strip().lower() == r.answers[0].lower() for g, r in zip(gens, chunk, strict=True)
        )
    result = {
        "easy_vqa_test_questions": len(records),
        "sample_seed": config.seed,
        "accuracy": correct / len(records),
    }
    note(config, f"quick eval: {result}")
    return result


def export_weights(vlm: EmbeddedVLM, config: AlignConfig, accuracy: dict[str, Any] | None) -> Path:
    """``embedded_projector.safetensors`` + ``embedded_config.json`` in ``out/weights``."""
    folder = config.out / "weights"
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in trainable_state(vlm).items()}
    save_file(tensors, folder / WEIGHTS_FILE, metadata={"format": "pt"})
    description = {
        "grid": config.grid,
        "lora": None
        if not config.lora_rank
        else {"r": config.lora_rank, "alpha": config.lora_alpha, "target_modules": list(config.lora_targets)},
        "command": config.command,
        "align_config": config.model_dump(mode="json"),
        "data": {
            "easy_vqa_train_questions": config.easyvqa_limit or "all",
            "scenes": config.scenes,
            "scene_kinds": list(config.scene_kinds),
            "scene_share": config.scene_share,
            "describe_share": config.describe_share,
        },
        "steps": config.steps,
        "seed": config.seed,
        "quick_eval": accuracy,
    }
    (folder / CONFIG_FILE).write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")
    return folder
