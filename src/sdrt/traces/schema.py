"""The trace table: one row per (example, prompt). Documented in docs/traces.md."""

import pyarrow as pa

TRACE_SCHEMA = pa.schema(
    [
        pa.field("example_id", pa.string(), nullable=False),
        pa.field("example_index", pa.int64(), nullable=False),  # position in the source; orders merges
        pa.field("source", pa.string()),  # the data source the example came from, e.g. "easy-vqa:train"
        pa.field("image_path", pa.string()),  # null for in-memory images (regenerated from the source)
        pa.field("question", pa.string(), nullable=False),
        pa.field("task_type", pa.string()),
        pa.field("references", pa.list_(pa.string())),  # empty when the data has no labels
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt_rank", pa.int32(), nullable=False),  # the prompt's position among the K
        pa.field("analysis", pa.string()),  # step 1 output
        pa.field("raw_answer", pa.string()),  # step 2 output as generated
        pa.field("answer", pa.string()),  # short answer extracted from raw_answer
        pa.field("answer_logprob", pa.float64()),  # sum of the step-2 token log-probabilities
        pa.field("answer_mean_logprob", pa.float64()),
        pa.field("analysis_tokens", pa.int32()),
        pa.field("answer_tokens", pa.int32()),
        pa.field("ensemble_answer", pa.string()),  # the pseudo-label, same for all K rows of an example
        pa.field("ensemble_agreement", pa.float64()),
        pa.field("prompt_weight", pa.float64()),  # this prompt's ensemble weight for this example
        pa.field("model_id", pa.string()),
        pa.field("model_config_hash", pa.string()),
        pa.field("prompt_library_hash", pa.string()),
    ]
)
