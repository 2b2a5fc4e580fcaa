"""The fast path: the text encoder(s), the UNet and the tiny decoder compiled, and on CUDA
captured in graphs (img2img's image encoder too, captured without compiling).

At batch 1 eager PyTorch spends most of a few-step frame launching kernels (about 3,400 per
SDXL UNet call; the text encoders, which run on every keystroke's new prompt, are as
launch-bound). So, once at start-up and never on the hot path:

- `torch.compile` (inductor, `fullgraph=True`, `dynamic=False`) fuses each of them into fewer,
  larger kernels, specialised to each shape bucket;
- on CUDA, each bucket's call is then captured in a CUDA graph with static input buffers
  (the vLLM shape: capture once per batch descriptor, replay after), so a UNet step is one
  graph launch. The graphs of one call (all the UNet step's buckets, say) share one memory
  pool; a caller must consume one replay's output before the next replay, which the render
  loop does (each step's latents are copied into the next step's input, the last into the
  decoder's; the prompt cache copies the text encoder's).

A bucket is the set of input shapes: resolution x batch size (x 2 with classifier-free
guidance); for the text encoder, the batch size alone (token ids are always 77 long).
`Engine.warm_up` calls every bucket once, so compilation and capture happen before /readyz
says ready; a shape seen later for the first time would recompile, which the tests forbid with
`torch._dynamo.config.error_on_recompile`.

Compiled artefacts persist in a cache folder (inductor's FX-graph and autotuning caches), so a
restart of the same model on the same machine skips most of the compile time.

How hard inductor works is `--compile-tuning` (TUNINGS): "off" is inductor's defaults (what the
first GPU run measured); "fast" (the default) adds what costs nothing on the hot path: cuDNN
benchmarking of each convolution shape once at warm-up (the shapes are fixed per bucket) and
1x1 convolutions as matmuls; "max" also autotunes every matmul and convolution template and
tunes Triton block sizes (minutes more of cold start, kept in the compile cache).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from promptcast.engine.model_index import ModelLoadError

log = logging.getLogger(__name__)

Tensors = tuple[torch.Tensor | None, ...]
Out = TypeVar("Out")  # what a call returns: a tensor, or a tuple of them


def default_compile_cache() -> Path:
    """Where compiled kernels persist: $XDG_CACHE_HOME/promptcast/torch-compile. Inductor's own
    default is under /tmp, which a reboot or a fresh container loses."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "promptcast" / "torch-compile"


def use_compile_cache(folder: Path) -> None:
    """Point inductor's (and Triton's) on-disk caches at `folder`. Call before compiling."""
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    os.environ.setdefault("TRITON_CACHE_DIR", str(folder / "triton"))
    torch._inductor.config.fx_graph_cache = True
    torch._inductor.config.autotune_local_cache = True


TUNINGS = ("off", "fast", "max")
SCOPES = ("whole", "blocks")

# The blocks a diffusion UNet is a stack of. `--compile-scope blocks` compiles these instead of
# the whole UNet ("regional compilation"): dynamo compiles a block once per distinct input
# shape and every instance of the same shape reuses the code (with inbuilt nn modules inlined,
# their weights are graph inputs), so SDXL's 70 transformer blocks compile as a handful. Cold
# start falls with the number of distinct blocks rather than the model's depth. What it gives
# up is fusion across a block's edges; the Python between blocks costs nothing once the whole
# call is captured in a CUDA graph. (Not CLIP's encoder layers: transformers records hidden
# states with hooks that read a ContextVar, which dynamo cannot trace inside a layer compiled
# on its own. In this scope the text encoders are captured as they are, not compiled: at batch
# 1 their eager cost is kernel launches, which the graph removes, and compiling them whole
# would cost as much cold start as the UNet's blocks do.)
REPEATED_BLOCKS = ("ResnetBlock2D", "BasicTransformerBlock")


def inductor_options(tuning: str) -> dict[str, Any]:
    """torch.compile's per-function inductor options for a --compile-tuning level. Options,
    not inductor's global config: two engines in one process (the tests) stay independent.
    "max" is mode="max-autotune-no-cudagraphs" (the graphs are captured here, per bucket)."""
    if tuning not in TUNINGS:
        raise ModelLoadError(f"unknown compile tuning {tuning!r}; one of {', '.join(TUNINGS)}")
    if tuning == "off":
        return {}
    fast = {"conv_1x1_as_mm": True}
    if tuning == "fast":
        return fast
    return {**fast, "max_autotune": True, "coordinate_descent_tuning": True}


def compile_blocks(module: torch.nn.Module, options: dict[str, Any]) -> int:
    """Compile, in place, every submodule of `module` that is one of REPEATED_BLOCKS; return
    how many. Call before the first forward."""
    blocks = [m for m in module.modules() if type(m).__name__ in REPEATED_BLOCKS]
    for block in blocks:
        block.compile(fullgraph=True, dynamic=False, options=options or None)
    return len(blocks)


def optimise_layout(modules: list[Any], device: torch.device, tuning: str) -> None:
    """Fused QKV projections (one matmul instead of three per attention) where a module has
    attention; on CUDA, channels_last, where convolutions in NHWC use the tensor cores without
    transposes, and (tuning above "off") cuDNN's benchmark mode, which times the convolution
    algorithms once per shape and keeps the fastest."""
    for module in modules:
        if hasattr(module, "fuse_qkv_projections"):
            module.fuse_qkv_projections()
        if device.type == "cuda":
            module.to(memory_format=torch.channels_last)
    if device.type == "cuda" and tuning != "off":
        torch.backends.cudnn.benchmark = True


def compile_seconds() -> tuple[float, float] | None:
    """(Seconds torch.compile has spent in this process so far, of which its backend's: AOT
    autograd and inductor, cache loads and kernel builds included; the rest is dynamo tracing
    the Python and building guards, which a warm compile cache does not save). From torch's
    own compile-time table, which is private: None where this torch has not got it. The
    benchmark reports it, to tell what a cold and a warm start spend their time on."""
    metrics = getattr(torch._dynamo.utils, "compilation_time_metrics", None)
    if not isinstance(metrics, dict):
        return None
    return (sum(metrics.get("_compile.compile_inner", ())),
            sum(metrics.get("OutputGraph.call_user_compiler", ())))


class CaptureFailed(RuntimeError):
    """CUDA-graph capture of a function that runs uncaptured (something in it syncs with the
    host, or is not allowed while a stream captures)."""


class CapturedCall(Generic[Out]):
    """One shape bucket of `fn`, captured in a CUDA graph. Inputs are copied into static
    buffers, the graph is replayed, and the static output is returned: valid until the next
    replay of any graph in the same pool."""

    def __init__(self, fn: Callable[..., Out], args: Tensors, pool: Any) -> None:
        self._inputs = tuple(None if a is None else a.clone() for a in args)
        # Warm up on a side stream (compiles, autotunes, allocates), as torch.cuda.graphs asks.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn(*self._inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        caller = torch.cuda.current_stream()
        try:
            with torch.cuda.graph(self._graph, pool=pool):
                self._output = fn(*self._inputs)
        except BaseException as exc:
            # When the capture fails, ending it raises before torch.cuda.graph leaves its capture
            # stream: put the caller's stream back, or all later work would run on that one.
            torch.cuda.set_stream(caller)
            # fn ran twice above: what failed is the capture. Ending it then fails too, with a
            # generic error; the first one says what in fn went wrong.
            first = exc.__context__ if isinstance(exc.__context__, RuntimeError) else exc
            # Out of memory is not the capture's fault: raised as it is (Engine.recover frees).
            if isinstance(exc, torch.OutOfMemoryError) or not isinstance(exc, RuntimeError):
                raise
            if isinstance(first, torch.OutOfMemoryError):
                raise first from exc
            raise CaptureFailed(_first_line(first)) from exc

    def __call__(self, args: Tensors) -> Out:
        for static, arg in zip(self._inputs, args, strict=True):
            if static is not None and arg is not None:
                static.copy_(arg)
        self._graph.replay()
        return self._output


class FastCall(Generic[Out]):
    """`fn` eager, compiled, or compiled and graph-captured per shape bucket.

    mode: "eager" | "compile" | "cuda-graphs" (compile, then capture; CUDA only).
    options: inductor's options for torch.compile (inductor_options).
    whole: compile `fn` as one graph; False where the caller compiled its blocks instead
    (compile_blocks): `fn` then runs as it is, and is still captured whole.

    A model the compiler or the capture cannot handle (a user's model with an op dynamo cannot
    trace, another transformers version) must not stop the server: a bucket's first call (at
    warm-up) that fails to compile makes the call eager, one that fails to capture makes it
    compiled without graphs, with a warning; `fallback` says why. A recompile refused by
    `error_on_recompile` is not such a failure, and is raised.
    """

    def __init__(self, name: str, fn: Callable[..., Out], mode: str,
                 options: dict[str, Any] | None = None, whole: bool = True) -> None:
        self.name = name
        self.mode = mode
        self._eager = fn
        self._fn = fn if mode == "eager" or not whole else torch.compile(
            fn, fullgraph=True, dynamic=False, options=options or None)
        self._graphs: dict[tuple[object, ...], CapturedCall[Out]] = {}
        self._compiled: set[tuple[object, ...]] = set()  # buckets called once ("compile" mode)
        self._pool = torch.cuda.graph_pool_handle() if mode == "cuda-graphs" else None
        self.fallback: str | None = None  # why the call runs in a lesser mode than it was given

    @property
    def compiles(self) -> bool:
        """Whether torch.compile runs `fn` as one graph (not: eager, fallen back, or `whole`
        False, where the caller compiled parts of it)."""
        return self._fn is not self._eager

    @staticmethod
    def _bucket(args: Tensors) -> tuple[object, ...]:
        return tuple(None if a is None else (tuple(a.shape), a.dtype) for a in args)

    def __call__(self, *args: torch.Tensor | None) -> Out:
        if self.mode == "eager":
            out: Out = self._fn(*args)
            return out
        bucket = self._bucket(args)
        if self.mode == "compile":
            if bucket in self._compiled:
                out = self._fn(*args)
                return out
        else:
            graph = self._graphs.get(bucket)
            if graph is not None:
                return graph(args)
        return self._first_call(bucket, args)

    def _first_call(self, bucket: tuple[object, ...], args: Tensors) -> Out:
        """A bucket's first call: it compiles (and captures) the bucket, or falls back."""
        try:
            if self.mode == "compile":
                out: Out = self._fn(*args)
                self._compiled.add(bucket)
                return out
            log.info("capturing %s for %s", self.name, bucket)
            graph = CapturedCall(self._fn, args, self._pool)
            self._graphs[bucket] = graph
            return graph(args)
        except torch._dynamo.exc.RecompileError:
            raise
        except torch._dynamo.exc.TorchDynamoException as exc:
            self._fall_back("eager", f"could not be compiled ({_first_line(exc)})")
        except CaptureFailed as exc:
            self._fall_back("compile", f"could not be captured in a CUDA graph ({exc})")
        return self(*args)

    def _fall_back(self, mode: str, why: str) -> None:
        log.warning("the %s %s; it runs %s", self.name, why,
                    "eager" if mode == "eager" else "compiled, without CUDA graphs")
        self.fallback = why
        self.mode = mode
        if mode == "eager":
            self._fn = self._eager

    @property
    def buckets(self) -> int:
        return len(self._graphs)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def unet_call(unet: Any) -> Callable[..., torch.Tensor]:
    """The UNet as a function of tensors only (engine/sampling.py's step call wraps it):
    (sample (B, C, h, w), timestep (), embeds (B, 77, D), timestep_cond (1, Dc) | None,
    text_embeds (B, P) | None, time_ids (B, 6) | None) -> prediction (B, C, h, w)."""

    def call(
        sample: torch.Tensor, timestep: torch.Tensor, embeds: torch.Tensor,
        timestep_cond: torch.Tensor | None, text_embeds: torch.Tensor | None,
        time_ids: torch.Tensor | None,
    ) -> torch.Tensor:
        added = None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}
        out: torch.Tensor = unet(
            sample, timestep, encoder_hidden_states=embeds, timestep_cond=timestep_cond,
            added_cond_kwargs=added, return_dict=False,
        )[0]
        return out

    return call


def decoder_call(vae: Any) -> Callable[..., torch.Tensor]:
    """latents (B, C, h, w) as the UNet makes them -> frames (B, 3, H, W) uint8, still on the
    device. Compiled, the scaling and the conversion to 8 bits fuse into the decoder's first and
    last kernels instead of running as kernels of their own over the full-size image."""
    scale = vae.config.scaling_factor
    # Read once: diffusers' ModelMixin.dtype walks every submodule (about a quarter of a
    # millisecond a frame where this runs eager). A VAE that overflows in fp16 (SDXL's,
    # force_upcast) was kept in fp32 at load.
    dtype = vae.dtype

    def call(latents: torch.Tensor) -> torch.Tensor:
        image = vae.decode(latents.to(dtype) / scale, return_dict=False)[0]  # in [-1, 1]
        # contiguous: channels_last decoders hand back NHWC strides; the JPEG encoder wants CHW.
        frames: torch.Tensor = ((image.float() + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8)
        return frames.contiguous()

    return call


def encoder_call(vae: Any, dtype: torch.dtype) -> Callable[..., torch.Tensor]:
    """img2img's init image (B, 3, H, W) uint8 on the device -> latents (B, C, h, w) in the
    UNet's scale and `dtype`. The tiny autoencoder's encoder gives latents; a full one's gives a
    distribution, whose mode is deterministic (the stock pipelines sample it)."""
    scale = vae.config.scaling_factor
    vae_dtype = vae.dtype  # read once, as in decoder_call

    def call(pixels: torch.Tensor) -> torch.Tensor:
        encoded = vae.encode(pixels.to(vae_dtype) / 127.5 - 1.0, return_dict=False)[0]
        latents = encoded if isinstance(encoded, torch.Tensor) else encoded.mode()
        out: torch.Tensor = (latents * scale).to(dtype)
        return out

    return call


def resolve_mode(requested: str, device: torch.device) -> str:
    """--compile auto: CUDA graphs on CUDA; eager on CPU, where compiling the tiny model's
    buckets took about 4 minutes of a cold start here for 1.3-1.7x per frame: a bad trade for
    the two-command quick start (docs/performance.md). `--compile compile` opts in."""
    if requested == "auto":
        return "cuda-graphs" if device.type == "cuda" else "eager"
    if requested == "cuda-graphs" and device.type != "cuda":
        raise ModelLoadError("--compile cuda-graphs needs a CUDA device")
    return requested
