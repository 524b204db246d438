"""The precision a CPU runs fastest: bfloat16 only where it has units for it.

On a CPU without bfloat16 units (AVX-512 BF16 or AMX) PyTorch emulates bfloat16 matmuls, about
nine times slower than float32 (docs/performance.md, "Precision"); with them it is faster. Torch
exposes no public test for those units, so the CPU's flags are read here from ``/proc/cpuinfo``
(Linux); elsewhere the answer is float32, which is always safe.
"""

from __future__ import annotations

from pathlib import Path

BFLOAT16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The feature flags of the first CPU listed in ``cpuinfo`` (none if it cannot be read)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def fast_dtype(flags: frozenset[str] | None = None) -> str:
    """``bfloat16`` on a CPU that runs it natively, ``float32`` elsewhere.

    ``flags``: the CPU's feature flags (default: read from ``/proc/cpuinfo``).
    """
    flags = cpu_flags() if flags is None else flags
    return "bfloat16" if flags & BFLOAT16_CPU_FLAGS else "float32"
