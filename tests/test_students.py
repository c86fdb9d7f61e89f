"""lgd_ray.core.students: every arch at several sizes, instance norm only, normalization buffers."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lgd_ray.core.errors import UserError
from lgd_ray.core.students import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_student,
    list_students,
)

CASES = [(a, s, c) for a in ("convnet3", "convnet4-w16", "convnet6-w8") for s in (8, 16, 32) for c in (1, 3)]
# the ResNets are slow to build: each at both sizes and both channel counts, not every pair
CASES += [(a, s, c) for a in ("resnetap10", "resnet18") for s, c in ((8, 1), (16, 3))]


@pytest.mark.parametrize("arch,size,channels", CASES)
def test_builds_and_gives_logits(arch, size, channels):
    model = build_student(arch, num_classes=7, image_size=size, in_channels=channels)
    out = model(torch.rand(3, channels, size, size))
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == m.num_channels and m.affine for m in norms)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_resnets_use_small_stem_on_small_images_and_strided_stem_above():
    small, big = build_student("resnet18", 5, 16), build_student("resnet18", 5, 64)
    assert small.net.conv1.kernel_size == (3, 3) and small.net.conv1.stride == (1, 1)
    assert isinstance(small.net.maxpool, nn.Identity)
    assert big.net.conv1.kernel_size == (7, 7) and isinstance(big.net.maxpool, nn.MaxPool2d)
    assert big(torch.rand(2, 3, 64, 64)).shape == (2, 5)
    ap = build_student("resnetap10", 5, 64)
    assert ap.net.stem[0].kernel_size == (7, 7) and ap(torch.rand(2, 3, 64, 64)).shape == (2, 5)
    # ResNetAP downsamples by average pooling, never by a strided conv after the stem
    assert all(m.stride == (1, 1) for m in ap.net.layers.modules() if isinstance(m, nn.Conv2d))


def test_convnet_width_and_depth():
    model = build_student("convnet3-w32", 10, 8, 1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 and all(c.out_channels == 32 for c in convs)
    assert build_student("convnet6", 10, 8, 1).net.classifier.in_features == 128  # pooled to 1×1, then no more


def test_normalization_is_first_op_and_survives_state_dict():
    model = build_student("convnet3-w8", 4, 8, 3).eval()
    x = torch.rand(2, 3, 8, 8)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(model(x), model.net((x - mean) / std))
    gray = build_student("convnet3-w8", 4, 8, 1, mean=(0.2,), std=(0.4,))
    sd = gray.state_dict()
    assert torch.allclose(sd["normalize.mean"].flatten(), torch.tensor([0.2]))
    fresh = build_student("convnet3-w8", 4, 8, 1)  # default 0.5/0.5 until loaded
    assert torch.allclose(fresh.normalize.std.flatten(), torch.tensor([0.5]))
    fresh.load_state_dict(sd)
    x1 = torch.rand(2, 1, 8, 8)
    assert torch.equal(fresh.eval()(x1), gray.eval()(x1))


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, b = build_student("convnet3-w8", 4, 8, 1, seed=5), build_student("convnet3-w8", 4, 8, 1, seed=5)
    assert torch.equal(torch.rand(1), expected)
    c = build_student("convnet3-w8", 4, 8, 1, seed=6)
    wa, wb, wc = (m.net.classifier.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_unknown_arch_names_the_field():
    with pytest.raises(UserError) as e:
        build_student("vgg11", 10, 32)
    assert e.value.field == "student.arch" and "vgg11" in str(e.value) and "convnet" in str(e.value)
    with pytest.raises(UserError) as e:
        build_student("convnet0", 10, 32, field="eval.arch")
    assert e.value.field == "eval.arch"
    assert {"resnetap10", "resnet18"} <= set(list_students())


def test_resnet18_bn_is_the_batchnorm_teacher_arch():
    """The one BatchNorm net (the ImageNet teacher's), same stems as `resnet18`."""
    model = build_student("resnet18-bn", 5, 16, 3)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert model.net.conv1.kernel_size == (3, 3) and model(torch.rand(2, 3, 16, 16)).shape == (2, 5)
    assert "resnet18-bn" in list_students()
