"""examples/: every key documented with its true default, and both examples run (with small step counts)."""

import dataclasses
import json
import re
import tomllib
import warnings
from pathlib import Path

import pytest

from fastalign.cli.main import build_parser, main
from fastalign.distill.config import DistillConfig, load_config, to_toml
from fastalign.pipeline.config import PIPELINE_OWNED, RunConfig
from fastalign.pipeline.config import load_config as load_run_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DISTILL, RUN = EXAMPLES / "distill.toml", EXAMPLES / "run.toml"
KEY_LINE = re.compile(r"(#\s*)?(\w+) = .*")
UNSET = object()


def documented(path: Path) -> dict:
    """``{dotted key: (set, default)}`` for each key line, set or commented out, of an example file;
    ``default`` is the ``[default: VALUE]`` of the comment above the key, parsed as TOML."""
    keys, section, comment = {}, "", []
    for line in path.read_text().splitlines():
        s = line.strip()
        head = re.fullmatch(r"\[([\w.]+)\]", s)
        key = KEY_LINE.fullmatch(s) if section else None
        if head:
            section, comment = head[1], []
        elif key:
            tag = re.search(r"\[default: (.*)\]$", " ".join(comment))
            assert tag, f"{path.name}: {section}.{key[2]} has no [default: ...] in its comment"
            default = None if tag[1] == "unset" else tomllib.loads(f"v = {tag[1]}")["v"]
            keys[f"{section}.{key[2]}"] = (key[1] is None, default)
            comment = []
        else:
            comment = comment + [s.lstrip("#").strip()] if s.startswith("#") else []
    return keys


def fields(obj, prefix=""):
    """``{dotted key: value}`` of every leaf field of a nested config dataclass."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(fields(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def test_distill_example_lists_every_key_with_its_default():
    keys, truth = documented(DISTILL), fields(DistillConfig())
    assert sorted(keys) == sorted(truth), set(keys) ^ set(truth)
    wrong = {k: (d, truth[k]) for k, (_, d) in keys.items() if d != truth[k]}
    assert not wrong, f"[default: ...] differs from the code: {wrong}"
    unset = {k for k, v in truth.items() if v is None}
    assert {k for k, (is_set, _) in keys.items() if not is_set} == unset  # only keys TOML cannot spell are commented


def test_distill_example_is_the_run_student_and_warns_of_nothing():
    """The example's values are fastalign run's student (the README says so), under the same key names."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warm-up >= steps, no renamed key
        example = fields(load_config(DISTILL))
    run_student = fields(RunConfig().student)
    # The run fills these itself (PIPELINE_OWNED) or from a 0 (micro_batch, ckpt_every); a features
    # student loads in the main process.
    filled = set(PIPELINE_OWNED) | {"train.micro_batch", "train.ckpt_every", "data.num_workers"}
    differ = {k: (example[k], run_student[k]) for k in example if k not in filled and example[k] != run_student[k]}
    assert not differ, differ


def test_run_example_lists_every_key_with_its_default():
    keys, truth = documented(RUN), fields(RunConfig())
    own = {k for k in truth if not k.startswith("student.")}
    assert own <= set(keys), own - set(keys)
    assert set(keys) <= set(truth), set(keys) - set(truth)
    wrong = {k: (d, truth[k]) for k, (_, d) in keys.items() if d != truth[k]}
    assert not wrong, f"[default: ...] differs from the code: {wrong}"
    owned = {f"student.{k}" for k in PIPELINE_OWNED} & set(keys)
    assert not owned, f"keys the run sets itself: {owned}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_run_config(str(RUN)).student.train.steps > load_run_config(str(RUN)).student.optim.warmup_steps


def test_distill_help_points_to_the_example_and_print_config_round_trips(tmp_path, capsys):
    sub = build_parser()._subparsers._group_actions[0].choices["distill"]
    assert "examples/distill.toml" in sub.format_help() and DISTILL.is_file()
    rc = main(["distill", "--config", str(DISTILL), "--set", "optim.lr=0.5", "--print-config"])
    printed = capsys.readouterr().out
    assert rc == 0 and "# teacher_temperature = (unset)" in printed
    (tmp_path / "printed.toml").write_text(printed)
    again = load_config(tmp_path / "printed.toml")
    assert again == load_config(DISTILL, ["optim.lr=0.5"]) and again.optim.lr == 0.5
    assert not (Path.cwd() / "distill-out").exists()  # printing trains nothing


def test_to_toml_writes_every_kind_of_value(tmp_path):
    cfg = load_config(None, ['student.model_kwargs={img_size = 160, name = "a\\"b"}', "loss.teacher_temperature=2.5",
                             "data.mean=[0.5, 0.25, 0.125]", 'train.out_dir="C:\\\\runs\\\\x"', "train.steps=7",
                             "optim.warmup_steps=1"])
    (tmp_path / "c.toml").write_text(to_toml(cfg))
    assert load_config(tmp_path / "c.toml") == cfg


def test_distill_example_runs(tmp_path, monkeypatch, capsys):
    """The example as the README chain runs it (its relative paths: human-train.txt, triplets/, distill-out)."""
    monkeypatch.chdir(tmp_path)
    assert main(["split-triplets", "things:test_10", "--train", "human-train.txt", "--heldout", "human-heldout.txt"]) == 0
    assert main(["make-triplets", "--embeddings", "things:clip", "--num", "4096", "--val-num", "1024", "--clusters", "8",
                 "--out", "triplets", "--no-histogram", "--quiet"]) == 0
    rc = main(["distill", "--config", str(DISTILL), "--set", "train.steps=6", "--set", "optim.warmup_steps=2",
               "--set", "train.eval_every=3", "--set", "train.ckpt_every=3", "--set", "train.progress=false"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "distilled 6 steps" in out and "human_acc" in out and "val_kl" in out
    assert (tmp_path / "distill-out" / "report.json").is_file()
    assert main(["embed", "--checkpoint", "distill-out", "--features", "things:word2vec", "--out", "student.npy"]) == 0


@pytest.mark.slow
def test_run_example_runs(tmp_path, capsys):
    small = ["teacher.soft_triplets=20000", "teacher.dense_lambdas=[1e-4, 1e-3]", "teacher.max_extensions=0",
             "triplets.num=4096", "triplets.val_num=1024", "triplets.clusters=8", "student.train.steps=6",
             "student.optim.warmup_steps=2", "student.train.eval_every=3", "eval.few_shot_episodes=5",
             "eval.few_shot_shots=[1]"]
    argv = ["run", "--config", str(RUN), "--out", str(tmp_path / "run")]
    for s in small:
        argv += ["--set", s]
    rc = main(argv)
    out = capsys.readouterr().out
    assert rc == 0, out
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert {"teacher", "student"} <= set(report["results"]) and report["heldout_triplets"] == 10000
