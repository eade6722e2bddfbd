"""bf16 autocast on the CPU: whether this CPU computes bf16 natively, and the refusal where it does not.

``cpu_bf16=true`` trains under ``torch.autocast("cpu", dtype=torch.bfloat16)``
(``ccmix.method.step.autocast_context``): the convolutions and matrix products run in
bf16, weights, losses and the optimiser stay fp32, and evaluation is fp32 whatever the
training precision (``ccmix.train.evaluation``). It pays only where the CPU has bf16
instructions (AVX-512-BF16, AMX, or Arm's BF16 extension); elsewhere oneDNN emulates
bf16 and a step is slower than fp32, so the run is refused with one sentence instead.
The option is off by default, so CPU results stay exactly those of fp32.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

from ccmix.config.fields import TrainConfig
from ccmix.config.rules import ConfigError

# /proc/cpuinfo flags of native bf16 arithmetic: x86 (AVX-512-BF16, AMX) and Arm (FEAT_BF16).
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_flags() -> set[str]:
    """Return the CPU's feature flags as /proc/cpuinfo (Linux) or sysctl (macOS) names them; empty when unknown."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags: set[str] = set()
        for line in cpuinfo.read_text(errors="replace").splitlines():
            name, _, value = line.partition(":")
            if name.strip() in ("flags", "Features"):  # x86 and Arm spell the line differently
                flags.update(value.split())
        return flags
    if platform.system() == "Darwin":
        found = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True)
        return {"bf16"} if found.stdout.strip() == "1" else set()
    return set()


def cpu_bf16_support() -> tuple[bool, str]:
    """Return (whether this CPU computes bf16 natively, the evidence in words for a sentence or a record)."""
    native = sorted(set(BF16_FLAGS) & cpu_flags())
    capability = torch.backends.cpu.get_cpu_capability()  # the widest vector ISA torch's kernels use, e.g. AVX2
    if native:
        return True, f"CPU flags {', '.join(native)}; torch CPU capability {capability}"
    return False, f"no avx512_bf16, amx_bf16 or bf16 CPU flag; torch CPU capability {capability}"


def check_cpu_bf16(config: TrainConfig, device: torch.device) -> None:
    """Raise ConfigError when ``config.cpu_bf16`` asks for bf16 on a CPU ``device`` without native bf16.

    On CUDA ``cpu_bf16`` does not apply (``amp`` sets the precision there) and nothing is checked.
    """
    if not config.cpu_bf16 or device.type != "cpu":
        return
    native, evidence = cpu_bf16_support()
    if not native:
        raise ConfigError(field="cpu_bf16", value=True, problem="is not accepted on this CPU",
                          detail=f"it has no native bf16 ({evidence}), where bf16 autocast is slower than fp32; "
                                 "cpu_bf16 must be false here")


__all__ = ["BF16_FLAGS", "check_cpu_bf16", "cpu_bf16_support", "cpu_flags"]
