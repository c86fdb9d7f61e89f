"""Class lists: ImageNet subsets by WordNet id, the 1000 ImageNet wnids, and the student-label →
generator-class (or teacher-output) map. A wnid's generator class is its position among the sorted
1000 wnids, as is its output index in an ImageNet-1K classifier."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from lgd_ray.core.errors import UserError

# ImageNet subsets, WordNet ids in label order (METHOD.md).
IMAGENETTE: list[str] = [
    "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
    "n03394916", "n03417042", "n03425413", "n03445777", "n03888257",
]
IMAGEWOOF: list[str] = [
    "n02096294", "n02093754", "n02111889", "n02088364", "n02086240",
    "n02089973", "n02087394", "n02115641", "n02099601", "n02105641",
]
DIGITS: list[str] = [str(d) for d in range(10)]
PRESETS = ("imagenette", "imagewoof", "imagenet1k", "digits")


@functools.lru_cache(maxsize=1)
def _imagenet_wnids() -> tuple[str, ...]:
    from timm.data import ImageNetInfo

    names = list(ImageNetInfo().label_names())
    if len(names) != 1000 or names != sorted(names) or len(set(names)) != 1000:
        raise RuntimeError("timm's ImageNet-1K class list is not 1000 sorted unique wnids")
    return tuple(names)


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1K wnids sorted; a wnid's position is its generator class index."""
    return list(_imagenet_wnids())


def resolve_classes(spec: str | Sequence[str] | None, available: Sequence[str] | None = None) -> list[str]:
    """Turn a preset name or explicit list into class ids, checked against `available`.

    None means every available class. Entries are converted to str so YAML digit lists
    like [0, 1] work.
    """
    if spec is None:
        if available is None:
            raise UserError("data.classes", "no classes given", "set data.classes to a preset or a list")
        classes = [str(c) for c in available]
    elif isinstance(spec, str):
        name = spec.strip().lower()
        presets = {"imagenette": IMAGENETTE, "imagewoof": IMAGEWOOF, "digits": DIGITS}
        if name == "imagenet1k":
            classes = imagenet_wnids()
        elif name in presets:
            classes = list(presets[name])
        else:
            raise UserError("data.classes", f"unknown class preset {spec!r}",
                            f"use one of {', '.join(PRESETS)} or a list of class ids")
    else:
        classes = [str(c) for c in spec]
        if not classes:
            raise UserError("data.classes", "the class list is empty", "list at least two class ids")
        dup = sorted({c for c in classes if classes.count(c) > 1})
        if dup:
            raise UserError("data.classes", f"class {dup[0]!r} is listed twice", "list each class once")
    if available is not None:
        have = set(str(c) for c in available)
        for c in classes:
            if c not in have:
                raise UserError("data.classes", f"class {c!r} is not among the {len(have)} available classes",
                                "fix the id or the data source")
    return classes


def class_index(class_ids: Sequence[str], available: Sequence[str], field: str, owner: str, fix: str) -> list[int]:
    """Position of each class id in another model's class list (`owner`: "the generator's", ...)."""
    pos = {str(c): i for i, c in enumerate(available)}
    out = []
    for c in class_ids:
        if str(c) not in pos:
            raise UserError(field, f"class {c!r} is not one of {owner} {len(pos)} classes", fix)
        out.append(pos[str(c)])
    return out


def is_imagenet_class_list(class_ids: Sequence[str]) -> bool:
    """A 1000-class list of WordNet ids (a DiT or another ImageNet-1K model): classes must be named by wnid."""
    return len(class_ids) == 1000 and all(re.fullmatch(r"n\d{8}", str(c)) for c in class_ids)


def generator_class_index(class_ids: Sequence[str], generator_class_ids: Sequence[str],
                          field: str = "generator.class_map") -> list[int]:
    """Position of each class id in the generator's class list (its conditioning label). Only here, where
    an ImageNet generator meets classes not named by wnid, does the error ask for wnids."""
    known = {str(c) for c in generator_class_ids}
    missing = next((str(c) for c in class_ids if str(c) not in known), None)
    if missing is not None and is_imagenet_class_list(generator_class_ids):
        raise UserError(field, f"class {missing!r} is not an ImageNet wnid, and the generator is conditioned on "
                        "ImageNet-1K's 1000 classes by wnid",
                        "name the class folders by wnid (e.g. n01440764), list data.classes as wnids, or give "
                        "generator.class_map (one generator class index per class, in label order)")
    return class_index(class_ids, generator_class_ids, field, "the generator's",
                       "fix the class id or use a generator trained on it")
