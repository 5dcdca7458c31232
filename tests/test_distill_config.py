"""Config parsing: TOML, overrides, clear errors naming the key; the CLI."""

from __future__ import annotations

import argparse

import pytest

from fastalign.distill import DistillConfig, config_from_dict, load_config
from fastalign.distill.config import apply_overrides, parse_override


def test_defaults_are_alignet():
    cfg = DistillConfig().validate()
    assert cfg.loss.divergence == "jsd" and cfg.loss.temperature == 100.0
    assert cfg.optim.weight_decay == 1.0 and cfg.optim.lr == 3e-5 and cfg.optim.warmup_steps == 5000
    assert cfg.student.head_dim == 1024


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
