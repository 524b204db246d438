"""The precision chosen for a CPU: bfloat16 only where the hardware runs it natively."""

from __future__ import annotations

from sdrt.demo import DemoPlan
from sdrt.models.precision import cpu_flags, fast_dtype

ZEN3 = (
    "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n"
)
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(ZEN3)
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_bfloat16_only_on_cpus_with_bfloat16_units(tmp_path):
    for text, expected in ((ZEN3, "float32"), (SAPPHIRE_RAPIDS, "bfloat16")):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(text)
        assert fast_dtype(cpu_flags(cpuinfo)) == expected
    assert fast_dtype(frozenset({"avx512_bf16"})) == "bfloat16"
    assert fast_dtype(frozenset()) == "float32"


def test_the_demo_runs_in_the_precision_this_machine_runs_fastest():
    assert DemoPlan().dtype == fast_dtype()
    assert DemoPlan(dtype="float32").dtype == "float32"
