"""``evaluate_representations``: several representations at once, the shared work done once,
the same numbers as one ``evaluate_representation`` call each, and progress per measure."""

import importlib

import numpy as np
import pytest

from fastalign.eval import EvalOptions, FewShotOptions, evaluate_representation, evaluate_representations

# The package re-exports functions named like these modules: take the modules themselves.
report_mod = importlib.import_module("fastalign.eval.report")
rsa_mod = importlib.import_module("fastalign.eval.rsa")


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    n = 60
    human = rng.normal(size=(n, 5)).astype(np.float32)
    reps = {
        "a": {"emb": human @ rng.normal(size=(5, 8)).astype(np.float32) + rng.normal(size=(n, 8)).astype(np.float32),
              "similarity": "cosine", "temperature": 1.0},
        "b": {"emb": rng.normal(size=(n, 6)).astype(np.float32), "similarity": "dot", "temperature": 2.0},
    }
    triplets = np.stack([rng.choice(n, 3, replace=False) for _ in range(400)])
    cats = (rng.random((n, 4)) < 0.3).astype(np.int64)
    labels = np.repeat(np.arange(6), n // 6)
    opts = EvalOptions(few_shot=FewShotOptions(shots=(1, 3), episodes=4))
    return reps, triplets, human, cats, labels, opts


def _kwargs(inputs):
    reps, triplets, human, cats, labels, opts = inputs
    return dict(categories=cats, human_rdm_emb=human, few_shot_labels=labels, options=opts)


def test_same_numbers_as_one_call_each(inputs):
    reps, triplets = inputs[0], inputs[1]
    many = evaluate_representations(reps, triplets, **_kwargs(inputs))
    for name, rep in reps.items():
        one = evaluate_representation(rep["emb"], triplets, similarity=rep["similarity"],
                                      temperature=rep["temperature"], **_kwargs(inputs))
        assert many[name] == one


def test_the_human_rdm_is_built_once_for_all_representations(inputs, monkeypatch):
    reps, triplets, human = inputs[0], inputs[1], inputs[2]
    built = []
    real = rsa_mod.rdm_upper

    def counting(emb, *args, **kwargs):
        built.append(emb.shape[1])
        return real(emb, *args, **kwargs)

    monkeypatch.setattr(rsa_mod, "rdm_upper", counting)
    evaluate_representations({**reps, "c": dict(reps["a"])}, triplets, **_kwargs(inputs))
    # One triangle per representation, one for the human embedding (5 columns).
    assert built.count(human.shape[1]) == 1
    assert len(built) == 3 + 1


def test_progress_per_representation_and_measure(inputs, capsys):
    reps, triplets = inputs[0], inputs[1]
    seen = []
    evaluate_representations(reps, triplets, **_kwargs(inputs), progress=True,
                             on_measure=lambda rep, measure, seconds: seen.append((rep, measure, seconds)))
    measures = ["accuracy and calibration", "accuracy by level", "human uncertainty", "RSA and CKA", "few-shot"]
    assert [(r, m) for r, m, _ in seen] == [(r, m) for r in reps for m in measures]
    assert all(s >= 0 for _, _, s in seen)
    err = capsys.readouterr().err
    assert "evaluate" in err and f"{len(reps) * len(measures)}/{len(reps) * len(measures)}" in err


def test_no_progress_by_default(inputs, capsys):
    evaluate_representations(inputs[0], inputs[1], **_kwargs(inputs))
    assert capsys.readouterr().err == ""


def test_shared_inputs_are_checked_against_each_representation(inputs):
    triplets = inputs[1]
    bad = {"x": {"emb": np.ones((7, 3), dtype=np.float32)}}
    with pytest.raises(ValueError):
        evaluate_representations(bad, triplets, **_kwargs(inputs))
    assert report_mod._Shared(triplets, None, None, None, None, None, None, (), None, None, None,
                              EvalOptions()).measures() == ["accuracy and calibration", "human uncertainty"]
