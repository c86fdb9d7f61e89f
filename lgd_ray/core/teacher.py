"""The soft-label protocol's teacher: a frozen classifier that scores the run's classes on [0, 1] images.

`eval.teacher` names one of two sources:
- a checkpoint of `lgd-ray train-reference` (its folder, or the model.safetensors in it): the
  metrics.json beside the weights names the architecture, the classes in output order and the size;
- `timm:<name>`: a timm model with pretrained ImageNet-1K weights, outputs in the order of the
  sorted 1000 wnids (e.g. `timm:resnet18.tv_in1k`, torchvision's BatchNorm ResNet-18, RDED's teacher).

A teacher of more classes than the run's (ImageNet-1K for ImageNette) is restricted to the run's
classes: its logits are taken at their positions, in the run's label order, so the softmax at T is
over the run's classes only. Reading the files is the caller's business (local or s3://); this
module builds the module from their contents.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from lgd_ray.core.classes import class_index, imagenet_wnids
from lgd_ray.core.config import TIMM_PREFIX
from lgd_ray.core.errors import UserError
from lgd_ray.core.students import Normalize, build_student

FIELD = "eval.teacher"
WEIGHTS, META = "model.safetensors", "metrics.json"  # what `lgd-ray train-reference --out DIR` writes


class Teacher(nn.Module):
    """A classifier seen through the run: input resized to the size it was trained at, logits
    restricted (and reordered) to the run's classes."""

    def __init__(self, net: nn.Module, index: Sequence[int], image_size: int | None):
        super().__init__()
        self.net, self.image_size = net, image_size
        self.register_buffer("index", torch.as_tensor(list(index), dtype=torch.int64))

    @property
    def num_classes(self) -> int:
        return len(self.index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_size and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return self.net(x).index_select(1, self.index)


def parse_teacher(spec: str) -> tuple[str, str]:
    """("timm", model name) for `timm:<name>`, else ("checkpoint", path of a train-reference output)."""
    if spec.startswith(TIMM_PREFIX):
        name = spec[len(TIMM_PREFIX):].strip()
        if not name:
            raise UserError(FIELD, "timm: without a model name", "write e.g. timm:resnet18")
        return "timm", name
    return "checkpoint", spec


def checkpoint_files(path: str) -> tuple[str, str]:
    """(weights, metadata) paths of a train-reference output given as its folder or its weights file."""
    path = path.rstrip("/")
    if path.endswith(".safetensors"):
        folder = path.rsplit("/", 1)[0] if "/" in path else "."
        return path, f"{folder}/{META}"
    return f"{path}/{WEIGHTS}", f"{path}/{META}"


def teacher_from_checkpoint(state: dict[str, torch.Tensor], meta: dict, class_ids: Sequence[str], *,
                            image_size: int, in_channels: int, source: str = "the teacher") -> Teacher:
    """A train-reference checkpoint as the teacher of a run of `class_ids` at `image_size` px.
    Outputs written before metrics.json held the size are taken to be at the run's size."""
    arch, classes = meta.get("arch"), meta.get("classes")
    if not arch or not classes:
        raise UserError(FIELD, f"{source}: {META} names no arch and classes",
                        "give a folder written by `lgd-ray train-reference`")
    size = int(meta.get("image_size") or image_size)
    mean = state.get("normalize.mean")
    channels = int(meta.get("in_channels") or (mean.shape[1] if mean is not None else in_channels))
    if channels != in_channels:
        raise UserError(FIELD, f"{source} takes {channels}-channel images, the run's have {in_channels}",
                        "use a teacher trained on this data")
    net = build_student(arch, len(classes), size, channels, field=FIELD)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError:
        raise UserError(FIELD, f"{source}: the weights are not a {arch} of {len(classes)} classes at {size} px",
                        f"keep model.safetensors and {META} of one `lgd-ray train-reference` run together") from None
    index = class_index(class_ids, classes, FIELD, "the teacher's", "use a teacher trained on the run's classes")
    return Teacher(net, index, size).eval().requires_grad_(False)


def teacher_from_timm(name: str, class_ids: Sequence[str], *, in_channels: int) -> Teacher:
    """timm's `name` with its pretrained ImageNet-1K weights (from the Hugging Face cache, or
    downloaded), normalised as it was trained, fed at its pretraining resolution."""
    if in_channels != 3:
        raise UserError(FIELD, f"timm:{name} is an ImageNet (RGB) classifier, the run's images have {in_channels} channel(s)",
                        "use a teacher from `lgd-ray train-reference` on this data")
    import timm

    try:
        net = timm.create_model(name, pretrained=True)
    except Exception as e:  # unknown name, no weights for it, no network and no cache: all one message
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(FIELD, f"cannot load timm:{name} with pretrained weights ({first})",
                        "check the name in timm.list_models(pretrained=True) and put its weights in the "
                        "Hugging Face cache (HF_HOME) of every node") from None
    if getattr(net, "num_classes", None) != 1000:
        raise UserError(FIELD, f"timm:{name} has {getattr(net, 'num_classes', '?')} outputs, not ImageNet-1K's 1000",
                        "choose an ImageNet-1K classifier, e.g. timm:resnet18.tv_in1k")
    cfg = net.pretrained_cfg
    index = class_index(class_ids, imagenet_wnids(), FIELD, "ImageNet-1K's",
                        "use ImageNet wnids as class ids (data.classes) or a teacher from `lgd-ray train-reference`")
    wrapped = nn.Sequential(Normalize(cfg["mean"], cfg["std"]), net)
    return Teacher(wrapped, index, int(cfg["input_size"][-1])).eval().requires_grad_(False)
