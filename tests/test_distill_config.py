"""Config parsing: TOML, overrides, clear errors naming the key; the CLI."""

from __future__ import annotations

import argparse
import dataclasses
from typing import ClassVar, Dict

import pytest

from fastalign.distill import DistillConfig, config_from_dict, load_config
from fastalign.distill.config import apply_overrides, parse_override


def test_defaults_are_alignet():
    cfg = DistillConfig().validate()
    assert cfg.loss.divergence == "jsd" and cfg.loss.temperature == 100.0
    assert cfg.optim.weight_decay == 1.0 and cfg.optim.lr == 3e-5 and cfg.optim.warmup_steps == 100
    assert cfg.student.head_dim == 1024


def test_defaults_reach_their_learning_rate_without_a_warning():
    """Before: the defaults (warmup 5,000, steps 1,000) made every run without a config all warm-up."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = DistillConfig().validate()
    assert cfg.optim.warmup_steps < cfg.train.steps


def test_toml_file_and_overrides(tmp_path):
    path = tmp_path / "d.toml"
    path.write_text('[optim]\nlr = 1e-4\nbetas = [0.8, 0.9]\n[train]\nsteps = 7\n[loss]\ndivergence = "kl"\n')
    cfg = load_config(path, ["train.steps=9", "loss.similarity=cosine", "data.store=/x/y", "optim.lr=2"])
    assert cfg.optim.betas == [0.8, 0.9] and cfg.train.steps == 9 and cfg.loss.divergence == "kl"
    assert cfg.loss.similarity == "cosine" and cfg.data.store == "/x/y"
    assert cfg.optim.lr == 2.0 and isinstance(cfg.optim.lr, float)


@pytest.mark.parametrize("data, key", [
    ({"optim": {"lrr": 1.0}}, "optim.lrr"),
    ({"bogus": {}}, "bogus"),
    ({"train": {"steps": "ten"}}, "train.steps"),
    ({"train": {"steps": 1.5}}, "train.steps"),
    ({"train": {"progress": 1}}, "train.progress"),
    ({"optim": {"lr": "fast"}}, "optim.lr"),
    ({"optim": {"betas": 0.9}}, "optim.betas"),
    ({"optim": {"betas": [0.9, "x"]}}, "optim.betas[1]"),
    ({"loss": {"divergence": "l2"}}, "loss.divergence"),
    ({"train": {"micro_batch": 0}}, "train.micro_batch"),
    ({"loss": {"teacher_temperature": -1.0}}, "loss.teacher_temperature"),
    ({"optim": 3}, "optim"),
])
def test_bad_config_names_the_key(data, key):
    with pytest.raises(ValueError) as info:
        config_from_dict(data)
    assert key in str(info.value)


def test_override_parsing():
    assert parse_override("optim.lr=3e-5") == ("optim.lr", 3e-5)
    assert parse_override("data.store=/a/b c") == ("data.store", "/a/b c")
    assert parse_override("train.progress=false") == ("train.progress", False)
    with pytest.raises(ValueError, match="key=value"):
        parse_override("optim.lr")
    with pytest.raises(ValueError, match="not a table"):
        apply_overrides({"optim": 1}, ["optim.lr=1"])


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim\n")
    with pytest.raises(ValueError, match="invalid TOML"):
        load_config(bad)


def _cli(argv, capsys):
    """Run our two subcommands the way ``fastalign.cli.main`` does (error -> one line, exit 2)."""
    from fastalign.cli import distill, embed

    parser = argparse.ArgumentParser(prog="fastalign")
    sub = parser.add_subparsers(dest="command")
    distill.register(sub)
    embed.register(sub)
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"fastalign {args.command}: error: {exc}")
        code = 2
    return code, capsys.readouterr().out


def test_cli_errors_name_the_key(capsys):
    code, out = _cli(["distill", "--set", "optim.bogus=1"], capsys)
    assert code == 2 and "optim.bogus" in out
    code, out = _cli(["distill", "--train.steps", "1.5"], capsys)
    assert code == 2 and "train.steps" in out


def test_cli_distill_runs_from_toml_then_embed(tmp_path, capsys):
    import numpy as np

    gen = np.random.default_rng(0)
    np.save(tmp_path / "feats.npy", gen.normal(size=(30, 6)).astype(np.float32))
    np.save(tmp_path / "teacher.npy", gen.normal(size=(30, 4)).astype(np.float32))
    human = tmp_path / "human.txt"
    human.write_text("\n".join(" ".join(map(str, gen.choice(30, 3, replace=False))) for _ in range(20)))
    toml = tmp_path / "distill.toml"
    toml.write_text(f"""
[student]
features = "{tmp_path / 'feats.npy'}"
head_dim = 3
[data]
source = "dense"
teacher_embeddings = "{tmp_path / 'teacher.npy'}"
dense_items = 10
[loss]
temperature = 1.0
human_triplets = "{human}"
human_weight = 0.5
human_batch = 4
[optim]
lr = 0.01
warmup_steps = 1
[train]
steps = 3
batch_triplets = 16
micro_batch = 4
progress = false
log_every = 1
eval_every = 3
[eval]
human_triplets = "{human}"
val_batches = 2
""")
    out = tmp_path / "run"
    code, text = _cli(["distill", "--config", str(toml), "--out", str(out), "--train.steps", "4"], capsys)
    assert code == 0, text
    assert "distilled 4 steps" in text and "human_acc" in text
    import json

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # step 0: the student before any step, evaluated only (the curves' baseline)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert "val_kl" in rows[0] and "human_acc" in rows[0] and "loss" not in rows[0]
    rows = rows[1:]
    assert all(r["human"] > 0 for r in rows)  # the hard human loss was mixed in
    assert "val_kl" in rows[-2] and "human_acc" in rows[-2]  # evaluated at step 3
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 4 and report["config"]["train"]["steps"] == 4
    code, text = _cli(["embed", "--checkpoint", str(out), "--out", str(tmp_path / "e.npy")], capsys)
    assert code == 0 and np.load(tmp_path / "e.npy").shape == (30, 3)
    code, text = _cli(["embed", "--checkpoint", str(out), "--images", str(tmp_path), "--file-names", str(human),
                       "--out", str(tmp_path / "x.npy")], capsys)
    assert code == 2 and "pass --features" in text


def test_optional_backbones_say_what_is_missing():
    from fastalign.distill.config import StudentConfig
    from fastalign.distill.student import build_student

    for kind, package in (("timm", "timm"), ("open_clip", "open_clip")):
        try:
            __import__(package)
        except ImportError:
            with pytest.raises(ValueError, match=package):
                build_student(StudentConfig(kind=kind, model_name="vit_tiny"))
    with pytest.raises(ValueError, match="package.module:factory"):
        build_student(StudentConfig(kind="module", module="nocolon"))
    with pytest.raises(ValueError, match="cannot be imported"):
        build_student(StudentConfig(kind="module", module="no_such_mod_xyz:f"))


def test_fsdp_needs_the_two_pass_step():
    with pytest.raises(ValueError, match="train.distributed 'fsdp' needs train.step_mode 'two_pass'"):
        config_from_dict({"train": {"distributed": "fsdp", "step_mode": "single"}})
    assert config_from_dict({"train": {"distributed": "fsdp"}}).train.distributed == "fsdp"


@dataclasses.dataclass
class _Inner:
    a: int = 1
    b: int = 2


@dataclasses.dataclass
class _Outer:
    CONFIG_ALIASES: ClassVar[Dict[str, str]] = {"inner.old_a": "inner.a", "flat": "inner.b"}
    inner: _Inner = dataclasses.field(default_factory=lambda: _Inner(b=20))


def test_config_engine_aliases_and_nested_defaults():
    """fastalign.config: a renamed key moves with a warning; an embedded config keeps its own defaults."""
    from fastalign.config import DeprecatedConfigKey, build_dataclass

    Inner, Outer = _Inner, _Outer

    assert build_dataclass(Outer, {}).inner == Inner(1, 20)
    assert build_dataclass(Outer, {"inner": {"a": 5}}).inner == Inner(5, 20)  # b keeps the embedding default
    with pytest.warns(DeprecatedConfigKey, match="inner.old_a is deprecated.*use inner.a"):
        assert build_dataclass(Outer, {"inner": {"old_a": 7}}).inner == Inner(7, 20)
    with pytest.warns(DeprecatedConfigKey, match="flat is deprecated.*use inner.b"):
        assert build_dataclass(Outer, {"flat": 3}).inner == Inner(1, 3)
    with pytest.raises(ValueError, match="both set"):
        build_dataclass(Outer, {"flat": 3, "inner": {"b": 4}})


def test_warmup_longer_than_the_run_warns():
    """Before: warmup 5,000 > steps 2,000 made the whole run warm-up (peak lr 1.2e-5) with no word."""
    import pytest as _pytest

    from fastalign.distill.config import DistillConfig

    cfg = DistillConfig()
    cfg.train.steps, cfg.optim.warmup_steps = 2000, 5000
    with _pytest.warns(UserWarning, match="whole run is warm-up"):
        cfg.validate()
