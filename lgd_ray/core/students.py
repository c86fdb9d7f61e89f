"""Student and evaluation classifiers: a small registry of the field's instance-norm nets.

Every model takes float images in [0, 1] (N×C×H×W at its `image_size`) and normalizes them as
its first op, so callers never have to know an architecture's mean/std, and a state_dict carries
the constants with the weights. All norms are instance norm (GroupNorm(C, C), affine), as in the
dataset-distillation literature: no BatchNorm, so a 10-image batch or a DDP shard trains the same.
The one exception is `resnet18-bn`, the standard BatchNorm ResNet-18: the soft-label protocol's
ImageNet teacher, trained on real data with `lgd-ray train-reference reference.arch=resnet18-bn`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from lgd_ray.core.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SMALL_IMAGE = 32  # at or below this size ResNets use a 3×3 stride-1 stem and no maxpool


def instance_norm(num_channels: int, **kwargs) -> nn.GroupNorm:
    """GroupNorm with one group per channel = instance norm with a per-channel affine."""
    return nn.GroupNorm(num_channels, num_channels, affine=True, **kwargs)


class Normalize(nn.Module):
    """(x - mean) / std with the constants as buffers (they travel in the state_dict)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Student(nn.Module):
    """Normalization + a backbone that returns logits; remembers how it was built."""

    def __init__(self, net: nn.Module, normalize: Normalize, *, arch: str, num_classes: int,
                 image_size: int, in_channels: int):
        super().__init__()
        self.normalize, self.net = normalize, net
        self.arch, self.num_classes = arch, num_classes
        self.image_size, self.in_channels = image_size, in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


# --------------------------------------------------------------------------- ConvNet


class ConvNet(nn.Module):
    """The field's ConvNet-D: D × [conv3×3 → instance norm → ReLU → avgpool 2] → linear.

    Pooling stops once the feature map is 1×1, so any depth works at any image size.
    """

    def __init__(self, num_classes: int, image_size: int, in_channels: int, depth: int, width: int = 128):
        super().__init__()
        layers: list[nn.Module] = []
        c, s = in_channels, image_size
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1), instance_norm(width), nn.ReLU(inplace=True)]
            if s >= 2:
                layers.append(nn.AvgPool2d(2))
                s //= 2
            c = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * s * s, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


# --------------------------------------------------------------------------- ResNetAP


class BasicBlockAP(nn.Module):
    """ResNet basic block that downsamples by 2×2 average pooling instead of a strided conv."""

    def __init__(self, in_planes: int, planes: int, downsample: bool):
        super().__init__()
        self.downsample = downsample
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1, bias=False)
        self.bn1 = instance_norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = instance_norm(planes)
        self.shortcut: nn.Module = nn.Identity()
        if downsample or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, bias=False),
                nn.AvgPool2d(2) if downsample else nn.Identity(),
                instance_norm(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        if self.downsample:
            out = F.avg_pool2d(out, 2)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetAP(nn.Module):
    """ResNet with average-pool downsampling (IDC/Minimax "ResNetAP"), instance norm."""

    def __init__(self, num_classes: int, image_size: int, in_channels: int,
                 layers: Sequence[int] = (1, 1, 1, 1), widths: Sequence[int] = (64, 128, 256, 512)):
        super().__init__()
        if image_size <= SMALL_IMAGE:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                      instance_norm(widths[0]), nn.ReLU(inplace=True))
            s = image_size
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False),
                                      instance_norm(widths[0]), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, stride=2, padding=1))
            s = (image_size + 1) // 2
            s = (s + 1) // 2
        blocks: list[nn.Module] = []
        c = widths[0]
        for i, (n, w) in enumerate(zip(layers, widths)):
            for j in range(n):
                down = i > 0 and j == 0 and s >= 2  # stop pooling at 1×1 (tiny images)
                blocks.append(BasicBlockAP(c, w, down))
                s, c = (s // 2 if down else s), w
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# --------------------------------------------------------------------------- timm ResNet-18


def _timm_resnet18(num_classes: int, image_size: int, in_channels: int, batch_norm: bool = False) -> nn.Module:
    import timm

    norm = {} if batch_norm else {"norm_layer": instance_norm}
    model = timm.create_model("resnet18", pretrained=False, num_classes=num_classes, in_chans=in_channels, **norm)
    if image_size <= SMALL_IMAGE:  # CIFAR-style stem: keep resolution for tiny images
        model.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    return model


# --------------------------------------------------------------------------- registry

_CONVNET = re.compile(r"convnet(\d+)(?:-w(\d+))?")
_FIXED: dict[str, Callable[[int, int, int], nn.Module]] = {
    "resnetap10": lambda n, s, c: ResNetAP(n, s, c, layers=(1, 1, 1, 1)),
    "resnet18": _timm_resnet18,
    "resnet18-bn": functools.partial(_timm_resnet18, batch_norm=True),
}


def list_students() -> list[str]:
    """Names accepted by `build_student` (`convnet{D}` takes any depth and `-w{W}` any width)."""
    return ["convnet3", "convnet3-w32", "convnet4", "convnet6", "convnet{D}[-w{W}]", *_FIXED]


def _is_convnet(name: str) -> re.Match | None:
    m = _CONVNET.fullmatch(name)
    return m if m and int(m.group(1)) >= 1 and (m.group(2) is None or int(m.group(2)) >= 1) else None


def check_arch(arch: str, field: str = "student.arch") -> None:
    """Fail early (at config time) on an unknown name, without building anything."""
    name = arch.strip().lower()
    if not (_is_convnet(name) or name in _FIXED):
        raise UserError(field, f"unknown architecture {arch!r}", "choose one of: " + ", ".join(list_students()))


def build_student(arch: str, num_classes: int, image_size: int, in_channels: int = 3,
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None, *,
                  seed: int | None = None, field: str = "student.arch") -> Student:
    """Build a classifier taking [0, 1] images; `seed` makes the init reproducible without
    touching the global RNG; `field` names the config key in a `UserError`."""
    check_arch(arch, field)
    name = arch.strip().lower()
    m = _is_convnet(name)
    if m:
        make = functools.partial(ConvNet, num_classes, image_size, in_channels, int(m.group(1)),
                                 int(m.group(2) or 128))
    else:
        make = functools.partial(_FIXED[name], num_classes, image_size, in_channels)
    if mean is None or std is None:
        rgb = in_channels == 3
        mean = mean if mean is not None else (IMAGENET_MEAN if rgb else (0.5,) * in_channels)
        std = std if std is not None else (IMAGENET_STD if rgb else (0.5,) * in_channels)
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean/std need {in_channels} values, got {len(mean)}/{len(std)}")
    if seed is None:
        net = make()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = make()
    return Student(net, Normalize(mean, std), arch=name, num_classes=num_classes,
                   image_size=image_size, in_channels=in_channels)
