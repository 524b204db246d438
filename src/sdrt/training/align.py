"""Alignment of the embedded VLM: train the projector (and LoRA on SmolLM2) on image QA.

What a real VLM brings from pretraining, the embedded one learns here, from batches drawn
from five pools (``AlignConfig.mix`` weighs them):

* ``easy-vqa``: the training questions of easy-vqa (one shape per image);
* ``describe``: descriptions of generated scenes (perception: every object, left to right);
* ``single-hop``: single-hop scene questions, answered directly;
* ``analysis``: step 1 of the scene-suited library prompts, with targets written from the
  scene graph (``sdrt.data.scene_analyses``): object lists, relations, counts, size order,
  plans. The request may carry a multi-hop question; the target never states its answer;
* ``reasoning``: step 2 of those prompts, the answer given an analysis; a share of analyses
  describe an *altered* scene, and then the answer follows the altered text, not the image.

Never: an image and a multi-hop question answered in one step. That composition is what SDRT
must create from the model's own traces, so the aligned model has a known reasoning gap; the
direct pools refuse multi-hop questions.

Only answer tokens carry loss and only their logits are computed (``score`` does that), image
features are cached, and the batch for step ``s`` depends only on ``(seed, s)``, so a killed
run resumes from its last checkpoint and sees exactly the batches it would have seen.
"""

from __future__ import annotations

import json
import logging
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

from sdrt.data.records import DataError
from sdrt.models.base import Conversation, EncodedImage
from sdrt.models.embedded import (
    CONFIG_FILE,
    LORA_PREFIX,
    PROJECTOR_PREFIX,
    WEIGHTS_FILE,
    EmbeddedVLM,
    VisionSpec,
)
from sdrt.models.precision import fast_dtype
from sdrt.training.core import check_settings, load_checkpoint, save_checkpoint, scheduler

log = logging.getLogger(__name__)

Pool = Literal["easy-vqa", "describe", "single-hop", "analysis", "reasoning"]
AnalysisSkill = Literal["description", "objects", "relations", "counts", "sizes", "plan", "facts"]
SCENE_POOLS: tuple[str, ...] = ("describe", "single-hop", "analysis", "reasoning")
LEGACY_CHECKPOINT = "checkpoint.pt"  # one file, written before alignment shared training.core's folder
LOG_FILE = "train_log.txt"
DESCRIBE_QUESTION = "Describe the image."

# Paraphrased step-1 requests, so that a skill is tied to what is asked, not to one wording;
# the library's own step-1 text is used for the rest (``AlignConfig.paraphrase_share``).
SKILL_REQUESTS: dict[str, tuple[str, ...]] = {
    "description": ("Describe the image.", "What does the image show? Describe it.", "Describe the scene."),
    "objects": (
        "List the objects in the image with their positions. Question: {question}",
        "Which objects are in the image, and where? {question}",
    ),
    "relations": (
        "Say which object is next to which. Question: {question}",
        "Describe how the objects are placed relative to each other: {question}",
    ),
    "counts": (
        "List the objects one per line and count them by shape, color and size: {question}",
        "Count the objects in the image. Question: {question}",
    ),
    "sizes": (
        "Which objects are large and which are small? Question: {question}",
        "Order the objects by size. Question: {question}",
    ),
    "plan": (
        "Write the facts this question needs as triplets; leave the answer as ?. Question: {question}",
        "Plan the steps to answer as (subject, relation, object) triplets. Question: {question}",
    ),
    "facts": (
        "What does the image show, and what do you know about it? Question: {question}",
        "Name the things in the image and what you know about them: {question}",
    ),
}


class AlignConfig(BaseModel):
    """Hyperparameters of one alignment run; saved beside the weights it produces."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    out: Path = Path("runs/align")
    steps: int = Field(default=600, gt=0)
    batch_size: int = Field(default=16, gt=0)
    seed: int = 0
    grid: int = Field(default=4, ge=1, le=7)
    mid_block: int | None = Field(default=None, ge=0, le=15)  # intermediate trunk block added per cell
    positions: bool = False  # learned 2-D grid positions in the projector
    lr_projector: float = Field(default=1e-3, gt=0)
    lr_lora: float = Field(default=3e-4, gt=0)
    warmup_steps: int = Field(default=20, ge=0)
    lora_rank: int = Field(default=8, ge=0)  # 0 trains the projector alone
    lora_alpha: int = Field(default=16, gt=0)
    lora_targets: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    easyvqa_limit: int | None = Field(default=None, gt=0)  # training questions; None = all
    scenes: int = Field(default=0, ge=0)  # generated training scenes; 0 = easy-vqa only
    mix: dict[Pool, float] = {"easy-vqa": 1.0}  # relative share of batches drawn from each pool
    analysis_prompts: dict[str, AnalysisSkill] = {}  # library prompt id -> its step-1 skill
    paraphrase_share: float = Field(default=0.3, ge=0, le=1)  # step-1 requests paraphrased
    altered_share: float = Field(default=0.3, ge=0, le=1)  # step-2 analyses of an altered scene
    reasoning_multi_hop_share: float = Field(default=0.7, ge=0, le=1)  # of step-2 questions
    # Step-2 multi-hop questions asked of an altered scene: at 1.0 the image never agrees with a
    # faithful analysis of a multi-hop question, so the answer can only be read from the text.
    # None: altered_share, in the draw order of the runs recorded before this field existed.
    multi_hop_altered_share: float | None = Field(default=None, ge=0, le=1)
    # Step-2 multi-hop question types drawn against how often scenes offer them, so that rare
    # types (same colour, counts by size or colour: a few percent of scenes' questions) are read
    # about as often as common ones. False: the scene's own draw, as the recorded runs had it.
    balance_multi_hop_types: bool = False
    # Share of step-2 multi-hop questions drawn from the harder three-hop kind (two relations
    # chained, or a relation and a comparison), read from an analysis under the same rules;
    # like every multi-hop kind, alignment never answers them in one step. 0: as recorded runs.
    reasoning_three_hop_share: float = Field(default=0.0, ge=0, le=1)
    bf16: bool = True  # bfloat16 autocast: about half the step time on CPUs with AVX512-BF16
    instruction_share: float = Field(default=0.7, ge=0, le=1)  # questions with the answer instruction
    checkpoint_every: int = Field(default=25, gt=0)
    log_every: int = Field(default=10, gt=0)
    eval_questions: int = Field(default=200, ge=0)  # seeded easy-vqa test sample scored at the end
    threads: int = Field(default=2, gt=0)
    command: str | None = None  # the command line that ran this, recorded in the weights' config
    # Start from these weights (an exported folder) instead of a random projector and zero LoRA:
    # a second stage that continues a finished run under another mix or more steps.
    init_from: Path | None = None

    @field_validator("mix", mode="before")
    @classmethod
    def _no_multi_hop(cls, mix: Any) -> Any:
        if isinstance(mix, dict) and any("multi" in str(key) for key in mix):
            raise ValueError(
                "multi-hop scene questions are never answered in one step in alignment (SDRT needs "
                "that composition unseen); they appear only inside the analysis and reasoning pools"
            )
        if isinstance(mix, dict) and (not mix or any(float(v) < 0 for v in mix.values())):
            raise ValueError("mix needs at least one pool, with shares >= 0")
        return mix

    @property
    def vision(self) -> VisionSpec:
        return VisionSpec(self.grid, self.mid_block, self.positions)

    def pools(self) -> dict[str, float]:
        """The pools with a positive share; scene pools only when there are scenes."""
        return {
            pool: share
            for pool, share in self.mix.items()
            if share > 0 and (pool not in SCENE_POOLS or self.scenes)
        }


@dataclass(frozen=True)
class Example:
    """An easy-vqa training question; ``image`` indexes the run's feature table."""

    image: int
    question: str
    answer: str


@dataclass(frozen=True)
class TrainItem:
    """One row of a batch: the image row, the prompt as the model sees it, the target text."""

    image: int
    prompt: Conversation
    answer: str
    pool: str


@dataclass
class AlignData:
    features: torch.Tensor  # (N_images, T, C) float16, one row per distinct image
    easyvqa: list[Example]
    scenes: list[Any]  # sdrt.data.scenes.Scene; scene i's image is feature row scene_offset + i
    scene_offset: int = 0


def align(config: AlignConfig, on_step: Callable[[int, float], None] | None = None) -> Path:
    """Train, checkpointing as it goes; returns the folder holding the exported weights.

    ``on_step(step, loss)`` is called after every step (the CLI drives a progress bar with it).
    """
    torch.set_num_threads(config.threads)
    config.out.mkdir(parents=True, exist_ok=True)
    check_prompts(config)
    vlm = EmbeddedVLM.load(untrained=True, vision=config.vision, seed=config.seed)
    data = build_data(vlm, config)
    # Seed right before LoRA's random init: building the data may or may not construct the
    # vision trunk (it does only on feature-cache misses), which would shift the global RNG.
    torch.manual_seed(config.seed)
    add_lora(vlm, config)
    if config.init_from is not None:
        load_initial_weights(vlm, config)
    optimizer = make_optimizer(vlm, config)
    schedule = scheduler(optimizer, config.warmup_steps, config.steps)
    start = resume(vlm, optimizer, schedule, config)
    slow = emulated_bfloat16_warning(config.bf16, vlm.device.type)
    if slow:
        note(config, slow, logging.WARNING)
    note(
        config,
        f"aligning: {len(data.easyvqa)} easy-vqa questions + {len(data.scenes)} scenes, "
        f"pools {config.pools()}, steps {start}..{config.steps}",
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
            checkpoint(vlm, optimizer, schedule, config, step + 1)
    accuracy = quick_eval(vlm, config) if config.eval_questions else None
    return export_weights(vlm, config, accuracy)


def emulated_bfloat16_warning(
    bf16: bool, device_type: str, flags: frozenset[str] | None = None
) -> str | None:
    """What to tell a user whose bfloat16 autocast runs on a CPU that only emulates it.

    ``bf16`` stays on by default, since the recorded alignment commands ran with it; on such a
    CPU (``flags``: its feature flags, default read from ``/proc/cpuinfo``) it is about nine
    times slower than float32 (docs/performance.md, Precision).
    """
    if not bf16 or device_type != "cpu" or fast_dtype(flags) == "bfloat16":
        return None
    return (
        "bf16 autocast on a CPU without bfloat16 units (no AVX-512 BF16, no AMX): emulated, about "
        "9x slower than float32; set bf16: false to align in float32 (other rounding, other weights)"
    )


def note(config: AlignConfig, message: str, level: int = logging.INFO) -> None:
    """Progress goes to the log (at ``level``) and to ``out/train_log.txt``, which outlives the terminal."""
    log.log(level, message)
    with open(config.out / LOG_FILE, "a") as handle:
        handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


def check_prompts(config: AlignConfig) -> None:
    """Every prompt named for the analysis and reasoning pools exists and can take a question."""
    from sdrt.prompts.library import PromptLibrary

    library = PromptLibrary.builtin()
    uses_prompts = {"analysis", "reasoning"} & set(config.pools())
    if uses_prompts and not config.analysis_prompts:
        raise DataError(f"the {sorted(uses_prompts)} pool(s) need analysis_prompts (prompt id -> skill)")
    for prompt_id in config.analysis_prompts:
        try:
            prompt = library.get(prompt_id)
        except KeyError as exc:
            raise DataError(str(exc.args[0])) from None
        if prompt.needs_choices:
            raise DataError(f"prompt {prompt_id!r} is for multiple-choice questions; scenes have none")


# --- data ------------------------------------------------------------------------------------


def build_data(vlm: EmbeddedVLM, config: AlignConfig) -> AlignData:
    """Examples with their images encoded once (the feature cache makes reruns cheap)."""
    from sdrt.data.easyvqa import read_easy_vqa
    from sdrt.data.scenes import make_scenes

    easy = read_easy_vqa("train", limit=config.easyvqa_limit, seed=config.seed)
    table: dict[str, int] = {}
    images: list[Any] = []
    examples = []
    for record in easy:
        key = record.image_path or f"in-memory@{id(record.image)}"
        if key not in table:
            table[key] = len(images)
            images.append(record.load_image())
        if not record.answers:
            raise DataError(f"record {record.id!r}: alignment needs an answer")
        examples.append(Example(table[key], record.question, record.answers[0].strip()))
    scenes = make_scenes(config.scenes, seed=config.seed) if set(SCENE_POOLS) & set(config.pools()) else []
    offset = len(images)
    images.extend(scene.image() for scene in scenes)
    features = torch.cat([encode_chunk(vlm, images[i : i + 256]) for i in range(0, len(images), 256)])
    return AlignData(features, examples, scenes, offset)


def encode_chunk(vlm: EmbeddedVLM, images: Sequence[Any]) -> torch.Tensor:
    return torch.stack([e.features for e in vlm.encode_images(images)]).to(torch.float16)


def sample_batch(data: AlignData, config: AlignConfig, step: int) -> list[TrainItem]:
    """The batch of ``step``: a pure function of (seed, step), so resuming replays exactly.

    A batch comes from one pool: left padding costs the batch's longest row, and one long
    analysis would lengthen every short question beside it.
    """
    rng = random.Random(config.seed * 1_000_003 + step)
    pools = config.pools()
    if not data.scenes:
        pools = {p: s for p, s in pools.items() if p not in SCENE_POOLS}
    if not pools:
        raise DataError("alignment has no pool to draw from (no easy-vqa questions and no scenes)")
    names = sorted(pools)
    pool = rng.choices(names, weights=[pools[n] for n in names])[0]
    make = _ITEM_MAKERS[pool]
    return [make(data, config, rng) for _ in range(config.batch_size)]


def _easyvqa_item(data: AlignData, config: AlignConfig, rng: random.Random) -> TrainItem:
    example = data.easyvqa[rng.randrange(len(data.easyvqa))]
    return TrainItem(example.image, _direct(example.question, rng, config), example.answer, "easy-vqa")


def _scene(data: AlignData, rng: random.Random) -> tuple[int, Any]:
    index = rng.randrange(len(data.scenes))
    return data.scene_offset + index, data.scenes[index]


def _describe_item(data: AlignData, config: AlignConfig, rng: random.Random) -> TrainItem:
    row, scene = _scene(data, rng)
    request = DESCRIBE_QUESTION
    if rng.random() < config.paraphrase_share:
        request = rng.choice(SKILL_REQUESTS["description"])
    return TrainItem(row, [("user", request)], scene.description, "describe")


def _single_hop_item(data: AlignData, config: AlignConfig, rng: random.Random) -> TrainItem:
    from sdrt.data.scenes import scene_questions

    row, scene = _scene(data, rng)
    question = rng.choice(scene_questions(scene, "single-hop", 3))
    if question.hops > 1:  # the direct pools never answer a multi-hop question in one step
        raise DataError(f"refusing a one-step multi-hop example: {question.question!r}")
    return TrainItem(row, _direct(question.question, rng, config), question.answer, "single-hop")


def _question_kind(rng: random.Random, multi_hop_share: float) -> str:
    return "multi-hop" if rng.random() < multi_hop_share else "single-hop"


def _any_question(scene: Any, rng: random.Random, multi_hop_share: float) -> Any:
    return _question_of_kind(scene, rng, _question_kind(rng, multi_hop_share))


def _question_of_kind(scene: Any, rng: random.Random, kind: str) -> Any:
    from sdrt.data.scenes import scene_questions

    questions = scene_questions(scene, kind, 3) or scene_questions(scene, "single-hop", 3)
    return rng.choice(questions)


def _type_balanced_question(scene: Any, rng: random.Random, kind: str) -> Any:
    """A question of ``kind`` of a type weighted by 1 / (share of scenes offering it)."""
    from sdrt.data.scenes import question_type_shares, scene_questions

    questions = scene_questions(scene, kind, None)
    if not questions:  # a scene of one object: as the scene's own draw does
        return _question_of_kind(scene, rng, kind)
    shares = question_type_shares(kind)
    return rng.choices(questions, weights=[1 / shares[q.question_type] for q in questions])[0]


def _reasoning_question(scene: Any, config: AlignConfig, rng: random.Random) -> tuple[Any, Any]:
    """The scene the step-2 analysis describes (the image's, or one fact changed) and its question."""
    from sdrt.data.scene_analyses import alter_scene

    def told(share: float) -> Any:
        return alter_scene(scene, rng) if rng.random() < share else scene

    multi_hop_share = config.multi_hop_altered_share
    three_hop_share = config.reasoning_three_hop_share
    if multi_hop_share is None and not config.balance_multi_hop_types and not three_hop_share:
        shown = told(config.altered_share)  # the recorded order
        return shown, _any_question(shown, rng, config.reasoning_multi_hop_share)
    kind = _question_kind(rng, config.reasoning_multi_hop_share)
    if kind == "multi-hop" and three_hop_share and rng.random() < three_hop_share:
        kind = "three-hop"
    chained = kind != "single-hop"
    shown = told(multi_hop_share if chained and multi_hop_share is not None else config.altered_share)
    if chained and config.balance_multi_hop_types:
        return shown, _type_balanced_question(shown, rng, kind)
    return shown, _question_of_kind(shown, rng, kind)


def _analysis_item(data: AlignData, config: AlignConfig, rng: random.Random) -> TrainItem:
    from sdrt.data.scene_analyses import analysis
    from sdrt.prompts.library import PromptLibrary

    row, scene = _scene(data, rng)
    prompt_id = rng.choice(sorted(config.analysis_prompts))
    skill = config.analysis_prompts[prompt_id]
    question = _any_question(scene, rng, 0.5).question
    if rng.random() < config.paraphrase_share:
        request: Conversation = [("user", rng.choice(SKILL_REQUESTS[skill]).format(question=question))]
    else:
        request = PromptLibrary.builtin().get(prompt_id).step1(question)
    return TrainItem(row, request, analysis(skill, scene, question), "analysis")


def _reasoning_item(data: AlignData, config: AlignConfig, rng: random.Random) -> TrainItem:
    from sdrt.data.scene_analyses import analysis
    from sdrt.prompts.library import PromptLibrary

    row, scene = _scene(data, rng)
    prompt_id = rng.choice(sorted(config.analysis_prompts))
    skill = config.analysis_prompts[prompt_id]
    told, question = _reasoning_question(scene, config, rng)
    text = analysis(skill, told, question.question)
    prompt = PromptLibrary.builtin().get(prompt_id).step2(question.question, text)
    return TrainItem(row, prompt, question.answer, "reasoning")


def _direct(question: str, rng: random.Random, config: AlignConfig) -> Conversation:
    """Direct-mode prompts as the evaluation sends them, sometimes without the instruction."""
    from sdrt.prompts.library import direct_prompt

    if rng.random() < config.instruction_share:
        return direct_prompt(question)
    return [("user", question)]


_ITEM_MAKERS: dict[str, Callable[[AlignData, AlignConfig, random.Random], TrainItem]] = {
    "easy-vqa": _easyvqa_item,
    "describe": _describe_item,
    "single-hop": _single_hop_item,
    "analysis": _analysis_item,
    "reasoning": _reasoning_item,
}


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


def train_step(
    vlm: EmbeddedVLM,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    batch: list[TrainItem],
    features: torch.Tensor,
    bf16: bool,
) -> float:
    """One optimiser step of answer-token cross-entropy."""
    images = [EncodedImage("embedded", features[item.image].float()) for item in batch]
    prompts = [item.prompt for item in batch]
    answers = [item.answer for item in batch]
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


def load_initial_weights(vlm: EmbeddedVLM, config: AlignConfig) -> None:
    """The trainable state of ``config.init_from``, after checking it reads images the same way."""
    from sdrt.models.embedded import read_weights

    assert config.init_from is not None
    described, tensors = read_weights(config.init_from)
    theirs = VisionSpec.from_config(described)
    if theirs != config.vision:
        raise DataError(f"{config.init_from} reads images as {theirs}, this run as {config.vision}")
    lora = described.get("lora") or {}
    if lora and (lora.get("r"), lora.get("alpha")) != (config.lora_rank, config.lora_alpha):
        raise DataError(f"{config.init_from} has LoRA {lora}; this run has r={config.lora_rank}")
    load_trainable_state(vlm, tensors)
    note(config, f"initialised from {config.init_from}")


# Options added after runs were recorded, with the default that leaves those runs as they were.
LATER_OPTIONS: dict[str, Any] = {
    "init_from": None,
    "multi_hop_altered_share": None,
    "balance_multi_hop_types": False,
    "reasoning_three_hop_share": 0.0,
}


def run_fingerprint(config: AlignConfig) -> dict[str, Any]:
    """The settings a checkpoint must share with the run that resumes it.

    Options added later (LATER_OPTIONS) count only when set, so a run that leaves them at their
    default has the fingerprint it had before they existed (and its checkpoints stay resumable).
    """
    excluded = {"out", "checkpoint_every", "log_every", "eval_questions", "threads", "command"}
    excluded |= {name for name, default in LATER_OPTIONS.items() if getattr(config, name) == default}
    return config.model_dump(mode="json", exclude=excluded)


RESTART_HINT = "use another --out or delete it to start over"


def checkpoint(
    vlm: EmbeddedVLM, optimizer: torch.optim.Optimizer, schedule: Any, config: AlignConfig, step: int
) -> None:
    save_checkpoint(config.out, step, run_fingerprint(config), trainable_state(vlm), optimizer, schedule)


def resume(vlm: EmbeddedVLM, optimizer: torch.optim.Optimizer, schedule: Any, config: AlignConfig) -> int:
    """The step to start from: 0, or the last checkpoint's step when the settings match."""
    saved = load_checkpoint(config.out, run_fingerprint(config), RESTART_HINT, DataError)
    if saved is None:
        return _resume_legacy(vlm, optimizer, schedule, config)
    load_trainable_state(vlm, saved.trainable)
    saved.restore(optimizer, schedule)
    note(config, f"resumed from {config.out} at step {saved.step}")
    return saved.step


def _resume_legacy(
    vlm: EmbeddedVLM, optimizer: torch.optim.Optimizer, schedule: Any, config: AlignConfig
) -> int:
    """A run checkpointed in the one-file format resumes too (same settings rule); else 0."""
    path = config.out / LEGACY_CHECKPOINT
    if not path.is_file():
        return 0
    saved = torch.load(path, map_location="cpu", weights_only=False)
    check_settings(path, saved.get("fingerprint"), run_fingerprint(config), RESTART_HINT, DataError)
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


def export_weights(
    vlm: EmbeddedVLM, config: AlignConfig, accuracy: dict[str, Any] | None, folder: Path | None = None
) -> Path:
    """``embedded_projector.safetensors`` + ``embedded_config.json`` in ``folder`` (``out/weights``)."""
    folder = folder or config.out / "weights"
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in trainable_state(vlm).items()}
    save_file(tensors, folder / WEIGHTS_FILE, metadata={"format": "pt"})
    description = {
        **config.vision.as_dict(),
        "lora": None
        if not config.lora_rank
        else {"r": config.lora_rank, "alpha": config.lora_alpha, "target_modules": list(config.lora_targets)},
        "command": config.command,
        "align_config": config.model_dump(mode="json"),
        "data": {
            "easy_vqa_train_questions": config.easyvqa_limit or "all",
            "scenes": config.scenes,
            "scene_seed": config.seed,
            "pools": config.pools(),
            "analysis_prompts": dict(config.analysis_prompts),
            "never": "image + multi-hop question -> answer in one step",
        },
        "steps": config.steps,
        "seed": config.seed,
        "quick_eval": accuracy,
    }
    (folder / CONFIG_FILE).write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")
    return folder
