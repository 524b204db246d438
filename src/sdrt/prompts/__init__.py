"""Dual-query prompts (analyse, then answer) and the library that loads and validates them."""

from sdrt.prompts.library import (
    CHOICE_INSTRUCTION,
    PLACEHOLDERS,
    SHORT_ANSWER_INSTRUCTION,
    DualQueryPrompt,
    PromptError,
    PromptLibrary,
    StudentLayout,
    direct_prompt,
    format_options,
    prompt_set_hash,
    read_prompt_file,
)

__all__ = [
    "CHOICE_INSTRUCTION",
    "PLACEHOLDERS",
    "SHORT_ANSWER_INSTRUCTION",
    "DualQueryPrompt",
    "PromptError",
    "PromptLibrary",
    "StudentLayout",
    "direct_prompt",
    "format_options",
    "prompt_set_hash",
    "read_prompt_file",
]
