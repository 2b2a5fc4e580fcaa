"""Where a frame's time goes: `promptcast bench --arch ... --profile FILE`.

torch.profiler records a few renders; the device's kernels (the CPU's operators on a CPU run)
are summed by name and grouped by what they do, so that the next optimisation is chosen from a
measurement: attention that misses the flash kernels, convolutions that run slow algorithms,
or norms and activations that inductor left unfused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

# Checked in order: cuDNN's convolution kernels have "gemm" in their names too.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("flash", "fmha", "attention", "sdpa", "softmax")),
    ("convolution", ("conv", "fprop", "dgrad", "wgrad", "winograd", "implicit")),
    ("matmul", ("gemm", "cutlass", "matmul", "aten::mm", "aten::addmm", "aten::bmm", "linear",
                "sm90_xmma", "sm80_xmma")),
    ("norm", ("norm",)),
    ("copy", ("copy", "memcpy", "memset", "cat", "contiguous")),
)


def category(name: str) -> str:
    lowered = name.lower()
    # Inductor's generated kernels name the ops they fused ("..._fused_add_convolution_silu_3"
    # is a convolution's epilogue, not the convolution): classify them apart. Its templates
    # ("triton_tem_...", max-autotune's matmuls and convolutions) are the real thing.
    if lowered.startswith(("triton_", "cpp_fused")) and not lowered.startswith("triton_tem"):
        return "norm" if "norm" in lowered else "fused (inductor)"
    for label, needles in CATEGORIES:
        if any(n in lowered for n in needles):
            return label
    return "other"


@dataclass
class KernelRow:
    name: str
    calls: int
    total_ms: float  # over all profiled frames


@dataclass
class Profile:
    device: str  # "cuda": GPU kernels; "cpu": CPU operators (self time)
    frames: int
    rows: list[KernelRow]  # longest first

    def per_frame_ms(self) -> float:
        return sum(r.total_ms for r in self.rows) / self.frames

    def by_category(self) -> dict[str, float]:
        """ms per frame in each category, largest first."""
        sums: dict[str, float] = {}
        for r in self.rows:
            sums[category(r.name)] = sums.get(category(r.name), 0.0) + r.total_ms / self.frames
        return dict(sorted(sums.items(), key=lambda kv: -kv[1]))

    def report(self, top: int = 25) -> str:
        what = "GPU kernels" if self.device == "cuda" else "CPU operators (self time)"
        if not self.rows:
            return (f"no {what} recorded (a profiler that cannot see into CUDA graphs: profile "
                    "with --compile compile, which runs the same kernels one by one)")
        lines = [f"{what}: {self.per_frame_ms():.3f} ms per frame over {self.frames} frames",
                 "| category | ms/frame | share |", "|---|---|---|"]
        total = self.per_frame_ms() or 1.0
        lines += [f"| {c} | {ms:.3f} | {ms / total:.0%} |" for c, ms in self.by_category().items()]
        lines += ["", f"| kernel (top {top}) | category | calls/frame | ms/frame |", "|---|---|---|---|"]
        for r in self.rows[:top]:
            name = r.name if len(r.name) <= 90 else r.name[:87] + "..."
            lines.append(f"| `{name}` | {category(r.name)} | {r.calls / self.frames:.1f} | "
                         f"{r.total_ms / self.frames:.3f} |")
        return "\n".join(lines)


def profile_frames(render: Callable[[], object], device: torch.device, frames: int) -> Profile:
    """Profile `frames` calls of `render` (one frame, or one batch, each)."""
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    render()  # first-call costs stay out of the profile
    with profile(activities=activities) as prof:
        for _ in range(frames):
            render()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    rows = []
    for event in prof.key_averages():
        if device.type == "cuda":
            if event.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = event.self_device_time_total
        else:
            us = event.self_cpu_time_total
        if us > 0:
            rows.append(KernelRow(event.key, event.count, us / 1e3))
    rows.sort(key=lambda r: -r.total_ms)
    return Profile(device.type, frames, rows)
