"""One question about one image, in any answering mode (the ``sdrt ask`` command)."""

from __future__ import annotations

from pathlib import Path

from sdrt.config import LoadOptions
from sdrt.data.records import VQARecord
from sdrt.models import load_model
from sdrt.prompts.library import PromptLibrary, StudentLayout
from sdrt.reasoning.modes import Answer, answer_with_mode, parse_mode
from sdrt.traces.job import select_prompts


def ask_question(
    model_name: str,
    image: Path,
    question: str,
    *,
    mode: str = "direct",
    adapter: Path | None = None,
    k: int = 3,
    prompt_ids: list[str] | None = None,
    prompts_yaml: Path | None = None,
    load: LoadOptions | None = None,
) -> Answer:
    """``prompt_ids`` choose the ensemble's prompts (default: the first ``k`` suited to the question).

    An adapter answers in one pass (modes ``direct`` and ``adapter``): it was trained to stand in
    for the reasoning, not to run inside it, so reasoning modes refuse one.
    """
    kind, _ = parse_mode(mode)
    if adapter is not None and kind in {"dual", "ensemble"}:
        raise ValueError(
            f"--adapter answers in one pass: use it with --mode direct or adapter, not {mode} "
            "(reasoning modes run the model without the adapter)"
        )
    record = VQARecord(id=str(image), question=question, image_path=str(image))
    picture = record.load_image()  # fails early, naming the file, before a model is loaded
    library = PromptLibrary.load(prompts_yaml)
    for prompt_id in prompt_ids or []:
        library.get(prompt_id)  # an unknown id fails before the model loads
    model = load_model(model_name, load)
    layout = StudentLayout()
    if adapter is not None:
        from sdrt.adapters.files import load_adapter

        attached = load_adapter(adapter, model)
        attached.attach(model)
        layout = attached.layout
    elif kind == "adapter":
        raise ValueError("--mode adapter needs --adapter DIR")
    encoded = model.encode_images([picture])
    prompts = select_prompts(library, prompt_ids, k, record.task_type)
    return answer_with_mode(model, [record], encoded, mode, prompts, library.get, layout=layout)[0]
