"""Does vLLM's CPU build have the kernel a quantized checkpoint needs, on this CPU?

vLLM's x86 CPU wheel ships three builds of its extension and loads one at start-up
(``CpuPlatform.import_kernels``): ``_C`` on CPUs with AVX-512 BF16, ``_C_AVX512`` on other
AVX-512 CPUs, ``_C_AVX2`` elsewhere. Only the AVX-512 builds register ``cpu_gemm_wna16``, the
4-bit weight kernel that AWQ and GPTQ run on CPU, so on an AVX2-only CPU such a model loads and
then fails every request.

:func:`ask_vllm` asks vLLM itself (in a child process: importing vLLM takes seconds and loads
native code): it loads the extension the way vLLM does and lists the operators that got
registered. When vLLM cannot be asked, :func:`guess_from_cpu_flags` applies vLLM's rule to the
CPU flags instead. :func:`wna16_support` turns either observation into a decision with a reason;
it is pure, so both outcomes are unit-tested without vLLM.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

WNA16_OP = "_C::cpu_gemm_wna16"
# Checkpoint formats (quant_method, or --quantization) whose CPU path is the WNA16 kernel.
WNA16_METHODS = frozenset({"awq", "awq_marlin", "gptq", "gptq_marlin"})

# Run by `python -c` in a child: vLLM's own kernel import, then what it registered and loaded.
_PROBE = r"""
import json, torch
from vllm.platforms.cpu import CpuPlatform
CpuPlatform.import_kernels()
ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("_C::"))
with open("/proc/self/maps") as maps:
    libs = sorted({l.split()[-1] for l in maps if "/vllm/_C" in l and l.rstrip().endswith(".so")})
print(json.dumps({"ops": ops, "libraries": libs}))
"""


@dataclass(frozen=True)
class KernelReport:
    """What was observed: the extension vLLM loaded and the operators it registered."""

    extension: str  # e.g. "_C_AVX2"
    ops: frozenset[str]
    cpu_flags: frozenset[str]
    asked_vllm: bool  # False: inferred from CPU flags because vLLM could not be asked
    note: str = ""  # why vLLM could not be asked


@dataclass(frozen=True)
class KernelSupport:
    available: bool
    reason: str


def extension_for(cpu_flags: Iterable[str]) -> str:
    """The extension build vLLM's ``CpuPlatform.import_kernels`` picks for these CPU flags."""
    flags = set(cpu_flags)
    if "avx512f" in flags:
        return "_C" if "avx512_bf16" in flags else "_C_AVX512"
    return "_C_AVX2"


def guess_from_cpu_flags(cpu_flags: Iterable[str], note: str = "") -> KernelReport:
    """The fallback: vLLM's extension choice for these flags; only its AVX-512 builds have WNA16."""
    flags = frozenset(cpu_flags)
    extension = extension_for(flags)
    ops = frozenset() if extension == "_C_AVX2" else frozenset({WNA16_OP})
    return KernelReport(extension=extension, ops=ops, cpu_flags=flags, asked_vllm=False, note=note)


def report_from_probe(output: str, cpu_flags: Iterable[str]) -> KernelReport:
    """Parse the child's JSON line; the loaded library's file name gives the extension."""
    data = json.loads(output.strip().splitlines()[-1])
    libraries = [Path(p).name.split(".", 1)[0] for p in data.get("libraries", [])]
    flags = frozenset(cpu_flags)
    extension = libraries[0] if len(libraries) == 1 else extension_for(flags)
    return KernelReport(extension=extension, ops=frozenset(data["ops"]), cpu_flags=flags, asked_vllm=True)


def _missing_isa(report: KernelReport) -> str:
    if "avx512f" not in report.cpu_flags:
        return "the CPU has no AVX-512 (no avx512f flag; vLLM loads its AVX2 build)"
    return "even though the CPU has AVX-512"


def wna16_support(report: KernelReport) -> KernelSupport:
    """Whether AWQ/GPTQ checkpoints can run on CPU here, with a reason naming kernel and CPU feature."""
    how = "reported by vLLM" if report.asked_vllm else f"inferred from the CPU flags ({report.note})"
    if WNA16_OP in report.ops:
        return KernelSupport(True, f"vLLM's CPU extension vllm.{report.extension} has {WNA16_OP} ({how})")
    return KernelSupport(
        False,
        f"vLLM's CPU extension for this CPU, vllm.{report.extension}, has no {WNA16_OP} kernel, which "
        f"AWQ and GPTQ need on CPU: {_missing_isa(report)} ({how})",
    )


# --- effects ------------------------------------------------------------------------------------


def read_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags as the kernel lists them (empty where there is no /proc/cpuinfo)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in {"flags", "Features"}:
            return frozenset(value.split())
    return frozenset()


def ask_vllm(python: str = sys.executable, timeout_s: float = 180.0) -> KernelReport:
    """Load vLLM's CPU kernels in a child process and report what registered; flags if that fails."""
    flags = read_cpu_flags()
    try:
        done = subprocess.run(
            [python, "-c", _PROBE], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return guess_from_cpu_flags(flags, note=f"probe did not run: {exc}")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return guess_from_cpu_flags(flags, note=f"vLLM's kernels did not load: {last}")
    try:
        return report_from_probe(done.stdout, flags)
    except (ValueError, KeyError, IndexError) as exc:
        return guess_from_cpu_flags(flags, note=f"unreadable probe output: {exc}")
