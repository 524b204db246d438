"""The embedded testbed on held-out scenes: perception, step-1 analyses, and the reasoning gap.

    python scripts/testbed_eval.py --split test --n 500 [--weights DIR] [--dtype bfloat16] [--out FILE.json]

Perception: easy-vqa (direct), single-hop scene questions (direct) and scene descriptions
(object accuracy). Analyses: for every scene prompt the weights were aligned on, its step-1
text on multi-hop questions against the scene graph's (exact rate, object accuracy, length).
Reasoning: multi-hop questions answered directly, by each dual-query prompt and by their
ensemble, with bootstrap intervals and paired differences against direct. Every mode answers
the same seeded records; ``--split validation`` is for choosing, ``--split test`` for reporting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from statistics import mean

import torch

from sdrt.data import load_records
from sdrt.data.scene_analyses import analysis
from sdrt.data.scenes import DESCRIBE_QUESTION, description_objects, scene_by_id
from sdrt.evaluation.metrics import object_accuracy, score
from sdrt.evaluation.stats import bootstrap_ci, paired_difference
from sdrt.models.embedded import WEIGHTS_DIR, EmbeddedVLM, read_weights
from sdrt.prompts.library import PromptLibrary
from sdrt.reasoning.ensemble import Candidate, get_strategy
from sdrt.reasoning.modes import GenerationBudget, answer_direct, answer_dual_query


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    parser.add_argument("--n", type=int, default=500, help="records per benchmark")
    parser.add_argument("--seed", type=int, default=0, help="scene and sample seed")
    parser.add_argument("--weights", type=Path, default=None, help="weights folder (default: shipped)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--analysis-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="the language model's precision"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the full results here (JSON)")
    parser.add_argument(
        "--records-out",
        type=Path,
        default=None,
        help="every multi-hop record's answers (JSONL: direct, each prompt's analysis and answer)",
    )
    parser.add_argument("--skip-perception", action="store_true")
    parser.add_argument("--skip-reasoning", action="store_true", help="perception only (a quick look)")
    return parser.parse_args(argv)


def interval(scores: list[float]) -> dict[str, float]:
    value, low, high = bootstrap_ci(scores)
    return {"n": len(scores), "score": round(value, 4), "ci": [round(low, 4), round(high, 4)]}


def paired(a: list[float], b: list[float]) -> dict[str, float]:
    value, low, high = paired_difference(a, b)
    return {"n": len(a), "difference": round(value, 4), "ci": [round(low, 4), round(high, 4)]}


def batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def direct_scores(vlm: EmbeddedVLM, records: list, metric: str, batch_size: int) -> list[float]:
    scores = []
    for chunk in batches(records, batch_size):
        images = vlm.encode_images([r.load_image() for r in chunk])
        for record, answer in zip(chunk, answer_direct(vlm, chunk, images), strict=True):
            scores.append(score(metric, answer.answer, record))
    return scores


def describe_scores(vlm: EmbeddedVLM, records: list, batch_size: int) -> list[float]:
    scores = []
    for chunk in batches(records, batch_size):
        images = vlm.encode_images([r.load_image() for r in chunk])
        outputs = vlm.generate(images, [[("user", DESCRIBE_QUESTION)]] * len(chunk), max_new_tokens=72)
        scores += [object_accuracy(o.text, r.answers) for o, r in zip(outputs, chunk, strict=True)]
    return scores


def perception(vlm: EmbeddedVLM, args: argparse.Namespace) -> dict[str, dict]:
    easy = load_records("easy-vqa", split="test", limit=args.n, seed=args.seed)
    single = load_records("scenes:single-hop", split=args.split, limit=args.n, seed=args.seed)
    describe = load_records("scenes:describe", split=args.split, limit=args.n, seed=args.seed)
    return {
        "easy-vqa (test)": interval(direct_scores(vlm, easy, "exact_match", args.batch_size)),
        "scenes-single-hop": interval(direct_scores(vlm, single, "exact_match", args.batch_size)),
        "scenes-describe (object accuracy)": interval(describe_scores(vlm, describe, args.batch_size)),
    }


def reasoning(vlm: EmbeddedVLM, skills: dict[str, str], args: argparse.Namespace) -> dict:
    library = PromptLibrary.builtin()
    prompts = [library.get(prompt_id) for prompt_id in skills]
    records = load_records("scenes:multi-hop", split=args.split, limit=args.n, seed=args.seed)
    budget = GenerationBudget(analysis_tokens=args.analysis_tokens, answer_tokens=8)
    direct, by_prompt, traces_of, direct_answers = [], defaultdict(list), [], []
    for chunk in batches(records, max(1, args.batch_size // len(prompts)) or 1):
        images = vlm.encode_images([r.load_image() for r in chunk])
        chunk_direct = answer_direct(vlm, chunk, images)
        direct_answers += [a.answer for a in chunk_direct]
        direct += [score("exact_match", a.answer, r) for a, r in zip(chunk_direct, chunk, strict=True)]
        for record, answer in zip(chunk, answer_dual_query(vlm, chunk, images, prompts, budget), strict=True):
            traces_of.append((record, answer.traces))
            for trace in answer.traces:
                by_prompt[trace.prompt_id].append(score("exact_match", trace.answer, record))
    if args.records_out:
        write_records(args.records_out, traces_of, direct_answers)
    vote = get_strategy("majority")

    def ensemble_scores(ids: list[str]) -> list[float]:
        out = []
        for record, traces in traces_of:
            chosen = [t for t in traces if t.prompt_id in ids]
            result = vote(
                [Candidate(t.prompt_id, t.answer, t.answer_logprob, t.answer_mean_logprob) for t in chosen]
            )
            out.append(score("exact_match", result.answer, record))
        return out

    all_ids = [p.id for p in prompts]
    default_k = [p.id for p in library.select(task_type="scene", k=3)]
    ensembles = {f"ensemble (K={len(all_ids)}, all scene prompts)": ensemble_scores(all_ids)}
    if set(default_k) <= set(all_ids):
        ensembles[f"ensemble (K=3 default: {', '.join(default_k)})"] = ensemble_scores(default_k)
    best = max(by_prompt, key=lambda pid: mean(by_prompt[pid]))
    modes = {"direct": direct, **{f"dual:{pid}": by_prompt[pid] for pid in all_ids}, **ensembles}
    summary = {mode: interval(scores) for mode, scores in modes.items()}
    versus_direct = {mode: paired(scores, direct) for mode, scores in modes.items() if mode != "direct"}
    versus_best = {mode: paired(scores, by_prompt[best]) for mode, scores in ensembles.items()}
    per_type = defaultdict(lambda: defaultdict(list))
    full = ensembles[next(iter(ensembles))]
    for (record, _), d, e in zip(traces_of, direct, full, strict=True):
        per_type[record.metadata["question_type"]]["direct"].append(d)
        per_type[record.metadata["question_type"]]["ensemble"].append(e)
    return {
        "records": len(records),
        "modes": summary,
        "versus_direct": versus_direct,
        "best_single_prompt": best,
        "ensemble_versus_best_prompt": versus_best,
        "per_question_type": {
            t: {m: round(mean(v), 3) for m, v in modes_.items()} | {"n": len(modes_["direct"])}
            for t, modes_ in sorted(per_type.items())
        },
        "analyses": analysis_quality(traces_of, skills),
    }


def write_records(path: Path, traces_of: list, direct_answers: list[str]) -> None:
    """One JSON line per record, so that ensembles and filters can be studied without rerunning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for (record, traces), direct in zip(traces_of, direct_answers, strict=True):
            row = {
                "id": record.id,
                "question": record.question,
                "question_type": record.metadata["question_type"],
                "answers": list(record.answers),
                "direct": direct,
                "prompts": [
                    {
                        "prompt_id": t.prompt_id,
                        "analysis": t.analysis,
                        "answer": t.answer,
                        "logprob": t.answer_logprob,
                        "mean_logprob": t.answer_mean_logprob,
                    }
                    for t in traces
                ],
            }
            out.write(json.dumps(row) + "\n")


def analysis_quality(traces_of: list, skills: dict[str, str]) -> dict[str, dict]:
    """Each prompt's step-1 text against the exact text the scene graph gives for its skill."""
    rows = defaultdict(lambda: {"exact": [], "objects": [], "tokens": []})
    for record, traces in traces_of:
        scene = scene_by_id(record.metadata["scene_id"])
        for trace in traces:
            target = analysis(skills[trace.prompt_id], scene, record.question)
            row = rows[trace.prompt_id]
            row["exact"].append(float(trace.analysis.strip() == target))
            row["tokens"].append(trace.analysis_tokens)
            if description_objects(target):
                row["objects"].append(object_accuracy(trace.analysis, [target]))
    return {
        pid: {
            "skill": skills[pid],
            "exact": round(mean(r["exact"]), 3),
            "object_accuracy": round(mean(r["objects"]), 3) if r["objects"] else None,
            "mean_tokens": round(mean(r["tokens"]), 1),
        }
        for pid, r in rows.items()
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = args.weights or WEIGHTS_DIR
    config, _ = read_weights(folder)
    skills = dict((config.get("align_config") or {}).get("analysis_prompts") or {})
    if not skills:
        print(f"error: {folder} was not aligned on analysis prompts; nothing to reason with", file=sys.stderr)
        return 2
    vlm = EmbeddedVLM.load(weights_dir=folder, dtype=getattr(torch, args.dtype))
    began = time.perf_counter()
    result = {
        "command": "python scripts/testbed_eval.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "split": args.split,
        "seed": args.seed,
        "weights": vlm.weights_info,
        "dtype": args.dtype,
    }
    if not args.skip_perception:
        result["perception"] = perception(vlm, args)
    if not args.skip_reasoning:
        result["reasoning"] = reasoning(vlm, skills, args)
    result["seconds"] = round(time.perf_counter() - began, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
