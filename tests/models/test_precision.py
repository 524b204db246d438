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


def test_alignment_warns_when_its_bfloat16_would_be_emulated():
    from sdrt.training.align import emulated_bfloat16_warning

    zen3, sapphire = frozenset({"avx2", "fma"}), frozenset({"avx512_bf16", "amx_bf16"})
    assert "9x slower" in emulated_bfloat16_warning(True, "cpu", zen3)
    assert emulated_bfloat16_warning(True, "cpu", sapphire) is None
    assert emulated_bfloat16_warning(False, "cpu", zen3) is None  # float32 asked for
    assert emulated_bfloat16_warning(True, "cuda", zen3) is None  # the GPU's bfloat16 is its own
