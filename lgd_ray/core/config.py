"""Run configuration: dataclasses with the embedded default, loaded from YAML, `key=value` overrides.

The defaults ARE the demo: LGD on the embedded digits with the shipped tiny generator, sized for a
2-core laptop. A job YAML only lists what it changes. Every output folder keeps the resolved config
and its hash; the hash leaves out the keys that only say where the work runs (`ray.samplers`, ...),
because the output is proven independent of them.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


@dataclass
class DataConfig:
    name: str = "digits"  # digits | imagefolder | parquet
    root: str | None = None  # folder (imagefolder) or file/folder (parquet); unused for digits
    classes: Any = None  # preset ("imagenette", "imagewoof", "imagenet1k") or list of class ids; None = all (a folder's, sorted)
    image_size: int = 8  # resolution the students train and score at
    train_split: str = "train"
    val_split: str = "val"  # the test split: read once, by the final protocol (evaluate, the demo's table)
    # of each class of train_split, seeded, held out of every training: the selection split that θ_i's
    # accuracy, ASHA, best.yaml and every calibration read (core/data.py PARTS)
    select_fraction: float = 0.1
    # or a split of its own (a folder `root/<select_split>/`, a Parquet sub-directory), read whole as the
    # selection split, with train_split then used whole: for sets whose test split is a shift from train
    # (the photo regions' disjoint parts), so the selection split is as far from train as the test split
    select_split: str | None = None


# Off by measurement (README "Memory of a guided step"): for DiT-XL/2 + sd-vae-ft-mse in bf16 it cuts
# the guided step's peak bytes per image by 1.38x (the rule asks > 2x), for 31% more decoder time.
VAE_CHECKPOINTING_DEFAULT = False


@dataclass
class GeneratorConfig:
    # "builtin:digits" = the tiny pixel-space model shipped in the package; else a local diffusers
    # directory or a hub id (e.g. facebook/DiT-XL-2-256), loaded offline.
    path: str = "builtin:digits"
    # ddim | ddpm | auto: the sampler the generator folder names (lgd_ray.json "sampler"; core/generator.py)
    scheduler: str = "auto"
    num_steps: int = 25
    cfg_scale: float = 1.0  # 1.0 = no classifier-free guidance (one forward instead of two)
    class_map: list[int] | None = None  # student label -> generator class; None = match class ids
    dtype: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16
    # images (slots x candidates) per denoiser batch, or auto: on a GPU the largest whole-slot batch that
    # fits, from a probe step (core/batching.py); 64 on CPU
    batch_size: Any = 64
    vae_checkpointing: bool = VAE_CHECKPOINTING_DEFAULT  # recompute the VAE decoder in a guided step's backward
    # auto | dit | diffusers (core/generator.py): dit = DDPM with DiT's learned-range variance and CFG on
    # ε channels :3 as DiT, IGD and Minimax sample; auto = dit for DiT checkpoints, diffusers otherwise
    convention: str = "auto"
    # A small decoder for guidance only (issue "FLOPs"): a diffusers AutoencoderTiny folder (TAESD's
    # layout, e.g. a download of madebyollin/taesd) that decodes x̂0 inside guided steps, while the
    # full VAE still decodes every stored image. Off: its gradient's fidelity to the full decoder's
    # has not been measured with real weights (README "FLOPs per kept image").
    guidance_decoder: str | None = None
    # Pixel-space models: clip each step's x̂0 to the image range [-1, 1] and step with the ε that gives
    # that x̂0 (core/sampler.py), so a trajectory that runs off the range is pulled back instead of
    # ending as saturated noise, and the guidance term stays in ε and x̂0 alike (clipping x̂0 alone, as
    # diffusers' clip_sample does, flips guidance's sign). Latent models: refused (latents are unbounded).
    clip_x0: bool = False


@dataclass
class TrainingConfig:
    """What every trained classifier has: the per-stage student θ_i, the reference θ*, the evaluator.

    `batch_size` is the global batch: with `ray.train_workers` = W > 1 (the student and the
    reference train with DDP) each worker takes batch_size // W images of its own shard per step,
    so the number of workers changes where a step runs, not how large it is.
    """

    arch: str = "convnet2-w32"
    epochs: int = 60
    batch_size: int = 64
    lr: float = 0.01
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    schedule: str = "multistep"
    augment: str = "shift"


@dataclass
class StudentConfig(TrainingConfig):
    warm_start: bool = True  # θ_i starts from θ_{i-1} (the slides) or from scratch


@dataclass
class ReferenceConfig(TrainingConfig):
    epochs: int = 30
    path: str | None = None  # safetensors from `lgd-ray train-reference`; None = train one in the run


@dataclass
class DistillConfig:
    stages: int = 4  # guided stages after the seed increment
    ipc_seed: int = 2  # images per class in the seed increment I_0
    ipc_per_stage: int = 2
    lam: float = 0.1  # λ, learnability guidance strength (relative to ‖ε̂‖, see guidance.py)
    omega: float = 0.5  # ω, weight of the reference loss in S
    k: int = 3  # κ, candidates per slot; the highest S is kept
    gamma: float = 0.0  # γ, deviation guidance against the class memory
    window: list[int] = field(default_factory=lambda: [5, 20])  # guided step indices, 0 = cleanest
    memory_size: int = 64
    seed_source: str | None = None  # Parquet file/folder or image folder for I_0; None = unguided samples
    chunk_size: int = 8  # work items (slots) per chunk = per Parquet part; fixes batch composition
    # Levers (README "What guidance adds"): each off by default, i.e. LGD as the paper states it.
    # grad_space: xt = ∇_{x_t}S through the denoiser (exact); x0 = ∇_{x̂0}S with ε̂ held fixed, which
    #   skips the denoiser's backward (about a fifth of a DiT-XL/2 guided step's FLOPs)
    grad_space: str = "xt"
    views: int = 1  # S averaged over this many randomly shifted views of the decoded image (EOT)
    grad_blur: float = 0.0  # σ in latent pixels of a Gaussian low-pass of ∇S; 0 = none
    # validity gate: a candidate to which θ* gives p(label) < gate cannot be kept. On by default: on the
    # digits it lifted selection-split accuracy and kept θ*'s fidelity (README "What guidance adds")
    gate: float = 0.5
    # candidate pruning: at step index prune_at (0 = cleanest; -1 = off) each slot keeps its prune_keep
    # candidates of highest S on x̂0 and only they finish; rank selection on the final images decides
    prune_at: int = -1
    prune_keep: int = 1
    # unguided candidates: the first this many of each slot's κ candidates are sampled without guidance,
    # so rank selection always has images the generator alone made (on the photo regions guidance could
    # turn all κ of a slot into noise θ* rejects, and the gate's fallback then kept one of them); 0 = off
    unguided_candidates: int = 0
    # time travel (Universal Guidance's self-recurrence): each guided step is redone this many times, each
    # from its own result re-noised back to t with fresh seeded noise, so the denoiser can pull back toward
    # its data what the gradient moved off it; each repeat costs one more guided step; 0 = off
    time_travel: int = 0


@dataclass
class EvalConfig(TrainingConfig):
    """The evaluation protocol: train a fresh net per seed on the set only, test on real val.

    protocol `hard` trains on the set's labels (the field's protocol on ImageNet subsets); `soft` is
    RDED's (ImageNet-1K): a frozen `teacher` relabels every augmented batch and the net minimises
    KL(teacher/T ‖ net/T)·T² at T = `temperature` (20, RDED's, with CutMix); the labels are unused.
    """

    epochs: int | None = 300  # None = the field's schedule by IPC (2000/1500/1000)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    cutmix: float = 0.0
    eval_every: int = 25
    protocol: str = "hard"  # hard | soft
    # soft only: the folder (or its model.safetensors) of `lgd-ray train-reference`, or timm:<name>
    # for a timm model with pretrained ImageNet-1K weights (e.g. timm:resnet18.tv_in1k)
    teacher: str | None = None
    temperature: float = 20.0  # soft only: T


@dataclass
class RayConfig:
    samplers: int = 2  # sampler actors
    # a sampler on CPU runs max(1, int(cpus)) torch threads; half a CPU each lets 2 samplers and a Train
    # worker fit 2 CPUs, so the actors live across stages instead of reloading at each (they idle while
    # the student trains, and no student trains while they sample)
    cpus_per_sampler: float = 0.5
    gpus_per_sampler: float = 0.0  # fractional allowed; 0 on CPU
    train_workers: int = 1  # Ray Train workers per stage (DDP)
    gpus_per_train_worker: float = 0.0
    # CPUs each Train worker holds: one trains, the others decode batches in parallel (DataLoader workers)
    cpus_per_train_worker: int = 1
    # each evaluation, redundancy and cartography task (one classifier trained from scratch); auto = 1
    # when the Train workers use GPUs (the job says it runs on GPUs), else 0
    gpus_per_task: Any = "auto"
    # Failures (README "Failures"). A lost sampler actor is restarted by Ray up to `sampler_restarts`
    # times and its chunks in flight are retried on it; an actor with no finished chunk for
    # `chunk_timeout_s` is taken as hung, killed and restarted the same way.
    sampler_restarts: int = 3
    chunk_timeout_s: float = 1800.0
    # A lost Ray Train worker: the worker group restarts up to `train_failures` times
    # (FailureConfig) and resumes from the last checkpoint, written every `checkpoint_every` epochs.
    train_failures: int = 3
    checkpoint_every: int = 5

    def task_gpus(self) -> float:
        """GPUs one evaluation-like task asks Ray for (`gpus_per_task`, auto resolved)."""
        if self.gpus_per_task == "auto":
            return 1.0 if self.gpus_per_train_worker > 0 else 0.0
        return float(self.gpus_per_task)


@dataclass
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Hash of everything that determines the output (not where it runs)."""
        d = self.to_dict()
        for key in EXECUTION_KEYS:
            section, name = key.split(".")
            d[section].pop(name)
        if self.generator.convention == "auto":  # the default: outputs made before this key keep their hash
            d["generator"].pop("convention")
        if self.generator.guidance_decoder is None:
            d["generator"].pop("guidance_decoder")
        if self.data.select_split is None:  # the carve from train: outputs made before this key keep their hash
            d["data"].pop("select_split")
        if not self.generator.clip_x0:
            d["generator"].pop("clip_x0")
        for name, off in LEVERS_OFF.items():  # off: outputs made before the levers keep their hash
            if d["distill"][name] == off:
                d["distill"].pop(name)
        if self.eval.protocol == "hard":  # unused then; and outputs made before these keys keep their hash
            for name in SOFT_LABEL_KEYS:
                d["eval"].pop(name)
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Keys that only place the work; the output is independent of them (tests prove it for samplers).
# generator.vae_checkpointing recomputes the same ops on the same inputs (a test checks the outputs).
EXECUTION_KEYS = ("ray.samplers", "ray.cpus_per_sampler", "ray.gpus_per_sampler", "ray.gpus_per_task",
                  "ray.cpus_per_train_worker", "ray.sampler_restarts", "ray.chunk_timeout_s",
                  "ray.train_failures", "ray.checkpoint_every",  # retries and checkpoints change no byte
                  "generator.vae_checkpointing")
SOFT_LABEL_KEYS = ("protocol", "teacher", "temperature")  # of the eval section
LEVERS_OFF = {"grad_space": "xt", "views": 1, "grad_blur": 0.0, "gate": 0.0, "prune_at": -1, "prune_keep": 1,
              "unguided_candidates": 0, "time_travel": 0}
GRAD_SPACES = ("xt", "x0")
SCHEDULERS = ("auto", "ddim", "ddpm")
PROTOCOLS = ("hard", "soft")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("multistep", "cosine", "constant")
AUGMENTS = ("none", "shift", "imagenet")
TIMM_PREFIX = "timm:"  # eval.teacher=timm:<name>: a timm model with pretrained ImageNet-1K weights


def _fields(obj) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


def all_keys(cfg: Config | None = None) -> list[str]:
    cfg = cfg or Config()
    keys = []
    for name, f in _fields(cfg).items():
        value = getattr(cfg, name)
        if dataclasses.is_dataclass(value):
            keys += [f"{name}.{sub}" for sub in _fields(value)]
        else:
            keys.append(name)
    return keys


def _unknown(key: str) -> UserError:
    close = difflib.get_close_matches(key, all_keys(), n=1)
    fix = f"did you mean {close[0]!r}?" if close else "see `lgd-ray distill --help` for the keys"
    return UserError(key, "unknown config key", fix)


def set_key(cfg: Config, key: str, value: Any) -> None:
    """Set a dotted key, checking it exists and coercing the value to the field's type."""
    parts = key.split(".")
    target = cfg
    for p in parts[:-1]:
        if p not in _fields(target) or not dataclasses.is_dataclass(getattr(target, p)):
            raise _unknown(key)
        target = getattr(target, p)
    name = parts[-1]
    if name not in _fields(target) or dataclasses.is_dataclass(getattr(target, name)):
        raise _unknown(key)
    setattr(target, name, _coerce(key, getattr(target, name), _fields(target)[name].type, value))


def _coerce(key: str, current: Any, annotation: str, value: Any) -> Any:
    ann = str(annotation)
    if value is None:
        if "None" in ann or ann == "Any":
            return None
        raise UserError(key, "must not be empty", "give a value")
    if ann == "bool" or isinstance(current, bool):
        if isinstance(value, bool):
            return value
        raise UserError(key, f"expected true or false, got {value!r}", "write true or false")
    if ann.startswith("int") or (isinstance(current, int) and "float" not in ann and ann != "Any"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise UserError(key, f"expected an integer, got {value!r}", "give a whole number")
        return int(value)
    if ann.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(key, f"expected a number, got {value!r}", "give a number")
        return float(value)
    if ann.startswith("list[int]"):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise UserError(key, f"expected a list of integers, got {value!r}", "write e.g. [5, 20]")
        return list(value)
    if ann.startswith("str"):
        if not isinstance(value, str):
            value = str(value)
        return value
    return value


def _apply(cfg: Config, tree: dict) -> None:
    for k, v in tree.items():
        if isinstance(v, dict) and dataclasses.is_dataclass(getattr(cfg, str(k), None)):
            for sub, value in v.items():
                set_key(cfg, f"{k}.{sub}", value)
        else:
            set_key(cfg, str(k), v)


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise UserError(text, "an override must look like key=value", "e.g. distill.lam=0.2")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def read_yaml(path: str | Path, field: str, example: str) -> Any:
    """A YAML file's contents; a missing or malformed file is a one-line UserError naming `field`."""
    p = Path(path)
    if not p.is_file():
        raise UserError(field, f"file not found: {p}", f"give the path of a YAML file, e.g. {example}")
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise UserError(field, f"{p} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})",
                        "save the file as UTF-8") from None
    except yaml.YAMLError as e:
        raise UserError(field, f"{p} is not valid YAML ({str(e).splitlines()[0]})", "fix the file") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (if any), then `key=value` overrides; validated."""
    cfg = Config()
    if path is not None:
        tree = read_yaml(path, "config", "jobs/demo.yaml")
        if not isinstance(tree, dict):
            raise UserError("config", f"{path} must be a mapping of keys", "see jobs/demo.yaml")
        _apply(cfg, tree)
    for text in overrides:
        set_key(cfg, *parse_override(text))
    validate(cfg)
    return cfg


def from_dict(tree: dict) -> Config:
    cfg = Config()
    _apply(cfg, tree)
    validate(cfg)
    return cfg


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def validate(cfg: Config) -> None:
    """Range checks that need no files; checks against data and models happen where those load."""
    d, g = cfg.distill, cfg.generator
    for key, v in (("distill.lam", d.lam), ("distill.omega", d.omega), ("distill.gamma", d.gamma)):
        if v < 0:
            raise UserError(key, f"must be >= 0, got {v}", "use a non-negative value")
    if d.k < 1:
        raise UserError("distill.k", f"κ must be >= 1, got {d.k}", "use 1 for no rank selection")
    if d.stages < 1:
        raise UserError("distill.stages", f"must be >= 1, got {d.stages}", "use at least one guided stage")
    for key in ("distill.ipc_seed", "distill.ipc_per_stage", "distill.chunk_size", "distill.memory_size",
                "generator.num_steps", "ray.samplers", "ray.train_workers", "ray.cpus_per_train_worker"):
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) < 1:
            raise UserError(key, "must be >= 1", "use a positive integer")
    if len(d.window) != 2 or not (0 <= d.window[0] <= d.window[1] < g.num_steps):
        raise UserError(
            "distill.window",
            f"{d.window} is outside the step range 0..{g.num_steps - 1}",
            f"give [lo, hi] with 0 <= lo <= hi <= {g.num_steps - 1} (0 = cleanest step)",
        )
    _validate_levers(d, g.num_steps)
    bs = g.batch_size
    if bs != "auto" and (not isinstance(bs, int) or isinstance(bs, bool) or bs < 1):
        raise UserError("generator.batch_size", f"expected a positive integer or auto, got {g.batch_size!r}",
                        "give e.g. 24 (slots x κ), or auto for the largest batch that fits the GPU")
    if g.scheduler not in SCHEDULERS:
        raise UserError("generator.scheduler", f"unknown scheduler {g.scheduler!r}", "choose ddim, ddpm or auto")
    if g.dtype not in ("auto", "fp32", "bf16"):
        raise UserError("generator.dtype", f"unknown dtype {g.dtype!r}", "choose auto, fp32 or bf16")
    if g.convention not in ("auto", "dit", "diffusers"):  # generator.CONVENTIONS (not imported: no diffusers here)
        raise UserError("generator.convention", f"unknown convention {g.convention!r}", "choose auto, dit or diffusers")
    if cfg.data.name not in ("digits", "imagefolder", "parquet"):
        raise UserError("data.name", f"unknown data source {cfg.data.name!r}", "choose digits, imagefolder or parquet")
    if cfg.data.name != "digits" and not cfg.data.root:
        raise UserError("data.root", f"data.name={cfg.data.name} needs a root", "set data.root=PATH")
    size = cfg.data.image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UserError("data.image_size", f"must be a positive integer (pixels), got {size!r}",
                        "use e.g. 8 for the digits, or the side length the students train at, e.g. 32 or 224")
    if not (math.isfinite(g.cfg_scale) and g.cfg_scale >= 1):
        raise UserError("generator.cfg_scale", f"must be >= 1, got {g.cfg_scale}",
                        "use 1 for no classifier-free guidance or more, e.g. 4 as DiT samples: below 1 the samples "
                        "drift to the unconditional model and stop matching their class")
    if not 0 < cfg.data.select_fraction < 1:
        raise UserError("data.select_fraction", f"must be in (0, 1), got {cfg.data.select_fraction}",
                        "use e.g. 0.1: a tenth of each class of the train split is held out for selection")
    sel = cfg.data.select_split
    if sel is not None and (not isinstance(sel, str) or not sel or sel in (cfg.data.train_split, cfg.data.val_split)):
        raise UserError("data.select_split", f"must name a split other than train ({cfg.data.train_split!r}) and "
                        f"test ({cfg.data.val_split!r}), got {sel!r}",
                        "use the folder of held-out selection images, e.g. select (lgd-ray photos writes one), "
                        "or leave it unset to carve data.select_fraction from train")
    if not cfg.eval.seeds:
        raise UserError("eval.seeds", "no seeds", "give at least one, e.g. [0, 1, 2]")
    _validate_protocol(cfg.eval)
    from .students import check_arch

    for name in ("student", "reference", "eval"):
        sec = getattr(cfg, name)
        check_arch(sec.arch, f"{name}.arch")
        check_training(name, epochs=sec.epochs or 1, batch_size=sec.batch_size, lr=sec.lr, optimizer=sec.optimizer,
                       weight_decay=sec.weight_decay, schedule=sec.schedule, augment=sec.augment,
                       cutmix=getattr(sec, "cutmix", 0.0))
    for name in ("student", "reference"):  # the DDP sections: the batch is split over the workers
        bs, workers = getattr(cfg, name).batch_size, cfg.ray.train_workers
        if bs < workers:
            raise UserError(f"{name}.batch_size", f"{bs} is less than ray.train_workers={workers}",
                            f"the batch is global, split over the workers: use at least {workers}")
    t = cfg.ray.gpus_per_task
    if t != "auto" and (isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0):
        raise UserError("ray.gpus_per_task", f"expected a number >= 0 or auto, got {t!r}",
                        "give e.g. 1 (one GPU per evaluation task), 0 on CPU, or auto")
    for name in ("sampler_restarts", "train_failures"):
        v = getattr(cfg.ray, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < -1:
            raise UserError(f"ray.{name}", f"expected an integer >= 0 (or -1: no limit), got {v!r}", "use e.g. 3")
    if not isinstance(cfg.ray.checkpoint_every, int) or cfg.ray.checkpoint_every < 1:
        raise UserError("ray.checkpoint_every", f"expected an integer >= 1 (epochs), got {cfg.ray.checkpoint_every!r}",
                        "use e.g. 5")
    if not cfg.ray.chunk_timeout_s > 0:
        raise UserError("ray.chunk_timeout_s", f"expected seconds > 0, got {cfg.ray.chunk_timeout_s!r}",
                        "use e.g. 1800 (it must cover a chunk plus loading the generator on a restarted actor)")
    if cfg.ray.cpus_per_sampler < 0 or cfg.ray.gpus_per_sampler < 0:
        raise UserError("ray.gpus_per_sampler", "resources must be >= 0", "use 0 on CPU")


def check_training(section: str, *, epochs: int, batch_size: int, lr: float, optimizer: str, weight_decay: float,
                   schedule: str, augment: str, cutmix: float) -> None:
    """The one validator of a training run's settings (the student, reference and eval sections, and
    core.train.TrainSettings): a UserError naming `section.key` (e.g. "eval.optimizer")."""
    for key, value, allowed in (("optimizer", optimizer, OPTIMIZERS), ("schedule", schedule, SCHEDULES),
                                ("augment", augment, AUGMENTS)):
        if value not in allowed:
            raise UserError(f"{section}.{key}", f"unknown {key} {value!r}", "choose one of: " + ", ".join(allowed))
    for key, value in (("epochs", epochs), ("batch_size", batch_size)):
        if value < 1:
            raise UserError(f"{section}.{key}", f"must be >= 1, got {value}", "use a positive integer")
    if lr <= 0 or weight_decay < 0 or not 0 <= cutmix <= 1:
        raise UserError(section, "need lr > 0, weight_decay >= 0 and 0 <= cutmix <= 1",
                        f"got lr={lr}, weight_decay={weight_decay}, cutmix={cutmix}")


def _validate_levers(d: DistillConfig, num_steps: int) -> None:
    if d.grad_space not in GRAD_SPACES:
        raise UserError("distill.grad_space", f"unknown gradient space {d.grad_space!r}",
                        "choose xt (exact, through the denoiser) or x0 (w.r.t. x̂0, no denoiser backward)")
    if d.views < 1:
        raise UserError("distill.views", f"must be >= 1, got {d.views}", "use 1 for the image alone, e.g. 4 for EOT")
    if not d.grad_blur >= 0:
        raise UserError("distill.grad_blur", f"must be >= 0, got {d.grad_blur}", "use 0 for no blur, e.g. 1.0 (pixels)")
    if not 0 <= d.gate < 1:
        raise UserError("distill.gate", f"must be in [0, 1), got {d.gate}",
                        "use 0 for no gate, e.g. 0.5: θ* must give the label at least that probability")
    if not -1 <= d.prune_at < num_steps:
        raise UserError("distill.prune_at", f"{d.prune_at} is outside the step range -1..{num_steps - 1}",
                        "use -1 for no pruning, or a step index (0 = cleanest), e.g. 12")
    if d.prune_at >= 0 and not 1 <= d.prune_keep < d.k:
        raise UserError("distill.prune_keep", f"must be in 1..{d.k - 1} (κ = {d.k}) when pruning, got {d.prune_keep}",
                        "keep fewer candidates than κ, e.g. 1, or set distill.prune_at=-1")
    if not 0 <= d.unguided_candidates < d.k:
        raise UserError("distill.unguided_candidates", f"must be in 0..{d.k - 1} (κ = {d.k}), got {d.unguided_candidates}",
                        "leave at least one candidate guided, e.g. 1 (all κ unguided is rank selection: distill.lam=0)")

    if not 0 <= d.time_travel <= 10:
        raise UserError("distill.time_travel", f"must be in 0..10, got {d.time_travel}",
                        "use 0 for none, e.g. 1: each guided step is taken twice")


def _validate_protocol(e: EvalConfig) -> None:
    if e.protocol not in PROTOCOLS:
        raise UserError("eval.protocol", f"unknown protocol {e.protocol!r}",
                        "choose hard (the set's labels) or soft (a teacher relabels every batch)")
    if not isinstance(e.temperature, (int, float)) or not e.temperature > 0:
        raise UserError("eval.temperature", f"must be > 0, got {e.temperature}", "use e.g. 20 (RDED's)")
    if e.protocol == "soft" and not e.teacher:
        raise UserError("eval.teacher", "eval.protocol=soft needs a teacher",
                        "set eval.teacher=DIR written by `lgd-ray train-reference`, or timm:<name>, e.g. timm:resnet18")
    if e.teacher and e.teacher.startswith(TIMM_PREFIX) and not e.teacher[len(TIMM_PREFIX):].strip():
        raise UserError("eval.teacher", "timm: without a model name", "write e.g. timm:resnet18")
