"""What one guided step keeps alive for its backward, in bytes per component: counted, not modelled.

The activation memory of a backward is what the forward saves for it, and its size in bytes does not
depend on the device (only on shapes and dtypes), so a CPU run gives the figures that size GPU
batches. `torch.autograd.graph.saved_tensors_hooks` sees every saved tensor; each storage is counted
once, and parameters and buffers are counted apart. Inside a checkpointed block the checkpoint's own
hooks take over, so only what checkpointing keeps (the block inputs) is counted, which is the point.

bf16: CPU autocast runs group_norm and layer_norm in bf16, CUDA autocast runs them in fp32 (its fp32
list), which matters here (every VAE and ConvNet block normalises). `cuda_autocast_policy` applies
CUDA's choice for the fp32-list ops these models call, so a CPU count under bf16 is the GPU's.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .generator import Generator
from .sampler import SampleSettings, guided_step

GUIDANCE = "guidance"  # saved outside every model: CFG mix, x̂0, decode scaling, resize, cross-entropy
# Ops on CUDA autocast's fp32 list (torch.amp docs) that the denoisers, the VAE and the students call.
CUDA_FP32_OPS = (F.group_norm, F.layer_norm, F.softmax, F.log_softmax, torch.softmax, torch.log_softmax,
                 torch.Tensor.softmax, torch.Tensor.log_softmax)


class _CudaFp32Ops(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in CUDA_FP32_OPS and torch.is_autocast_enabled("cpu"):
            def up(a):
                return a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a

            with torch.autocast("cpu", enabled=False):
                return func(*[up(a) for a in args], **{k: up(v) for k, v in kwargs.items()})
        return func(*args, **kwargs)


@contextmanager
def cuda_autocast_policy():
    """Under CPU bf16 autocast, run the norm and softmax ops in fp32 as CUDA autocast does."""
    with _CudaFp32Ops():
        yield


def _storage_key(t: torch.Tensor) -> tuple[int, int] | None:
    try:
        s = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # tensors without storage (wrapper subclasses)
        return None
    return s.data_ptr(), s.nbytes()


class SavedBytes:
    """Bytes of the distinct storages saved for backward, by the innermost labelled module."""

    def __init__(self, labels: list[tuple[str, torch.nn.Module]], exclude: list[torch.nn.Module]):
        self.labels = labels
        self.excluded = {_storage_key(t)[0] for m in exclude for t in [*m.parameters(), *m.buffers()]}
        self.seen: set[int] = set()
        self.bytes: dict[str, int] = defaultdict(int)
        self.stack: list[str] = []

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key is not None and key[0] not in self.seen and key[0] not in self.excluded:
            self.seen.add(key[0])
            self.bytes[self.stack[-1] if self.stack else GUIDANCE] += key[1]
        # Detached: a saved output that kept its grad_fn would form a cycle (node -> tensor -> node)
        # that refcounting never frees, and every counted graph would stay in memory.
        return t.detach()

    def _leave(self) -> None:  # a forward hook must return None, or it replaces the module's output
        self.stack.pop()

    @contextmanager
    def counting(self):
        with ExitStack() as stack:
            for name, module in self.labels:
                pre = module.register_forward_pre_hook(lambda m, a, name=name: self.stack.append(name))
                post = module.register_forward_hook(lambda m, a, o: self._leave())
                stack.callback(pre.remove), stack.callback(post.remove)
            stack.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t))
            yield self


def component_modules(gen: Generator, student: torch.nn.Module,
                      reference: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Labels for attribution; the VAE decoder's blocks get their own (the last up block is full size).

    `vae_decoder/in_out` is what the decoder runs outside its mid and up blocks (never checkpointed):
    post_quant_conv, conv_in, and the full-resolution norm, SiLU and conv_out.
    """
    labels = [("denoiser", gen.denoiser), ("student", student), ("reference", reference)]
    if gen.vae is not None:
        dec = gen.vae.decoder
        labels += [("vae_decoder/in_out", dec), ("vae_decoder/mid", dec.mid_block)]
        labels += [(f"vae_decoder/up{i}", block) for i, block in enumerate(dec.up_blocks)]
        if gen.vae.post_quant_conv is not None:
            labels.append(("vae_decoder/in_out", gen.vae.post_quant_conv))
    return labels


def component_of(label: str) -> str:
    return label.split("/")[0]


def parameter_bytes(gen: Generator, student: torch.nn.Module, reference: torch.nn.Module) -> dict[str, int]:
    """Resident weights and buffers (as stored: autocast casts per op, it does not shrink these)."""
    def size(m):
        return sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])

    out = {"denoiser": size(gen.denoiser), "student": size(student), "reference": size(reference)}
    if gen.vae is not None:
        out["vae"] = size(gen.vae)
    return out


def saved_bytes(gen: Generator, student: torch.nn.Module, reference: torch.nn.Module, s: SampleSettings,
                batch: int, *, cuda_policy: bool = True) -> dict[str, int]:
    """Bytes saved for the backward by one guided step of `batch` images, by label (forward only).

    The step is the sampler's own `guided_step` at the noisiest timestep, run without its backward.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *gen.latent_shape, generator=g).to(gen.device)
    num_classes = student.num_classes if hasattr(student, "num_classes") else gen.num_classes
    labels = (torch.arange(batch) % num_classes).to(gen.device)
    gen_labels = (torch.arange(batch) % gen.num_classes).to(gen.device)
    t = gen.scheduler.timesteps[0]  # the noisiest step; the bytes do not depend on t
    counter = SavedBytes(component_modules(gen, student, reference), [gen.denoiser, student, reference]
                         + ([gen.vae] if gen.vae is not None else []))
    policy = cuda_autocast_policy() if cuda_policy and s.autocast and gen.device.type == "cpu" else ExitStack()
    with policy, counter.counting():
        guided_step(gen, x, t, labels, gen_labels, s, student, reference, backward=False)
    return dict(counter.bytes)


@dataclass
class StepMemory:
    """Saved-for-backward bytes of one guided step as fixed + per_image × batch, by label."""

    fixed: dict[str, int]
    per_image: dict[str, int]
    parameters: dict[str, int]

    def by_component(self, which: str) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for label, v in getattr(self, which).items():
            out[component_of(label)] += v
        return dict(out)

    def total(self, which: str) -> int:
        return sum(getattr(self, which).values())


def step_memory(gen: Generator, student: torch.nn.Module, reference: torch.nn.Module, s: SampleSettings,
                batches: tuple[int, int] = (1, 2), *, vae_checkpointing: bool | None = None) -> StepMemory:
    """Fixed and per-image saved bytes from counts at two batch sizes (they are linear in the batch)."""
    if vae_checkpointing is not None:
        s = replace(s, vae_checkpointing=vae_checkpointing)
    b1, b2 = batches
    c1, c2 = (saved_bytes(gen, student, reference, s, b) for b in batches)
    labels = sorted(set(c1) | set(c2))
    per = {k: round((c2.get(k, 0) - c1.get(k, 0)) / (b2 - b1)) for k in labels}
    fixed = {k: c1.get(k, 0) - per[k] * b1 for k in labels}
    return StepMemory(fixed, per, parameter_bytes(gen, student, reference))
