"""Whether vLLM's CPU build can run 4-bit (AWQ/GPTQ) weights here: the decision, without vLLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vgate_worker import cpu_kernels as ck

AVX2_HOST = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})
AVX512_HOST = AVX2_HOST | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
SAPPHIRE_RAPIDS = AVX512_HOST | {"avx512_bf16", "amx_tile"}


@pytest.mark.parametrize(
    ("flags", "extension"),
    [(AVX2_HOST, "_C_AVX2"), (AVX512_HOST, "_C_AVX512"), (SAPPHIRE_RAPIDS, "_C")],
)
def test_extension_choice_follows_vllms_rule(flags: frozenset[str], extension: str) -> None:
    assert ck.extension_for(flags) == extension


def probe_output(ops: list[str], library: str) -> str:
    lib = f"/venv/lib/python3.11/site-packages/vllm/{library}.abi3.so"
    return "vLLM log line\n" + json.dumps({"ops": ops, "libraries": [lib]})


def test_avx2_build_reported_by_vllm_has_no_wna16_kernel() -> None:
    report = ck.report_from_probe(
        probe_output(["_C::rms_norm", "_C::rotary_embedding"], "_C_AVX2"), AVX2_HOST
    )
    support = ck.wna16_support(report)
    assert report.extension == "_C_AVX2"
    assert not support.available
    # The reason names the missing kernel, the build vLLM loaded and the CPU feature it lacks.
    assert "cpu_gemm_wna16" in support.reason
    assert "vllm._C_AVX2" in support.reason
    assert "AVX-512" in support.reason
    assert "reported by vLLM" in support.reason


def test_avx512_build_reported_by_vllm_has_the_kernel() -> None:
    output = probe_output(["_C::rms_norm", ck.WNA16_OP], "_C_AVX512")
    support = ck.wna16_support(ck.report_from_probe(output, AVX512_HOST))
    assert support.available
    assert "vllm._C_AVX512" in support.reason


def test_vllms_answer_wins_over_the_cpu_flags() -> None:
    """An AVX-512 CPU whose loaded build lacks the kernel is still refused: vLLM is asked, not the flags."""
    report = ck.report_from_probe(probe_output(["_C::rms_norm"], "_C_AVX512"), AVX512_HOST)
    support = ck.wna16_support(report)
    assert not support.available
    assert "even though the CPU has AVX-512" in support.reason


@pytest.mark.parametrize(
    ("flags", "available"), [(AVX2_HOST, False), (AVX512_HOST, True), (SAPPHIRE_RAPIDS, True)]
)
def test_cpu_flags_are_the_fallback(flags: frozenset[str], available: bool) -> None:
    support = ck.wna16_support(ck.guess_from_cpu_flags(flags, note="vLLM did not import"))
    assert support.available is available
    assert "inferred from the CPU flags (vLLM did not import)" in support.reason


def test_cpuinfo_flags_are_read(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse avx2 fma\n\nprocessor\t: 1\n"
    )
    assert ck.read_cpu_flags(cpuinfo) == {"fpu", "sse", "avx2", "fma"}
    assert ck.read_cpu_flags(tmp_path / "absent") == frozenset()
