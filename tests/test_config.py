from __future__ import annotations

from pathlib import Path

import pytest

from lgd_ray.core.config import Config, all_keys, load_config
from lgd_ray.core.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


def test_demo_job_is_the_embedded_default():
    assert load_config(ROOT / "jobs" / "demo.yaml").to_dict() == Config().to_dict()


def test_overrides_and_types(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("distill:\n  lam: 0.5\n  window: [1, 3]\nseed: 7\n")
    cfg = load_config(f, ["distill.k=5", "eval.seeds=[3,4]", "reference.path=null"])
    assert (cfg.seed, cfg.distill.lam, cfg.distill.window, cfg.distill.k, cfg.eval.seeds) == (7, 0.5, [1, 3], 5, [3, 4])
    assert isinstance(load_config(None, ["distill.lam=1"]).distill.lam, float)


def test_public_keys_are_stable():
    for key in ["seed", "distill.stages", "distill.ipc_seed", "distill.ipc_per_stage", "distill.lam", "distill.omega",
                "distill.k", "distill.gamma", "distill.window", "ray.samplers", "ray.gpus_per_sampler", "ray.train_workers"]:
        assert key in all_keys()


def test_hash_ignores_placement_only():
    base = load_config(None)
    assert load_config(None, ["ray.samplers=7", "ray.gpus_per_sampler=0.25"]).hash() == base.hash()
    assert load_config(None, ["distill.lam=0.2"]).hash() != base.hash()
    assert load_config(None, ["ray.train_workers=2"]).hash() != base.hash()


@pytest.mark.parametrize("override, field", [
    ("distill.lamda=1", "distill.lamda"), ("distill.lam=-1", "distill.lam"), ("distill.omega=-0.1", "distill.omega"),
    ("distill.gamma=-2", "distill.gamma"), ("distill.k=0", "distill.k"), ("distill.stages=0", "distill.stages"),
    ("distill.window=[0,25]", "distill.window"), ("distill.window=[5,2]", "distill.window"),
    ("seed=abc", "seed"), ("data.name=imagenet", "data.name"), ("bogus=1", "bogus"),
    ("data.image_size=0", "data.image_size"), ("data.image_size=-8", "data.image_size"),
    ("generator.cfg_scale=-1", "generator.cfg_scale"), ("generator.cfg_scale=0.5", "generator.cfg_scale"),
    ("generator.cfg_scale=.nan", "generator.cfg_scale"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(UserError) as e:
        load_config(None, [override])
    assert e.value.field == field
    assert "\n" not in str(e.value)


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(UserError, match="did you mean 'distill.lam'"):
        load_config(None, ["distill.lamda=1"])


def test_missing_data_root_for_folders():
    with pytest.raises(UserError) as e:
        load_config(None, ["data.name=imagefolder"])
    assert e.value.field == "data.root"


def test_cfg_scale_one_and_above_is_accepted():
    assert load_config(None, ["generator.cfg_scale=1"]).generator.cfg_scale == 1.0
    assert load_config(None, ["generator.cfg_scale=4"]).generator.cfg_scale == 4.0


def test_config_file_not_utf8_names_the_file(tmp_path):
    f = tmp_path / "latin1.yaml"
    f.write_bytes("# r\u00e9glages\nseed: 1\n".encode("latin-1"))
    with pytest.raises(UserError) as e:
        load_config(f)
    assert e.value.field == "config" and str(f) in str(e.value) and "UTF-8" in str(e.value)
