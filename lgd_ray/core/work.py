"""Work items and chunks: the unit of determinism.

Seed rule: every candidate image is seeded by (run seed, stage, label, slot, candidate) alone, so it
does not matter which actor, GPU or batch produces it. Chunks are consecutive runs of items of fixed
size set by the config, so each Parquet part has the same rows whatever the number of actors.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class WorkItem:
    stage: int
    label: int  # student label
    slot: int  # index of the image within (stage, label)


def item_seed(run_seed: int, stage: int, label: int, slot: int, candidate: int) -> int:
    """A 63-bit seed from the item's coordinates (blake2b, so neighbours are uncorrelated)."""
    key = f"lgd:{run_seed}:{stage}:{label}:{slot}:{candidate}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**63 - 1)


def derived_seed(seed: int, purpose: str) -> int:
    """A second, uncorrelated 63-bit seed of one candidate for a separate noise stream (e.g. time travel),
    so drawing from it leaves the candidate's own stream, and so every other image, unchanged."""
    key = f"lgd:{purpose}:{seed}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**63 - 1)


def stage_ipc(stage: int, ipc_seed: int, ipc_per_stage: int) -> int:
    return ipc_seed if stage == 0 else ipc_per_stage


def stage_items(stage: int, num_classes: int, ipc: int) -> list[WorkItem]:
    """Class-major list of the stage's slots."""
    return [WorkItem(stage, label, slot) for label in range(num_classes) for slot in range(ipc)]


def chunk(items: list[WorkItem], chunk_size: int) -> list[list[WorkItem]]:
    return [items[i:i + chunk_size] for i in range(0, len(items), chunk_size)]
