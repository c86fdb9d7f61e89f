"""`lgd-ray`: one entry point, one subcommand per job. User mistakes exit with code 2 and one line."""

from __future__ import annotations

import argparse
import json
import sys

from .core.errors import UserError


def split_config(a: argparse.Namespace) -> tuple[str | None, list[str]]:
    """An optional config path may be followed by overrides; a first word with '=' is an override."""
    config, overrides = getattr(a, "config", None), list(a.overrides)
    if config is not None and "=" in config:
        return None, [config, *overrides]
    return config, overrides


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. distill.lam=0.2 ray.samplers=4")


def _out_arg(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--out", required=required, help="output folder (local path, NFS, s3:// or gs://)")


def cmd_train_generator(a: argparse.Namespace) -> int:
    from pathlib import Path

    from .core.config import load_config
    from .core.data import digits_hash, load_split, materialize
    from .core.train_generator import GeneratorTrainSettings, flips_by_default
    from .engine.generator_job import run_generator_training, write_folder
    from .engine.run import init_ray, resolve_classes_only

    cfg = load_config(*split_config(a))
    _check_out(a)
    for flag, folder in (("--out", a.out), ("--last-iterate", a.last_iterate)):
        if folder is not None and Path(folder).is_dir() and any(Path(folder).iterdir()):
            raise UserError(flag, f"{folder} is not empty", "give a new or empty folder for the generator")
    class_ids = resolve_classes_only(cfg)
    data = load_split(cfg.data, cfg.data.train_split, class_ids)
    data = materialize(data, progress=True)
    flip = flips_by_default(cfg.data.name) if a.flip is None else a.flip
    s = GeneratorTrainSettings(arch=a.arch, steps=a.steps, batch_size=a.batch_size, lr=a.lr, ema=a.ema, flip=flip,
                               max_minutes=a.max_minutes, seed=cfg.seed)
    s.validate()  # before Ray starts
    meta = {"data": {"name": cfg.data.name, "root": cfg.data.root, "images": len(data),
                     "sha256": digits_hash() if cfg.data.name == "digits" else None}}
    init_ray()
    done = run_generator_training(data, s, gpus=cfg.ray.task_gpus(), progress=True, extra_meta=meta,
                                  keep_last=a.last_iterate is not None)
    write_folder(done["files"], Path(a.out))
    if a.last_iterate is not None:
        write_folder(done["last_files"], Path(a.last_iterate))
    where = done["placement"]
    print(f"generator saved to {a.out} ({done['train']['steps_done']} steps on {where['device']}, "
          f"{where['gpus']:g} GPU)")
    return 0


def cmd_photos(a: argparse.Namespace) -> int:
    from pathlib import Path

    from .apps.photos import preview, write_photo_regions

    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        raise UserError("--out", f"{out} is not empty", "give a new or empty folder")
    if a.size < 4:
        raise UserError("--size", f"must be >= 4 pixels, got {a.size}", "use e.g. 32 (the demo trains at 16)")
    if not 0 <= a.select_share < 0.75:
        raise UserError("--select-share", f"must be in [0, 0.75), got {a.select_share}",
                        "use e.g. 0.15 (the band of each region before its val part), or 0 for no select/ split")
    s = write_photo_regions(out, size=a.size, select_share=a.select_share)
    preview(out, out / "preview.png")
    splits = "train, select and val" if a.select_share else "train and val"
    select = " data.select_split=select" if a.select_share else ""
    print(f"{len(s['classes'])} classes ({', '.join(s['classes'])}) of {a.size} px crops in {out}: {splits}; "
          f"preview.png. Run: lgd-ray demo data.name=imagefolder data.root={out}{select} data.image_size=16 --out runs/photos")
    return 0


def _load(a: argparse.Namespace):
    from .core.config import load_config

    return load_config(*split_config(a))


def _check_out(a: argparse.Namespace) -> None:
    """--out must be a folder that can be made (or resumed), a reachable bucket: checked before Ray starts."""
    from .engine.store import check_output_location

    if getattr(a, "out", None):
        check_output_location(a.out)


def cmd_distill(a: argparse.Namespace) -> int:
    from .apps.cost import plan_line
    from .engine.distill import distill
    from .engine.run import init_ray, resolve_run

    cfg = _load(a)
    _check_out(a)
    run = resolve_run(cfg)  # every input checked before Ray starts or anything is written
    print(f"[lgd-ray] {plan_line(cfg, run)}", file=sys.stderr, flush=True)  # an absurd size shows before it starts
    init_ray()
    summary = distill(cfg, a.out, overwrite=a.overwrite, progress=not a.quiet)
    print(json.dumps(summary))
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .apps.demo import run_demo
    from .engine.eval_tasks import load_teacher
    from .engine.run import data_channels, init_ray, resolve_classes_only

    cfg = _load(a)
    _check_out(a)
    class_ids = resolve_classes_only(cfg)  # the data (and a soft protocol's teacher) must be there before anything starts
    teacher = load_teacher(cfg.eval, class_ids, cfg.data.image_size, data_channels(cfg))
    seeds = _seed_list(a.generation_seeds) if a.generation_seeds else None
    if a.random_draws is not None and (not seeds or a.random_draws < 1):
        raise UserError("--random-draws", f"must be >= 1, got {a.random_draws}" if seeds
                        else "random real's draws are counted in a multi-seed demo only",
                        "give e.g. --generation-seeds 0,1 --random-draws 10")
    init_ray()
    kw = {"overwrite": a.overwrite, "progress": not a.quiet, "generator_steps": a.generator_steps,
          "generator_minutes": a.generator_minutes, "teacher": teacher}
    if seeds:
        from .apps.demo import run_demo_seeds

        draws = {} if a.random_draws is None else {"random_draws": a.random_draws}
        result = run_demo_seeds(cfg, a.out, seeds, **draws, **kw)
        print(result["table"])
        print(f"\nseeds.md and results.json in {a.out}; each seed's report.md in {a.out}/seed-N")
        return 0
    result = run_demo(cfg, a.out, **kw)
    print(result["table"])
    print(f"\nreport.md, results.json and progression.png in {a.out}; previews in {a.out}/lgd/preview")
    return 0


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError("--generation-seeds", f"expected integers separated by commas, got {text!r}",
                        "write e.g. --generation-seeds 0,1") from None
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise UserError("--generation-seeds", f"needs two or more different seeds, got {text!r}",
                        "write e.g. --generation-seeds 0,1 (one seed is the plain demo)")
    return seeds


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .apps.report import results_table
    from .core.config import parse_override, set_key, validate
    from .core.data import load_part, materialize
    from .engine.eval_tasks import evaluate_sets, load_teacher
    from .engine.run import init_ray, load_run_config, resolve_run
    from .engine.store import OutputDir

    cfg = load_run_config(a.run)
    for text in a.overrides:
        set_key(cfg, *parse_override(text))
    validate(cfg)
    _check_out(a)
    run = resolve_run(cfg)
    src = OutputDir(a.run)
    stages = [s for s in src.stages_on_disk() if src.manifest(s) is not None]
    if not stages:
        from .core.errors import UserError

        raise UserError("run", f"{a.run} has no complete stage", "finish it with `lgd-ray distill`")
    teacher = load_teacher(cfg.eval, run.class_ids, cfg.data.image_size, run.in_channels)
    init_ray()
    data = src.read_stages(stages, run.class_ids)
    val = materialize(load_part(cfg.data, "test", run.class_ids))  # the final protocol: the test split
    name = f"{a.run} (stages 0..{stages[-1]})"
    summary = evaluate_sets({name: data}, val, cfg.eval, teacher=teacher, progress=not a.quiet,
                            gpus_per_task=cfg.ray.task_gpus())[name]
    ipc = len(data) // len(run.class_ids)
    result = {name: {**summary, "ipc": ipc, "images": len(data), "reference_acc_on_set": None}}
    out = OutputDir(a.out or a.run)
    out.write_text("evaluation.json", json.dumps({"eval": cfg.to_dict()["eval"], "results": result}, indent=1))
    if out.uri == src.uri:  # the run's dataset card shows its evaluation
        from .engine.card import write_card

        write_card(src)
    print(results_table(result))
    return 0


def cmd_train_reference(a: argparse.Namespace) -> int:
    from .engine.run import data_channels, init_ray, resolve_classes_only
    from .engine.store import OutputDir
    from .engine.train_job import train_with_ray, write_classifier

    cfg = _load(a)
    _check_out(a)
    # θ* is trained on the data alone: the generator (often not trained yet on a new folder) plays no part
    class_ids, in_channels = resolve_classes_only(cfg), data_channels(cfg)
    init_ray()
    out = OutputDir(a.out)
    state, metrics = train_with_ray(cfg, out, role="reference", name="reference", class_ids=class_ids,
                                    in_channels=in_channels, stages=None, init=None, seed=cfg.seed)
    write_classifier(out, state, arch=cfg.reference.arch, class_ids=class_ids, image_size=cfg.data.image_size,
                     in_channels=in_channels, metrics=metrics)
    print(f"reference saved to {out.path('model.safetensors')}: selection-split acc {metrics.get('select_acc', float('nan')):.3f}")
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    from .engine.run import load_run_config
    from .engine.store import OutputDir

    load_run_config(a.run)
    out = OutputDir(a.run)
    stages = out.stages_on_disk()
    problems = [p for s in stages for p in out.verify_stage(s)]
    for p in problems:
        print(p)
    rows = sum((out.manifest(s) or {"rows": 0})["rows"] for s in stages)
    print(f"{len(stages)} stages, {rows} rows, {len(problems)} problems")
    return 1 if problems else 0


def cmd_export(a: argparse.Namespace) -> int:
    from .apps.export import export_run

    r = export_run(a.run, a.to, stages=a.stages, fmt=a.format)
    print(f"{r['images']} images of stages {', '.join(map(str, r['stages']))} exported as {r['format']} to {r['to']}")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from .apps.bench import BenchSpec, format_report, run_bench
    from .engine.run import init_ray

    if a.data:
        from .apps.data_bench import DataSpec, format_data_bench, run_data_bench

        print(format_data_bench(run_data_bench(DataSpec(n=a.n), a.out)))
        return 0
    if a.memory:
        from dataclasses import replace

        from .apps.activation_bench import (
            MemorySpec,
            format_memory,
            jobs_spec,
            run_memory_bench,
        )

        mspec = jobs_spec(a.arch) if a.arch.endswith("-256") else MemorySpec(arch=a.arch)
        print(format_memory(run_memory_bench(replace(mspec, k=a.k), a.out)))
        return 0
    if a.flops:
        from dataclasses import replace

        from .apps import flops_bench

        fspec = flops_bench.jobs_spec(a.arch) if a.arch.endswith("-256") else flops_bench.FlopsSpec(arch=a.arch)
        print(flops_bench.format_flops(flops_bench.run_flops_bench(replace(fspec, k=a.k), a.out)), end="")
        return 0
    spec = BenchSpec(arch=a.arch, k=a.k, slots=a.slots)
    if a.arch.endswith("-256"):  # DiT-XL/2 and friends as the jobs run them: 1000 classes, 50 steps, ConvNet-6 at 224
        spec = BenchSpec(arch=a.arch, image_size=256, channels=3, num_classes=1000, student="convnet6", student_size=224,
                         steps=50, window=(10, 45), k=a.k, slots=a.slots, chunk_size=4, batch_size=12, cfg_scale=4.0)
    init_ray()
    report = run_bench(spec, a.out, [int(n) for n in a.actors.split(",") if n])
    print(format_report(report))
    return 0


def _seeds(text: str | None) -> list[int] | None:
    return [int(x) for x in text.split(",")] if text else None


def cmd_redundancy(a: argparse.Namespace) -> int:
    from .apps.diagnostics import redundancy
    from .engine.run import init_ray, load_run_config

    load_run_config(a.run)
    init_ray()
    r = redundancy(a.run, seeds=_seeds(a.seeds), epochs=a.epochs, progress=not a.quiet, gpus_per_task=a.gpus_per_task)
    print(f"mean cross-increment accuracy {100 * r['cross_acc_mean']:.1f}% (self {100 * r['self_acc_mean']:.1f}%), "
          f"loss {r['cross_loss_mean']:.3f}; redundancy.json and redundancy.png in {a.run}")
    return 0


def cmd_cartography(a: argparse.Namespace) -> int:
    from .apps.diagnostics import cartography_report
    from .engine.run import init_ray, load_run_config

    load_run_config(a.run)
    init_ray()
    r = cartography_report(a.run, seed=a.seed, epochs=a.epochs, progress=not a.quiet, gpus_per_task=a.gpus_per_task)
    for stage, f in r["per_stage"].items():
        print(f"{stage}: easy {f['easy']:.2f}  ambiguous {f['ambiguous']:.2f}  hard {f['hard']:.2f}")
    print(f"cartography.json and cartography.png in {a.run}")
    return 0


def cmd_plan(a: argparse.Namespace) -> int:
    from .apps.cost import (
        ASSUMED_H100_DIT_XL,
        compare_with_run,
        figures_from_bench,
        figures_from_flops,
        figures_from_run,
        format_plan,
        make_plan,
    )

    if a.bench and a.from_run:
        raise UserError("--from-run", "give either --bench or --from-run", "drop one of them")
    if a.flops and (a.bench or a.from_run):
        raise UserError("--flops", "--bench and --from-run bring their own guided/unguided ratio", "drop --flops")
    name, overrides = split_config(a)
    if a.compare and name is None and not overrides:
        from .engine.run import load_run_config

        cfg, name = load_run_config(a.compare), f"the config of {a.compare}"  # plan the run being compared with
    else:
        cfg = _load(a)
    try:
        gpus = [int(n) for n in (a.gpus or str(max(1, cfg.ray.samplers))).split(",") if n.strip()]
    except ValueError:
        raise UserError("--gpus", f"{a.gpus!r} is not a GPU count", "give e.g. --gpus 8 or --gpus 8,64,256") from None
    if not gpus:
        raise UserError("--gpus", "no GPU count given", "give e.g. --gpus 8")
    figures = (figures_from_bench(a.bench) if a.bench else figures_from_run(a.from_run) if a.from_run
               else figures_from_flops(a.flops) if a.flops else ASSUMED_H100_DIT_XL)
    plan = make_plan(cfg, figures)
    for n in gpus:
        plan.check_gpus(n)
    print(format_plan(plan, gpus, name=name or "the embedded demo"))
    if a.compare:
        print("\n" + compare_with_run(plan, a.compare)[0])
    return 0


def cmd_tune(a: argparse.Namespace) -> int:
    from .engine.run import init_ray, resolve_run
    from .tune.spec import load_sweep
    from .tune.trainable import run_sweep

    sweep = load_sweep(a.sweep, a.overrides)
    _check_out(a)
    resolve_run(sweep.base)  # data, generator and reference checked before Ray starts
    init_ray()
    summary = run_sweep(sweep, a.out, progress=not a.quiet)
    print(json.dumps(summary))
    if summary["best"] is None:  # every trial failed: say so, and where the errors are
        print(f"lgd-ray: every trial failed; errors in {a.out}/trials.csv and {a.out}/tune/*/error.txt", file=sys.stderr)
        return 1
    print(f"trials.csv, trials.md, best.yaml and sweep.png in {a.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lgd-ray", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="LGD vs the unguided generator vs random real, on the embedded digits by default")
    p.add_argument("config", nargs="?", default=None, help="YAML config (default: the embedded demo)")
    _config_args(p)
    _out_arg(p)
    p.add_argument("--overwrite", action="store_true", help="replace an output made with another config")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--generator-steps", type=int, default=3000,
                   help="training steps of the generator made for a data set other than the digits (its estimated "
                        "time is printed before it starts)")
    p.add_argument("--generator-minutes", type=float, default=None,
                   help="stop that training at this wall-clock budget (then not reproducible: the steps done vary)")
    p.add_argument("--generation-seeds", default=None, metavar="S,S,...",
                   help="run the demo once per run seed (OUT/seed-N) and report mean ± standard error over the "
                        "seeds × eval seeds, with LGD's margin over each row in standard errors (seeds.md)")
    p.add_argument("--random-draws", type=int, default=None, metavar="N",
                   help="with --generation-seeds: random real over N draws of real images (default 10; the seeds' "
                        "own draws and more, each only evaluated), so the baseline's mean is pinned down")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("distill", help="run (or resume) LGD: seed increment, then guided stages")
    p.add_argument("config", nargs="?", default=None, help="YAML job config (e.g. jobs/demo.yaml; default: the embedded demo)")
    _config_args(p)
    _out_arg(p)
    p.add_argument("--overwrite", action="store_true", help="replace an output made with another config")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("evaluate", help="the field's protocol on a distilled output: train from scratch, test on real val "
                                        "(eval.protocol=hard, or soft with eval.teacher relabelling every batch)")
    p.add_argument("run", help="an output folder of `lgd-ray distill`")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="eval overrides, e.g. eval.seeds=[0,1,2,3,4]")
    _out_arg(p, required=False)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train-reference", help="train the reference model θ* on the real training data (Ray Train); "
                                               "its --out folder also serves as eval.teacher")
    p.add_argument("config", nargs="?", default=None)
    _config_args(p)
    _out_arg(p)
    p.set_defaults(func=cmd_train_reference)

    p = sub.add_parser("verify", help="check every part of an output against its stage manifest (sha256, rows)")
    p.add_argument("run", help="an output folder of `lgd-ray distill`")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("export", help="a distilled output as an ImageNet-layout folder of PNGs (FOLDER/train/<class_id>/"
                                      "<stage>_<slot>.png + labels.json, for the field's evaluation code) or as Parquet "
                                      "with its dataset card (to push to the Hugging Face hub)")
    p.add_argument("run", metavar="DIR", help="an output folder of `lgd-ray distill` (local, NFS or object store)")
    p.add_argument("--to", required=True, metavar="FOLDER", help="a new or empty local folder")
    p.add_argument("--stages", default=None, help="stages to export, e.g. 0,2 or 1-3 (default: every complete stage)")
    p.add_argument("--format", default="imagefolder", help="imagefolder (default) or parquet")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="cost of a guided step and of the Ray sampler pool (in-process vs 1 vs 2 actors)")
    p.add_argument("--arch", default="unet-tiny", help="generator architecture with random weights (dit-xl-2-256 on a GPU)")
    p.add_argument("--k", type=int, default=3, help="candidates per slot")
    p.add_argument("--slots", type=int, default=40, help="work items per throughput run")
    p.add_argument("--actors", default="1,2", help="actor counts to measure, comma-separated")
    p.add_argument("--memory", action="store_true", help="only the activation bytes of a guided step per component, "
                   "fp32/bf16, with/without VAE checkpointing (any device); memory.json + memory.md in --out")
    p.add_argument("--flops", action="store_true", help="only the counted FLOPs per step and per kept image, by "
                   "component: unguided, exact LGD, its FLOP cuts (x̂0-space gradient, candidate pruning, a tiny "
                   "guidance decoder) and IGD-style (any device); flops.json + flops.md in --out")
    p.add_argument("--data", action="store_true", help="only a Train worker's peak RSS and images/s reading a generated "
                   "JPEG folder and Parquet parts at N and 4N images, streamed vs in memory; data.json + data.md in --out")
    p.add_argument("--n", type=int, default=400, help="--data: images of the small case (the large one has 4N)")
    _out_arg(p, required=False)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("redundancy", help="cross-increment matrix: train on each increment, test on every other")
    p.add_argument("run", help="an output folder of `lgd-ray distill` (local, NFS or object store)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the run's eval.seeds)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per training (default: the run's eval.epochs)")
    p.add_argument("--gpus-per-task", type=float, default=None,
                   help="GPUs each training task asks Ray for (default: the run's ray.gpus_per_task; auto = 1 when its Train workers used GPUs)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_redundancy)

    p = sub.add_parser("cartography", help="training dynamics per distilled sample: easy / ambiguous / hard per stage")
    p.add_argument("run", help="an output folder of `lgd-ray distill`")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--gpus-per-task", type=float, default=None,
                   help="GPUs each training task asks Ray for (default: the run's ray.gpus_per_task; auto = 1 when its Train workers used GPUs)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_cartography)

    p = sub.add_parser("plan", help="GPU-hours and wall time per stage of a run on N GPUs, from bench figures or stated assumptions")
    p.add_argument("config", nargs="?", default=None, help="YAML job config (e.g. jobs/imagenet1k_ipc50.yaml)")
    _config_args(p)
    p.add_argument("--gpus", default=None, help="GPUs in the cluster; several comma-separated, e.g. 8,64,256 "
                   "(default: the config's ray.samplers, i.e. the run as configured)")
    p.add_argument("--bench", default=None, help="bench.json from `lgd-ray bench --out DIR` (default: assumed DiT-XL/2 on H100 figures)")
    p.add_argument("--from-run", default=None, metavar="DIR",
                   help="fit the figures to a measured distill output instead (its per-stage timings)")
    p.add_argument("--flops", default=None, metavar="FILE", help="flops.json from `lgd-ray bench --flops --out DIR`: "
                   "its counted guided/unguided step ratio with the assumed figures (default: the shipped DiT-XL/2 count)")
    p.add_argument("--compare", default=None, metavar="DIR",
                   help="print the plan against the measured timings of DIR (whose config is planned unless CONFIG is given)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("tune", help="Ray Tune sweep (ASHA over stages) of λ, ω, κ, γ, window; best.yaml, trials.csv/md, sweep.png")
    p.add_argument("sweep", help="sweep YAML (e.g. jobs/sweep_demo.yaml): base config, space, num_samples, asha")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the base config, e.g. student.epochs=20")
    _out_arg(p)
    p.add_argument("--quiet", action="store_true", help="no Tune progress table")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("photos", help="a natural-image set from the two photographs scikit-learn ships: 10 classes "
                       "of regions (sky, roof tiles, petals, ...), as an ImageNet-layout folder")
    _out_arg(p)
    p.add_argument("--size", type=int, default=32, help="side of the stored crops in pixels")
    p.add_argument("--select-share", type=float, default=0.15,
                   help="a select/ split from this share of each region's longer side, between train and val, for "
                   "data.select_split=select (0: train and val only, the layout before it)")
    p.set_defaults(func=cmd_photos)

    p = sub.add_parser("train-generator", help="train a small class-conditional diffusion model on the configured data")
    p.add_argument("config", nargs="?", default=None, help="YAML config (default: the embedded digits)")
    _config_args(p)
    _out_arg(p)
    p.add_argument("--arch", default="unet-tiny", help="generator architecture (see lgd_ray.core.generator.ARCHITECTURES)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema", type=float, default=0.999, help="decay of the saved EMA weights (0: save the last iterate)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="random left-right flips (default: on for an image folder, off for the digits)")
    p.add_argument("--last-iterate", default=None, metavar="DIR",
                   help="also save the last iterate (what --ema 0 saves) to DIR, to measure what the EMA adds")
    p.add_argument("--max-minutes", type=float, default=None, help="stop at this wall-clock budget")
    p.set_defaults(func=cmd_train_generator)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a, rest = parser.parse_known_args(argv)
    # argparse stops filling `key=value ...` at the first option, so overrides written after --out
    # arrive here; anything else left over is a real mistake
    stray = [x for x in rest if "=" not in x or x.startswith("-")]
    if stray or (rest and not hasattr(a, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or rest)}")
    if rest:
        a.overrides = [*a.overrides, *rest]
    try:
        return a.func(a) or 0
    except UserError as e:
        print(f"lgd-ray: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

