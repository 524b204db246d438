"""Self-distillation: train SDRT adapters so that one direct pass matches K reasoning teachers.

Student: the frozen model + adapter, reading only (image, question) with the direct prompt.
Teachers: the same frozen model without the adapter, reading (image, question, analysis_k).
Both are teacher-forced on the ensemble pseudo-label; the loss compares them on the aligned
span (see ``teacher.py``), weighted over the K teachers by the ensemble weights.

Runs in one process or several (``torchrun``/``accelerate launch``): every rank takes a strided
share of each global batch and gradients are averaged across ranks before the step. The adapter
runs inside the frozen model through hooks, never through its own ``forward``, so DDP's forward
wrapper does not apply; gradients are all-reduced explicitly instead.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sdrt.adapters.config import AdapterConfig
from sdrt.adapters.files import save_adapter
from sdrt.adapters.lora import LoRAAdapter
from sdrt.adapters.model import SDRTAdapter
from sdrt.adapters.weighting import weighted_teacher_loss
from sdrt.distill.config import DistillConfig
from sdrt.distill.curriculum import curriculum_label, kept_share, supporting_analysis
from sdrt.distill.data import (
    DistillExample,
    load_distill_examples,
    with_direct_labels,
    with_reference_labels,
)
from sdrt.distill.losses import answer_cross_entropy, hidden_alignment, teacher_kl
from sdrt.distill.prefix import FrozenPrefixCache
from sdrt.distill.teacher import (
    TeacherCache,
    TeacherTargets,
    aligned_span,
    compute_teacher_targets,
    fill_teacher_cache,
)
from sdrt.models.base import ScoreOutput, VisionLanguageModel, gather_positions
from sdrt.prompts.library import PromptLibrary
from sdrt.reasoning.modes import one_pass_prompt
from sdrt.traces.store import TraceStore
from sdrt.training.core import CHECKPOINTS, load_checkpoint, save_checkpoint, scheduler

log = logging.getLogger(__name__)


class DistillError(RuntimeError):
    """Training cannot go on (NaN loss, a trace folder from another model, ...)."""


@dataclass
class StepLog:
    step: int
    loss: float
    terms: dict[str, float]
    lr: float


@dataclass
class DistillResult:
    adapter_dir: Path
    history: list[StepLog] = field(default_factory=list)
    trainable_parameters: int = 0
    resumed_from: int = 0


# --- distributed helpers -------------------------------------------------------------------------


def world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed() -> None:
    """Join the process group that torchrun/accelerate describe in the environment (gloo on CPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        from accelerate import PartialState

        PartialState()


def average_gradients(parameters: Sequence[torch.nn.Parameter]) -> None:
    rank, size = world()
    if size == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= size
    offset = 0
    for p, g in zip(parameters, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(g).clone()
        offset += n


# --- batches -------------------------------------------------------------------------------------


def global_batch_indices(
    step: int, micro: int, config: DistillConfig, n_examples: int, n_retained: int = 0
) -> list[int]:
    """The examples of micro-batch ``micro`` of ``step``: a fixed function of the seed.

    Epochs are seeded permutations, so a resumed run sees exactly the batches it would have.
    The last ``n_retained`` of the ``n_examples`` are retained ones; with ``retain_share`` set,
    each micro-batch draws that share of its rows from them (their own stream of epochs) and the
    rest from the distilled ones, instead of both in proportion to their numbers.
    """
    size, position = config.batch_size, step * config.grad_accum + micro
    n_distilled = n_examples - n_retained
    if config.retain_share is None or not n_retained or not n_distilled:
        return _stream(config.seed, position * size, size, n_examples)
    from_retained = max(1, min(size - 1, round(config.retain_share * size)))
    from_distilled = size - from_retained
    distilled = _stream(config.seed, position * from_distilled, from_distilled, n_distilled)
    retained = _stream(config.seed + 1, position * from_retained, from_retained, n_retained)
    return distilled + [n_distilled + i for i in retained]


def _stream(seed: int, start: int, count: int, n_examples: int) -> list[int]:
    """Positions ``start`` to ``start + count`` of an endless run of seeded epochs over the examples."""
    out = []
    for position in range(start, start + count):
        epoch, offset = divmod(position, n_examples)
        out.append(_epoch_order(seed, epoch, n_examples)[offset])
    return out


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n_examples: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_examples, generator=generator).tolist()


def pad_stack(tensors: Sequence[torch.Tensor], length: int, dim: int) -> torch.Tensor:
    """Right-pad each tensor with zeros along ``dim`` to ``length`` and stack them."""
    padded = []
    for t in tensors:
        pad = [0, 0] * (t.dim() - dim - 1) + [0, length - t.shape[dim]]
        padded.append(torch.nn.functional.pad(t, pad))
    return torch.stack(padded)


# --- the trainer ---------------------------------------------------------------------------------


class DistillTrainer:
    def __init__(
        self,
        config: DistillConfig,
        model: VisionLanguageModel,
        examples: list[DistillExample],
        library: PromptLibrary | None = None,
        *,
        retained: Sequence[DistillExample] = (),
    ) -> None:
        """``library`` renders the prompts of examples that carry no library of their own;
        ``retained`` are the examples labelled with the model's own answers (``retain_share``)."""
        examples = [*examples, *retained]
        counts = {len(ex.prompt_ids) for ex in examples}
        if len(counts) != 1:
            raise DistillError(f"all traces must have the same number of prompts per example, found {counts}")
        if library is None and any(ex.library is None for ex in examples):
            raise DistillError("examples without a prompt library of their own need the trainer's library")
        if config.adapter.gate.enabled and counts == {1}:
            raise DistillError("the learned gate mixes one head per prompt: it needs traces with K >= 2")
        self.config = config
        self.model = model
        self.examples = examples
        self.n_retained = len(retained)
        self.retained_ids = {ex.record.id for ex in retained}
        self.library = library
        self.library_hash = libraries_hash(examples, library)
        self.adapter_settings = config.adapter.resolved(model.num_layers, counts.pop())
        self.layers = self.adapter_settings.layers
        self.adapter = self._build_adapter()
        self.parameters = [p for p in self.adapter.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = scheduler(self.optimizer, config.warmup_steps, config.steps)
        self.cache = (
            TeacherCache(config.teacher_cache_dir or config.out / "teacher-cache", self._cache_fingerprint())
            if config.cache_teacher
            else None
        )
        self.prefix = self._prefix_cache()
        self.history: list[StepLog] = []
        self.step = 0

    def _build_adapter(self) -> SDRTAdapter | LoRAAdapter:
        """The student's trainable part, by method (see ``DistillConfig.method``)."""
        if self.config.method == "lora-sft":
            return LoRAAdapter(self.config.lora, self.model)
        return SDRTAdapter.for_model(self.adapter_config(), self.model).to(self.model.device)

    def _prefix_cache(self) -> FrozenPrefixCache | None:
        """Per-example states under the lowest layer the adapter edits (SDRT adapters only: LoRA edits all).

        A back-patch or a grid mix below the interventions lowers that layer; a skip whose
        source is then computed anyway reads it there, not from the cache.
        """
        c = self.config
        below = self.adapter_settings.lowest_edited_layer
        if c.method != "sdrt" or not c.cache_prefix or below == 0:
            return None
        skip = self.adapter_settings.skip
        keep = {below - 1} | ({skip.source_layer} if skip.enabled and skip.source_layer < below else set())
        return FrozenPrefixCache(below, sorted(keep), int(c.prefix_cache_gb * 2**30))

    def student_forward(
        self,
        batch: list[DistillExample],
        images,
        prompts,
        labels,
        layers: Sequence[int] = (),
        *,
        cacheable: bool = True,
    ) -> ScoreOutput:
        """The student's scored forward; from an example's second step on, only the upper layers run.

        ``cacheable`` False: the labels are not the examples' own (``internalize``), so the
        states under them are neither read from nor written to the prefix cache.
        """
        ids = [ex.record.id for ex in batch]
        if self.prefix is None or not cacheable:
            return self.model.score(images, prompts, labels, layers=layers)
        if self.prefix.has(ids):
            with self.model.prefix_replaced(self.prefix.below, self.prefix.supply(ids, self.model.device)):
                return self.model.score(images, prompts, labels, layers=layers)
        out = self.model.score(images, prompts, labels, layers=[*layers, *self.prefix.layers])
        self.prefix.put(ids, out.hidden_states, out.layout.attention_mask)
        return out

    def adapter_config(self) -> AdapterConfig:
        """The run's adapter settings, resolved for the model and pinned to it and the prompts."""
        pins = {
            "base_model": self.model.name,
            "base_model_config_hash": self.model.config_hash,
            "prompt_library_hash": self.library_hash,
        }
        return self.adapter_settings.model_copy(update=pins)

    def _cache_fingerprint(self) -> str:
        """What teacher targets depend on: a cache made for anything else is never read."""
        # retained folders' examples are teacher-forced on direct answers, not on pseudo-labels
        manifests = {
            role: [TraceStore(folder).manifest() for folder in folders]
            for role, folders in (("traces", self.config.traces), ("retain", self.config.retain))
        }
        traces = hashlib.sha256(json.dumps(manifests, sort_keys=True).encode()).hexdigest()[:16]
        # the labels setting chooses the pseudo-labels the teachers are teacher-forced on
        parts = (self.model.config_hash, self.layers, self.library_hash, self.config.top_k, traces)
        if self.config.labels != "ensemble":
            parts = (*parts, self.config.labels)
        return ":".join(str(part) for part in parts)

    def fill_teacher_cache(self, on_batch: Callable[[int, int], None] | None = None) -> int:
        """Cache the teacher targets of every example the remaining steps read, before the first.

        Rows of similar length are batched together (``fill_teacher_cache``), which pads far
        less than computing them batch by batch in the first epoch. Each process fills a strided
        share, then every process indexes what all of them wrote. Returns how many this process
        computed.
        """
        if self.cache is None or not self.config.reads_teachers:
            return 0
        rank, size = world()
        rows_per_batch = self.config.batch_size * len(self.examples[0].prompt_ids)
        with self.adapter.detached(self.model):
            computed = fill_teacher_cache(
                self.model,
                self.cache,
                self.examples_ahead()[rank::size],
                self.library,
                self.layers,
                self.config.top_k,
                rows_per_batch,
                on_batch,
            )
        if size > 1:
            torch.distributed.barrier()
            self.cache.refresh()
        return computed

    def examples_ahead(self) -> list[DistillExample]:
        """The examples the steps from ``self.step`` to the last read, in the order first read.

        A short run over a large trace folder reads only some of its examples; only those need
        teacher targets.
        """
        c, n = self.config, len(self.examples)
        ahead: dict[int, None] = {}
        for step in range(self.step, c.steps):
            for micro in range(c.grad_accum):
                ahead.update(dict.fromkeys(global_batch_indices(step, micro, c, n, self.n_retained)))
            if len(ahead) == n:
                break
        return [self.examples[i] for i in ahead]

    # --- one step ------------------------------------------------------------------------------

    def teacher_targets(self, batch: list[DistillExample], images) -> list[TeacherTargets]:
        if self.cache is not None and all(ex.record.id in self.cache for ex in batch):
            return [self.cache.get(ex.record.id) for ex in batch]
        with self.adapter.detached(self.model):
            targets = compute_teacher_targets(
                self.model, batch, images, self.library, self.layers, self.config.top_k
            )
        if self.cache is not None:
            self.cache.put([ex.record.id for ex in batch], targets)
        return targets

    def micro_step_loss(self, batch: list[DistillExample]) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        images = self.model.encode_images([ex.record.load_image() for ex in batch])
        prompts = [one_pass_prompt(self.model, ex.record, self.adapter.layout) for ex in batch]
        labels = [ex.pseudo_label for ex in batch]
        if not self.config.reads_teachers:  # cross-entropy on the pseudo-labels alone
            written = self.written_labels(batch)
            out = self.student_forward(batch, images, prompts, written, cacheable=written == labels)
            ce = answer_cross_entropy(out.answer_logits, out.answer_ids, out.answer_token_mask).mean()
            return c.loss.ce * ce, {"ce": float(ce.detach())}
        targets = self.teacher_targets(batch, images)
        weights = self._teacher_weights(batch)  # (B, K)
        out = self.student_forward(batch, images, prompts, labels, self.layers)
        span = aligned_span(out)
        terms: dict[str, torch.Tensor] = {}
        if c.loss.hidden > 0:
            per_layer = [
                self._hidden_term(out.hidden_states[layer], span, targets, layer) for layer in self.layers
            ]
            terms["hidden"] = weighted_teacher_loss(torch.stack(per_layer).mean(0), weights)
        if c.loss.ce > 0:
            terms["ce"] = answer_cross_entropy(
                out.answer_logits, out.answer_ids, out.answer_token_mask
            ).mean()
        if c.loss.kl > 0:
            length = out.answer_ids.shape[1]
            t_logp = pad_stack([t.topk_logprobs for t in targets], length, dim=1).to(out.answer_logits.device)
            t_ids = pad_stack([t.topk_ids for t in targets], length, dim=1).to(out.answer_logits.device)
            kl = teacher_kl(out.answer_logits, t_logp, t_ids, out.answer_token_mask)
            terms["kl"] = weighted_teacher_loss(kl, weights)
        if c.adapter.gate.enabled and c.loss.gate > 0:
            terms["gate"] = self.adapter.gate_loss(weights)
        total = sum(getattr(c.loss, name) * value for name, value in terms.items())
        return total, {name: float(value.detach()) for name, value in terms.items()}

    def written_labels(self, batch: list[DistillExample]) -> list[str]:
        """What the student learns to write at this step: the label, after what is left of the
        analysis behind it while reasoning is being internalised (``internalize``; retained
        examples keep their bare direct answers)."""
        share = kept_share(self.step, self.config.steps, self.config.internalize)
        return [
            ex.pseudo_label
            if share == 0 or ex.record.id in self.retained_ids
            else curriculum_label(supporting_analysis(ex), ex.pseudo_label, share)
            for ex in batch
        ]

    def _hidden_term(
        self, hidden: torch.Tensor, span: torch.Tensor, targets: list[TeacherTargets], layer: int
    ) -> torch.Tensor:
        student = gather_positions(hidden, span)  # (B, S, d)
        teacher = pad_stack([t.hidden[layer] for t in targets], student.shape[1], dim=1).to(student.device)
        mask = gather_positions(span.unsqueeze(-1), span).squeeze(-1).bool()  # (B, S)
        return hidden_alignment(student, teacher, mask, self.config.loss.hidden_kind)  # (B, K)

    def _teacher_weights(self, batch: list[DistillExample]) -> torch.Tensor:
        k = len(batch[0].prompt_ids)
        if self.config.weighting == "uniform":
            return torch.full((len(batch), k), 1.0 / k, device=self.model.device)
        return torch.tensor([ex.weights for ex in batch], dtype=torch.float32, device=self.model.device)

    def train_step(self) -> StepLog:
        rank, size = world()
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        loss_sum = 0.0
        for micro in range(self.config.grad_accum):
            indices = global_batch_indices(self.step, micro, self.config, len(self.examples), self.n_retained)
            indices = indices[rank::size]
            loss, terms = self.micro_step_loss([self.examples[i] for i in indices])
            (loss / self.config.grad_accum).backward()
            loss_sum += float(loss.detach()) / self.config.grad_accum
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + value / self.config.grad_accum
        if not math.isfinite(loss_sum):
            raise DistillError(
                f"the loss became {loss_sum} at step {self.step + 1} (terms: {totals}); "
                f"lower the learning rate (now {self.config.lr}) or the loss weights"
            )
        average_gradients(self.parameters)
        torch.nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        entry = StepLog(self.step, loss_sum, totals, lr)
        self.history.append(entry)
        return entry

    # --- checkpoints ---------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        history = [entry.__dict__ for entry in self.history]
        return save_checkpoint(
            self.config.out,
            self.step,
            run_fingerprint(self.config),
            self.adapter.state_dict(),
            self.optimizer,
            self.scheduler,
            extra={"history": history},
        )

    def resume(self) -> int:
        """Load the newest checkpoint, if any; returns the step reached.

        A checkpoint written with other settings is refused before anything is loaded.
        """
        saved = load_checkpoint(self.config.out, run_fingerprint(self.config), RESTART_HINT, DistillError)
        if saved is None:
            return 0
        self.adapter.load_state_dict(saved.trainable)
        saved.restore(self.optimizer, self.scheduler)
        self.step = saved.step
        self.history = [StepLog(**entry) for entry in saved.extra["history"]]
        return self.step


RESTART_HINT = "rerun with --restart to discard it and start over, or use another --out"


def run_fingerprint(config: DistillConfig) -> dict:
    """The settings a checkpoint must share with the run that resumes it.

    Left out: where files go, how often to checkpoint, where the model is placed (device,
    device map, attention kernel), and whether teacher targets or the frozen prefix are cached
    (both caches are exact; the teacher cache is fingerprinted itself).
    """
    return config.model_dump(
        mode="json",
        exclude={
            "out",
            "checkpoint_every",
            "snapshot_every",
            "cache_teacher",
            "cache_prefix",
            "prefix_cache_gb",
            "teacher_cache_dir",
            "device",
            "device_map",
            "attn_implementation",
        },
    )


def libraries_hash(examples: Sequence[DistillExample], default: PromptLibrary | None) -> str:
    """The content hash of the one library the examples' prompts come from, or of all of them."""
    hashes = sorted({(ex.library or default).content_hash for ex in examples if ex.library or default})
    if len(hashes) <= 1:
        return hashes[0] if hashes else ""
    return hashlib.sha256("+".join(hashes).encode()).hexdigest()


def check_traces(folder: Path, model: VisionLanguageModel) -> PromptLibrary:
    """The prompt library the traces were made with; refuses traces of another model or library."""
    manifest = TraceStore(folder).manifest()
    library = PromptLibrary.load(manifest.get("prompts_yaml"))
    if library.content_hash != manifest["prompt_library_hash"]:
        raise DistillError(
            f"the prompt library changed since {folder} was generated "
            f"({library.content_hash} != {manifest['prompt_library_hash']}); regenerate the traces"
        )
    if model.config_hash != manifest["model_config_hash"]:
        raise DistillError(
            f"{folder} was generated by another model ({manifest['model']}); "
            "the teacher and the student must be the same model"
        )
    return library


def traced_examples(
    config: DistillConfig, folders: list[Path], model: VisionLanguageModel, min_agreement: float
) -> list[DistillExample]:
    """The examples of ``folders``, each folder's with the library it was traced with."""
    examples: list[DistillExample] = []
    for folder in folders:
        library = check_traces(folder, model)
        examples += load_distill_examples(
            folder,
            min_agreement=min_agreement,
            library=library,
            vote="reliability" if config.labels == "reliability" else "stored",
        )
    return examples


def labelled_examples(
    config: DistillConfig, model: VisionLanguageModel
) -> tuple[list[DistillExample], list[DistillExample]]:
    """The distilled examples with the labels ``config.labels`` names, and the retained ones.

    Retained examples always train on the model's own direct answers (their labels are not
    voted), whatever the distilled ones train on.
    """
    examples = traced_examples(config, config.traces, model, config.min_agreement)
    retained = traced_examples(config, config.retain, model, min_agreement=0.0)
    if config.labels == "direct":  # the self-training control: every example on direct answers
        examples, retained = [], examples + retained
    elif config.labels == "reference":  # the diagnostic: right labels, the same student
        examples = with_reference_labels(examples)
    if retained:
        retained = with_direct_labels(model, retained, config.out / "direct_labels.json")
    return examples, retained


SNAPSHOTS = "snapshots"


def snapshot_folder(out: Path, step: int) -> Path:
    """Where the adapter as it was after ``step`` steps is kept (``snapshot_every``)."""
    return out / SNAPSHOTS / f"step-{step:07d}"


def run_distillation(
    config: DistillConfig,
    model: VisionLanguageModel | None = None,
    on_step: Callable[[StepLog], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_teachers: Callable[[int, int], None] | None = None,
    *,
    restart: bool = False,
) -> DistillResult:
    """Train, checkpoint, and save the adapter folder.

    Resumes from ``out/checkpoints`` when they were written with the same settings (any other
    checkpoint is refused); ``restart`` discards them and trains from step 0. With a teacher
    cache, the targets are all computed before the first step (``on_teachers(rows_done,
    rows_total)`` reports it).
    """
    from sdrt.models import load_model

    torch.manual_seed(config.seed)
    init_distributed()
    rank, size = world()
    model = model or load_model(config.model, config.load_options)
    examples, retained = labelled_examples(config, model)
    trainer = DistillTrainer(config, model, examples, retained=retained)
    if restart and rank == 0:
        shutil.rmtree(config.out / CHECKPOINTS, ignore_errors=True)
    resumed = 0 if restart else trainer.resume()
    if on_start and resumed:
        on_start(resumed)
    if trainer.step < config.steps:
        computed = trainer.fill_teacher_cache(on_teachers)
        if computed:
            log.info("teacher targets of %d examples computed and cached", computed)
    with trainer.adapter.attached(model):
        while trainer.step < config.steps:
            entry = trainer.train_step()
            if on_step:
                on_step(entry)
            if rank == 0 and (trainer.step % config.checkpoint_every == 0 or trainer.step == config.steps):
                trainer.save_checkpoint()
            if rank == 0 and config.snapshot_every and trainer.step % config.snapshot_every == 0:
                save_adapter(trainer.adapter, snapshot_folder(config.out, trainer.step))
    if rank == 0:
        save_adapter(trainer.adapter, config.out)
        (config.out / "train_log.json").write_text(
            json.dumps([e.__dict__ for e in trainer.history], indent=1)
        )
    if size > 1:  # every rank returns with the adapter written, and none leaves a peer mid-exchange
        torch.distributed.barrier()
    n_trainable = sum(p.numel() for p in trainer.parameters)
    return DistillResult(config.out, trainer.history, n_trainable, resumed)
