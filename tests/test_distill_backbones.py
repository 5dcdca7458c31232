"""The timm and open_clip student adapters, on small randomly initialised
models (nothing is downloaded). Skipped where the packages are not installed;
``pip install -e ".[students]"`` (with a torchvision matching torch) runs them."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_distill_fixtures import base_config, write_images

from fastalign.distill import StepBatch, StepOptions, config_from_dict, distill, single_pass_step, two_pass_step
from fastalign.distill.config import StudentConfig
from fastalign.distill.student import build_student, enable_activation_checkpointing, image_preprocess

VIT = "vit_tiny_patch16_224"
SMALL = {"img_size": 32}  # 4 patches: a real ViT, cheap on a CPU


def _timm():
    return pytest.importorskip("timm", reason="timm is not installed (optional: the students extra)")


def _open_clip():
    return pytest.importorskip("open_clip", reason="open_clip_torch is not installed (optional: the students extra)")


def _save(state, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


def test_timm_loads_local_weights_without_the_classifier(tmp_path):
    timm = _timm()
    torch.manual_seed(0)
    ref = timm.create_model(VIT, num_classes=10, **SMALL)  # a checkpoint with its classifier
    weights = _save(ref.state_dict(), tmp_path / "vit.safetensors")
    student = build_student(StudentConfig(kind="timm", model_name=VIT, model_kwargs=SMALL, weights=weights,
                                          pooling="cls", head="none"))
    ref.reset_classifier(0)
    ref.eval(), student.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(student(x), ref(x), rtol=1e-5, atol=1e-5)
    assert student(x).shape == (3, 192)


def test_timm_avg_pooling_keeps_the_trunk_and_adds_a_fresh_fc_norm(tmp_path):
    timm = _timm()
    ref = timm.create_model(VIT, num_classes=10, **SMALL)
    weights = _save(ref.state_dict(), tmp_path / "vit.safetensors")
    student = build_student(StudentConfig(kind="timm", model_name=VIT, model_kwargs=SMALL, weights=weights,
                                          pooling="avg", head="none"))
    own, theirs = student.backbone.state_dict(), ref.state_dict()
    shared = [k for k in own if k in theirs]
    assert len(shared) > 100 and all(torch.equal(own[k], theirs[k]) for k in shared)
    assert torch.equal(own["fc_norm.weight"], torch.ones(192))  # timm's avg-pool norm, freshly initialised


def test_timm_resamples_position_embeddings_for_another_image_size(tmp_path):
    timm = _timm()
    weights = _save(timm.create_model(VIT, num_classes=0, **SMALL).state_dict(), tmp_path / "vit.safetensors")
    student = build_student(StudentConfig(kind="timm", model_name=VIT, model_kwargs={"img_size": 48},
                                          weights=weights, pooling="cls", head="none"))
    assert student(torch.randn(1, 3, 48, 48)).shape == (1, 192)
    assert image_preprocess(StudentConfig(kind="timm"), student)[0] == 48


def test_timm_map_pooling_head_and_preprocess():
    _timm()
    student = build_student(StudentConfig(kind="timm", model_name=VIT, model_kwargs=SMALL, pooling="map",
                                          head="linear", head_dim=16))
    assert student(torch.randn(2, 3, 32, 32)).shape == (2, 16)
    assert any("attn_pool" in n for n, _ in student.named_parameters())
    size, mean, std = image_preprocess(StudentConfig(kind="timm"), student)
    assert size == 32 and mean == (0.5, 0.5, 0.5) and std == (0.5, 0.5, 0.5)  # the model's, not ImageNet's


def test_timm_errors_are_clear(tmp_path):
    timm = _timm()
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        build_student(StudentConfig(kind="timm", model_name=VIT, weights=str(tmp_path / "absent.safetensors")))
    with pytest.raises(ValueError, match="timm cannot build student 'no_such_net'"):
        build_student(StudentConfig(kind="timm", model_name="no_such_net"))
    other = _save(timm.create_model("resnet10t", num_classes=0).state_dict(), tmp_path / "resnet.safetensors")
    with pytest.raises(ValueError, match="weights do not fit the model: missing"):
        build_student(StudentConfig(kind="timm", model_name=VIT, model_kwargs=SMALL, weights=other))
    wide = _save(timm.create_model("vit_small_patch16_224", num_classes=0, **SMALL).state_dict(),
                 tmp_path / "wide.safetensors")
    with pytest.raises(ValueError, match="weights do not fit the model"):
        build_student(StudentConfig(kind="timm", model_name=VIT, model_kwargs=SMALL, weights=wide))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_two_pass_equals_naive_on_a_timm_vit_with_dropout(checkpointing):
    _timm()
    torch.manual_seed(0)
    cfg = StudentConfig(kind="timm", model_name=VIT, pooling="avg", head="linear", head_dim=8,
                        model_kwargs={**SMALL, "drop_path_rate": 0.2, "proj_drop_rate": 0.1})
    model = build_student(cfg)
    twin = copy.deepcopy(model)
    if checkpointing:
        enable_activation_checkpointing(model)
    gen = torch.Generator().manual_seed(1)
    trip = torch.stack([torch.randperm(10, generator=gen)[:3] for _ in range(24)])
    batch = StepBatch(inputs=torch.randn(10, 3, 32, 32, generator=gen), triplets=trip,
                      target_sims=torch.randn(24, 3, generator=gen))
    opts = StepOptions(micro_batch=4, temperature=0.5)
    torch.manual_seed(7)
    two = two_pass_step(model, batch, opts)
    torch.manual_seed(7)
    one = single_pass_step(twin, batch, opts)
    assert two.loss == pytest.approx(one.loss, rel=1e-5)
    grads = [(a.grad, b.grad) for a, b in zip(model.parameters(), twin.parameters())]
    assert len(grads) > 100 and all(a is not None for a, _ in grads)
    for a, b in grads:
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_timm_student_distils_on_image_files_and_embeds(tmp_path):
    _timm()
    from fastalign.distill import ArrayTripletSource, embed_checkpoint

    names = write_images(tmp_path, 10, corrupt={4})
    listing = tmp_path / "names.txt"
    listing.write_text("\n".join(names))
    gen = np.random.default_rng(0)
    trip = np.array([gen.choice(10, 3, replace=False) for _ in range(48)])
    src = ArrayTripletSource(trip, gen.normal(size=(48, 3)).astype(np.float32), num_items=10)
    cfg = base_config(str(tmp_path / "run"), steps=2, batch_triplets=16, micro_batch=4)
    cfg["student"] = {"kind": "timm", "model_name": VIT, "model_kwargs": SMALL, "head": "linear", "head_dim": 5}
    cfg["data"] = {"items": "images", "image_root": str(tmp_path), "file_names": str(listing)}
    res = distill(config_from_dict(cfg), train_source=src)
    assert res.steps == 2 and res.metrics["skipped_items"] >= 1
    emb, ok = embed_checkpoint(res.checkpoint, image_root=str(tmp_path), file_names=names, micro_batch=4)
    assert emb.shape == (10, 5) and ok.tolist() == [i != 4 for i in range(10)] and np.isfinite(emb).all()


def test_open_clip_image_tower_matches_encode_image(tmp_path):
    open_clip = _open_clip()
    torch.manual_seed(0)
    kwargs = {"force_image_size": 64}
    ref = open_clip.create_model("ViT-S-32", pretrained=None, **kwargs)
    weights = str(tmp_path / "clip.pt")
    torch.save(ref.state_dict(), weights)
    cfg = StudentConfig(kind="open_clip", model_name="ViT-S-32", model_kwargs=kwargs, weights=weights,
                        pooling="cls", head="none")
    student = build_student(cfg)
    ref.eval(), student.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(student(x), ref.encode_image(x), rtol=1e-5, atol=1e-5)
        avg = build_student(StudentConfig(kind="open_clip", model_name="ViT-S-32", model_kwargs=kwargs,
                                          weights=weights, pooling="avg", head="none")).eval()
        assert not torch.allclose(avg(x), student(x))  # the pooling choice reaches the tower
    size, mean, std = image_preprocess(cfg, student)
    assert size == 64 and mean[0] == pytest.approx(0.48145466)  # CLIP's statistics


def test_open_clip_pooling_errors():
    _open_clip()
    with pytest.raises(ValueError, match="has no attention pool"):
        build_student(StudentConfig(kind="open_clip", model_name="ViT-S-32", pooling="map"))
    with pytest.raises(ValueError, match="pools by attention"):
        build_student(StudentConfig(kind="open_clip", model_name="RN50", pooling="avg"))
    with pytest.raises(ValueError, match="open_clip cannot build student"):
        build_student(StudentConfig(kind="open_clip", model_name="no-such-clip"))


def test_open_clip_refuses_weights_of_another_model(tmp_path):
    open_clip = _open_clip()
    weights = str(tmp_path / "other.pt")
    torch.save(open_clip.create_model("ViT-S-16", pretrained=None).state_dict(), weights)
    with pytest.raises(ValueError, match="open_clip cannot build student 'ViT-S-32'"):
        build_student(StudentConfig(kind="open_clip", model_name="ViT-S-32", weights=weights))
