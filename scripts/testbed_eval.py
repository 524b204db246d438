"""The embedded testbed on held-out scenes: perception, step-1 analyses, and the reasoning gap.

    python scripts/testbed_eval.py --split test --n 500 [--weights DIR] [--dtype bfloat16] [--out FILE.json]

Perception: easy-vqa (direct), single-hop scene questions (direct) and scene descriptions
(object accuracy). Analyses: for every scene prompt the weights were aligned on, its step-1
text on multi-hop questions against the scene graph's (exact rate, object accuracy, length),
and step 2's accuracy after an exactly right analysis apart from after any other (reading
errors apart from seeing errors).
Reasoning: multi-hop questions (``--kind three-hop``: the harder kind) answered directly, by
each dual-query prompt and by their ensembles (majority, and weighted by each prompt's
reliability as estimated from the answers alone), with bootstrap intervals and paired
differences against direct, and the prompt subsets whose ensembles score best on these records
(a choice for another split). Every mode answers the same seeded records; ``--split
validation`` is for choosing, ``--split test`` for reporting.
``--records-out`` keeps every record's answers; ``--from-records`` summarises them again
without the model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
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
from sdrt.reasoning.extract import normalize_answer
from sdrt.reasoning.modes import GenerationBudget, answer_direct, answer_dual_query
from sdrt.reasoning.reliability import PromptReliability, estimate_reliability


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    parser.add_argument("--n", type=int, default=500, help="records per benchmark")
    parser.add_argument("--seed", type=int, default=0, help="scene and sample seed")
    parser.add_argument(
        "--kind",
        choices=("multi-hop", "three-hop"),
        default="multi-hop",
        help="the scene questions reasoned on: multi-hop, or the harder three-hop kind",
    )
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
        help="every reasoning record's answers (JSONL: direct, each prompt's analysis and answer)",
    )
    parser.add_argument(
        "--from-records",
        type=Path,
        default=None,
        help="summarise the reasoning answers a --records-out run kept, without the model",
    )
    parser.add_argument(
        "--baseline-records",
        type=Path,
        default=None,
        help="with --from-records: the same records answered by other weights, compared pairwise",
    )
    parser.add_argument(
        "--baseline-eval",
        type=Path,
        default=None,
        help="with --from-records: an `sdrt eval` results JSON of other weights (direct and ensemble "
        "on the same multi-hop records), compared pairwise on direct, its prompts and its ensemble",
    )
    parser.add_argument("--skip-perception", action="store_true")
    parser.add_argument("--skip-reasoning", action="store_true", help="perception only (a quick look)")
    args = parser.parse_args(argv)
    if (args.baseline_records or args.baseline_eval) and not args.from_records:
        parser.error("--baseline-records/--baseline-eval compare stored answers: give --from-records too")
    return args


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
    records = reasoning_records(args)
    budget = GenerationBudget(analysis_tokens=args.analysis_tokens, answer_tokens=8)
    rows = []
    for chunk in batches(records, max(1, args.batch_size // len(prompts)) or 1):
        images = vlm.encode_images([r.load_image() for r in chunk])
        direct = answer_direct(vlm, chunk, images)
        dual = answer_dual_query(vlm, chunk, images, prompts, budget)
        rows += [record_row(*answers) for answers in zip(chunk, direct, dual, strict=True)]
    if args.records_out:
        args.records_out.parent.mkdir(parents=True, exist_ok=True)
        args.records_out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return reasoning_summary(rows, records, skills, library)


def read_rows(path: Path) -> list[dict]:
    """The rows a ``--records-out`` run kept."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def reasoning_records(args: argparse.Namespace) -> list:
    return load_records(f"scenes:{args.kind}", split=args.split, limit=args.n, seed=args.seed)


def record_row(record, direct, dual) -> dict:
    """One record's answers as plain data: what ``--records-out`` keeps and the summary reads."""
    return {
        "id": record.id,
        "question": record.question,
        "question_type": record.metadata["question_type"],
        "answers": list(record.answers),
        "direct": direct.answer,
        "prompts": [
            {
                "prompt_id": t.prompt_id,
                "analysis": t.analysis,
                "answer": t.answer,
                "logprob": t.answer_logprob,
                "mean_logprob": t.answer_mean_logprob,
                "analysis_tokens": t.analysis_tokens,
            }
            for t in dual.traces
        ],
    }


@dataclass
class ModeScores:
    """Per-record scores (1 right, 0 wrong) of every mode, in the records' order."""

    direct: list[float]
    by_prompt: dict[str, list[float]]
    ensembles: dict[str, list[float]]
    ensemble_scores: Callable[..., list[float]]  # prompt ids (and a vote) -> per-record scores
    reliability: PromptReliability

    @property
    def modes(self) -> dict[str, list[float]]:
        return {
            "direct": self.direct,
            **{f"dual:{p}": v for p, v in self.by_prompt.items()},
            **self.ensembles,
        }


def checked_records(rows: list[dict], records: list) -> dict:
    """The records by id, once the stored rows are known to be theirs, question for question."""
    by_id = {r.id: r for r in records}
    if [row["id"] for row in rows] != [r.id for r in records]:
        raise SystemExit("the stored records are not this split's sample: other --split, --n or --seed?")
    asked = sum(row["question"] != by_id[row["id"]].question for row in rows)
    if asked:
        raise SystemExit(f"{asked} stored questions differ from what the scene generator asks now")
    return by_id


def mode_scores(rows: list[dict], by_id: dict, skills: dict[str, str], library: PromptLibrary) -> ModeScores:
    """Direct, every prompt and the ensembles (all prompts, the default K = 3, reliability-weighted)."""

    def scored(answer: str, row: dict) -> float:
        return score("exact_match", answer, by_id[row["id"]])

    all_ids = list(skills)
    candidates = [
        [Candidate(t["prompt_id"], t["answer"], t["logprob"], t["mean_logprob"]) for t in row["prompts"]]
        for row in rows
    ]
    reliability = estimate_reliability(candidates)  # from the answers alone: no references read

    def ensemble_scores(ids: list[str], vote=get_strategy("majority")) -> list[float]:
        return [
            scored(vote([c for c in cands if c.prompt_id in ids]).answer, row)
            for cands, row in zip(candidates, rows, strict=True)
        ]

    default_k = [p.id for p in library.select(task_type="scene", k=3)]
    ensembles = {f"ensemble (K={len(all_ids)}, all scene prompts)": ensemble_scores(all_ids)}
    if set(default_k) <= set(all_ids):
        ensembles[f"ensemble (K=3 default: {', '.join(default_k)})"] = ensemble_scores(default_k)
    ensembles[f"ensemble (K={len(all_ids)}, reliability-weighted)"] = ensemble_scores(
        all_ids, reliability.vote
    )
    return ModeScores(
        direct=[scored(row["direct"], row) for row in rows],
        by_prompt={pid: [scored(prompt_answer(row, pid), row) for row in rows] for pid in all_ids},
        ensembles=ensembles,
        ensemble_scores=ensemble_scores,
        reliability=reliability,
    )


def reasoning_summary(
    rows: list[dict], records: list, skills: dict[str, str], library: PromptLibrary
) -> dict:
    """Scores, paired differences and ensembles of the rows (one per record, in ``records``' order)."""
    by_id = checked_records(rows, records)
    scores = mode_scores(rows, by_id, skills, library)
    modes, direct, by_prompt = scores.modes, scores.direct, scores.by_prompt
    best = max(by_prompt, key=lambda pid: mean(by_prompt[pid]))
    per_type = defaultdict(lambda: defaultdict(list))
    full = next(iter(scores.ensembles.values()))
    for row, d, e in zip(rows, direct, full, strict=True):
        per_type[row["question_type"]]["direct"].append(d)
        per_type[row["question_type"]]["ensemble"].append(e)
    return {
        "records": len(rows),
        "modes": {mode: interval(values) for mode, values in modes.items()},
        "versus_direct": {mode: paired(values, direct) for mode, values in modes.items() if mode != "direct"},
        "best_single_prompt": best,
        "ensemble_versus_best_prompt": {
            mode: paired(values, by_prompt[best]) for mode, values in scores.ensembles.items()
        },
        # Chosen on these records: which prompts a later run should ensemble, not a held-out score.
        "ensemble_subsets_ranked_here": ranked_subsets(list(skills), scores.ensemble_scores),
        "per_question_type": {
            t: {m: round(mean(v), 3) for m, v in modes_.items()} | {"n": len(modes_["direct"])}
            for t, modes_ in sorted(per_type.items())
        },
        "prompts": prompt_agreement(rows, list(skills), scores.reliability),
        "analyses": analysis_quality(rows, by_id, skills),
    }


def versus_baseline(
    rows: list[dict], baseline_rows: list[dict], records: list, skills: dict[str, str], library: PromptLibrary
) -> dict:
    """These weights against other weights on the same records: each mode's paired difference,
    and the difference of each mode's gain over direct (does the reasoning gap grow?)."""
    ours = mode_scores(rows, checked_records(rows, records), skills, library).modes
    theirs = mode_scores(baseline_rows, checked_records(baseline_rows, records), skills, library).modes

    def gain(modes: dict[str, list[float]], mode: str) -> list[float]:
        return [m - d for m, d in zip(modes[mode], modes["direct"], strict=True)]

    shared = [mode for mode in ours if mode in theirs]
    return {
        "score": {mode: paired(ours[mode], theirs[mode]) for mode in shared},
        "gain_over_direct": {
            mode: paired(gain(ours, mode), gain(theirs, mode)) for mode in shared if mode != "direct"
        },
    }


def versus_eval_results(rows: list[dict], results: dict, records: list, library: PromptLibrary) -> dict:
    """These weights against the items of an ``sdrt eval`` run of other weights on the same records.

    The run's ensemble is of the prompts its items name (``prompt_answers``); ours is the majority
    vote of the same prompts over our stored answers. Its scores are taken as it recorded them.
    """
    by_id = checked_records(rows, records)
    items = {(i["mode"], i["record_id"]): i for i in results["items"] if i["benchmark"] == "scenes"}
    missing = [
        row["id"]
        for row in rows
        if ("direct", row["id"]) not in items or ("ensemble", row["id"]) not in items
    ]
    if missing:
        raise SystemExit(
            f"the eval results lack direct or ensemble answers for {len(missing)} of these records"
        )
    prompt_ids = list(items["ensemble", rows[0]["id"]]["prompt_answers"])
    skills = {pid: "" for pid in prompt_ids}
    ours = mode_scores(
        [row | {"prompts": [t for t in row["prompts"] if t["prompt_id"] in skills]} for row in rows],
        by_id,
        skills,
        library,
    )
    mine = {"direct": ours.direct, "ensemble": ours.ensemble_scores(prompt_ids)}
    theirs = {mode: [items[mode, row["id"]]["score"] for row in rows] for mode in ("direct", "ensemble")}
    for pid in prompt_ids:
        mine[f"dual:{pid}"] = ours.by_prompt[pid]
        theirs[f"dual:{pid}"] = [
            score("exact_match", items["ensemble", row["id"]]["prompt_answers"][pid], by_id[row["id"]])
            for row in rows
        ]

    def gain(modes: dict[str, list[float]], mode: str) -> list[float]:
        return [m - d for m, d in zip(modes[mode], modes["direct"], strict=True)]

    return {
        "prompts": prompt_ids,
        "ours": {mode: interval(values) for mode, values in mine.items()},
        "theirs": {mode: interval(values) for mode, values in theirs.items()},
        "score": {mode: paired(mine[mode], theirs[mode]) for mode in mine},
        "gain_over_direct": {
            mode: paired(gain(mine, mode), gain(theirs, mode)) for mode in mine if mode != "direct"
        },
    }


def ranked_subsets(
    prompt_ids: list[str], ensemble_scores: Callable[[list[str]], list[float]], top: int = 5
) -> list[dict]:
    """The best majority-vote ensembles over every subset of two or more prompts, best first.

    A selection made on the records it is scored on: it says which K prompts to ensemble on
    another split, and its score is optimistic here.
    """
    ranked = []
    for size in range(2, len(prompt_ids) + 1):
        for subset in combinations(prompt_ids, size):
            ranked.append({"prompts": list(subset), "score": round(mean(ensemble_scores(list(subset))), 3)})
    ranked.sort(key=lambda entry: (-entry["score"], len(entry["prompts"])))
    return ranked[:top]


def prompt_answer(row: dict, prompt_id: str) -> str:
    """The answer one prompt gave in a stored row."""
    return next(t["answer"] for t in row["prompts"] if t["prompt_id"] == prompt_id)


def prompt_agreement(
    rows: list[dict], prompt_ids: list[str], reliability: PromptReliability
) -> dict[str, dict]:
    """Per prompt: how often it answers as direct does, and its label-free reliability estimate.

    A prompt whose step 2 answered from the image rather than from its analysis would agree
    with direct answers far more often than its accuracy explains.
    """
    out = {}
    for pid in prompt_ids:
        answers = [prompt_answer(row, pid) for row in rows]
        same = [
            normalize_answer(a) == normalize_answer(row["direct"])
            for a, row in zip(answers, rows, strict=True)
        ]
        out[pid] = {
            "agrees_with_direct": round(mean(same), 3),
            "estimated_accuracy": round(reliability.accuracy[pid], 3),
            "vote_weight": round(reliability.vote_weights[pid], 3),
        }
    return out


def analysis_quality(rows: list[dict], by_id: dict, skills: dict[str, str]) -> dict[str, dict]:
    """Each prompt's step-1 text against the exact text the scene graph gives for its skill.

    Step 2's accuracy is split by whether the analysis was exactly right: wrong answers after
    an exact analysis are step 2 failing to read it (text reasoning), the others mostly step 1
    failing to see (perception).
    """
    quality = defaultdict(lambda: {"exact": [], "objects": [], "tokens": [], "after": ([], [])})
    for row in rows:
        record = by_id[row["id"]]
        scene = scene_by_id(record.metadata["scene_id"])
        for trace in row["prompts"]:
            target = analysis(skills[trace["prompt_id"]], scene, record.question)
            entry = quality[trace["prompt_id"]]
            exact = trace["analysis"].strip() == target
            entry["exact"].append(float(exact))
            entry["after"][exact].append(score("exact_match", trace["answer"], record))
            if trace.get("analysis_tokens") is not None:  # absent from rows stored by older versions
                entry["tokens"].append(trace["analysis_tokens"])
            if description_objects(target):
                entry["objects"].append(object_accuracy(trace["analysis"], [target]))
    return {
        pid: {
            "skill": skills[pid],
            "exact": round(mean(q["exact"]), 3),
            "object_accuracy": round(mean(q["objects"]), 3) if q["objects"] else None,
            "mean_tokens": round(mean(q["tokens"]), 1) if q["tokens"] else None,
            "answer_after_exact_analysis": _rate(q["after"][True]),
            "answer_after_other_analysis": _rate(q["after"][False]),
        }
        for pid, q in quality.items()
    }


def _rate(scores: list[float]) -> dict[str, float | int | None]:
    return {"n": len(scores), "accuracy": round(mean(scores), 3) if scores else None}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = args.weights or WEIGHTS_DIR
    config, _ = read_weights(folder)
    skills = dict((config.get("align_config") or {}).get("analysis_prompts") or {})
    if not skills:
        print(f"error: {folder} was not aligned on analysis prompts; nothing to reason with", file=sys.stderr)
        return 2
    began = time.perf_counter()
    result = {
        "command": "python scripts/testbed_eval.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "split": args.split,
        "seed": args.seed,
        "dtype": args.dtype,
        "kind": args.kind,
    }
    if args.from_records:
        rows = read_rows(args.from_records)
        records, library = reasoning_records(args), PromptLibrary.builtin()
        result["reasoning"] = reasoning_summary(rows, records, skills, library)
        if args.baseline_records:
            baseline = read_rows(args.baseline_records)
            result["versus_baseline"] = {"baseline_records": str(args.baseline_records)} | versus_baseline(
                rows, baseline, records, skills, library
            )
        if args.baseline_eval:
            results = json.loads(args.baseline_eval.read_text())
            result["versus_baseline_eval"] = {"baseline_eval": str(args.baseline_eval)} | versus_eval_results(
                rows, results, records, library
            )
    else:
        vlm = EmbeddedVLM.load(weights_dir=folder, dtype=getattr(torch, args.dtype))
        result["weights"] = vlm.weights_info
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
