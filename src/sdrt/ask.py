"""One question about one image, in any answering mode (the ``sdrt ask`` command)."""

from __future__ import annotations

from pathlib import Path

from sdrt.data.records import VQARecord
from sdrt.models import load_model
from sdrt.prompts.library import PromptLibrary
from sdrt.reasoning.modes import Answer, answer_with_mode, parse_mode


def ask_question(
    model_name: str,
    image: Path,
    question: str,
    *,
    mode: str = "direct",
    adapter: Path | None = None,
    k: int = 3,
    prompts_yaml: Path | None = None,
    device: str = "cpu",
) -> Answer:
    kind, _ = parse_mode(mode)
    record = VQARecord(id=str(image), question=question, image_path=str(image))
    picture = record.load_image()  # fails early, naming the file, before a model is loaded
    library = PromptLibrary.load(prompts_yaml)
    model = load_model(model_name, device=device)
    if adapter is not None:
        from sdrt.adapters.files import load_adapter

        load_adapter(adapter, model).attach(model)
    elif kind == "adapter":
        raise ValueError("--mode adapter needs --adapter DIR")
    encoded = model.encode_images([picture])
    prompts = library.select(task_type=record.task_type, k=k)
    return answer_with_mode(model, [record], encoded, mode, prompts, library.get)[0]
