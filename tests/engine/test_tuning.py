"""What `promptcast bench --profile` reports, and the compile tuning levels, on the CPU."""

from __future__ import annotations

import pytest
import torch

from promptcast.core.scheduler import RenderRequest
from promptcast.engine.compile import FastCall, inductor_options
from promptcast.engine.kernel_profile import category, profile_frames
from promptcast.engine.model_index import ModelLoadError
from promptcast.engine.pipeline import Engine


@pytest.mark.parametrize(("kernel", "expected"), [
    # Names as the CUDA profiler shows them on an H100/H200 (cuDNN, cuBLAS, flash, inductor).
    ("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128x64", "convolution"),
    ("void cutlass::Kernel2<cutlass_80_wmma_tensorop_f16_s161616gemm_f16_32x32_128x2_tn_align8>",
     "matmul"),
    ("sm90_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1", "matmul"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4>>", "attention"),
    ("triton_red_fused_native_group_norm_0", "norm"),
    ("triton_poi_fused_add_convolution_silu_3", "fused (inductor)"),  # a convolution's epilogue
    ("triton_tem_fused_convolution_0", "convolution"),  # max-autotune's own convolution
    ("triton_per_fused_add_mul_5", "fused (inductor)"),
    ("void at::native::elementwise_kernel<128, 2>(copy_kernel_impl)", "copy"),
    ("aten::mkldnn_convolution", "convolution"),
    ("aten::addmm", "matmul"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("aten::randn", "other"),
])
def test_kernels_are_grouped_by_what_they_do(kernel: str, expected: str) -> None:
    assert category(kernel) == expected


def test_a_cpu_profile_of_real_frames_shows_where_the_time_goes(engine: Engine) -> None:
    one = RenderRequest("a red circle at the top", 3, 2, 64, 64)
    prof = profile_frames(lambda: engine.render(one), torch.device("cpu"), 2)
    assert prof.frames == 2 and prof.per_frame_ms() > 0
    shares = prof.by_category()
    # The tiny model is all convolutions and a little attention; both must be seen.
    assert shares["convolution"] > 0 and shares["attention"] > 0
    assert max(shares, key=shares.__getitem__) == "convolution"
    assert list(shares.values()) == sorted(shares.values(), reverse=True)
    report = prof.report(top=5)
    assert "| convolution |" in report and report.count("\n| `") == 5


def test_tuning_levels_compile_to_the_same_function() -> None:
    assert inductor_options("off") == {}
    assert inductor_options("fast") == {"conv_1x1_as_mm": True}
    with pytest.raises(ModelLoadError, match="off, fast, max"):
        inductor_options("fastest")
    conv, lin = torch.nn.Conv2d(8, 8, 1), torch.nn.Linear(8, 8)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return lin(conv(x).permute(0, 2, 3, 1)).relu()

    x = torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        # "max" autotunes inductor's templates: each option must exist in this torch's inductor.
        tuned = FastCall("max", fn, "compile", inductor_options("max"))(x)
        assert torch.allclose(tuned, fn(x), atol=1e-5)


def test_compile_scope_goes_from_the_command_line_to_the_engine() -> None:
    from promptcast.cli import build_parser, engine_config_from_args
    from promptcast.config import EngineConfig

    args = build_parser().parse_args(["serve", "--compile-scope", "blocks"])
    assert engine_config_from_args(args).compile_scope == "blocks"
    with pytest.raises(ModelLoadError, match="unknown compile scope 'layers'; one of whole, blocks"):
        Engine(EngineConfig(compile="compile", compile_scope="layers")).load()
