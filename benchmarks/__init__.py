"""Speed and memory of SDRT's hot paths, each measured side by side against a plain baseline.

Run ``python -m benchmarks --model embedded`` (or ``tiny:llava`` for a smoke run); every figure
prints one line ``<figure>: baseline ..., ours ..., ratio R``. Ratios, never absolute timings,
are what the figures claim: both sides run in the same process on the same inputs.
"""
