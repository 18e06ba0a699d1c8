"""The app's library layer (toast_core.compare) and the `figure` command, on tiny random models."""
from __future__ import annotations

import json
import threading
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import toast_core as tc
from toast_core import compare as cmp
from toast_core.errors import InputError


@pytest.fixture(scope="module")
def entries():
    return cmp.unique_names([cmp.load_entry(f"tiny:{m}") for m in tc.available_methods()])


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8))


def _toast(entries):
    return next(e for e in entries if e.method == "toast")


def test_compare_gives_one_panel_per_method_with_valid_maps(entries, image):
    panels = cmp.compare(entries, image, kind="cls")
    assert [p.name for p in panels] == tc.available_methods()
    for p, e in zip(panels, entries):
        assert p.map.shape == (8, 8) and np.isfinite(p.map).all()
        assert p.map.min() >= 0 and p.map.sum() <= 1 + 1e-5  # CLS row: patch share of a softmax row
        probs = [q for _, q in p.predictions]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert p.layer == e.num_layers - 1 and "layer 4/4" in p.label
    toast = panels[[p.method for p in panels].index("toast")]
    assert toast.pass_name == "top-down" and "top-down pass" in toast.label


def test_each_model_runs_once_per_image(entries, image):
    """A light recording (query rows beside fused attention) serves CLS attention and token norms; rollout
    records once more with full matrices, and that recording then serves every kind."""
    cmp.RECORDINGS.clear()
    cmp.compare(entries, image, kind="cls")
    for kind in ("token_norm", "cls"):
        for layer in (0, 2, None):
            cmp.compare(entries, image, kind=kind, layer=layer, head="all" if kind == "cls" else None)
    assert cmp.RECORDINGS.misses == len(entries)
    assert all(cmp.record(e, image).result.full is None for e in entries)
    for kind in ("rollout", "token_norm", "cls"):
        for layer in (0, 2, None):
            cmp.compare(entries, image, kind=kind, layer=layer, head="all" if kind == "cls" else None)
    for e in entries:
        cmp.layer_strip(e, image, kind="token_norm")
        cmp.layer_strip(e, image, kind="rollout")
    assert cmp.RECORDINGS.misses == 2 * len(entries)  # one full recording more per model, then all from it
    assert all(cmp.record(e, image).result.full is not None for e in entries)


def test_record_all_runs_models_side_by_side_and_matches_one_by_one(entries, image, monkeypatch):
    """Side-by-side recordings are the same as one-by-one ones, come back in entry order, and really run
    in several threads (the app's lever for seven models on a multi-core CPU)."""
    cmp.RECORDINGS.clear()
    serial = [cmp.record(e, image) for e in entries]
    cmp.RECORDINGS.clear()
    threads = set()
    real_run = cmp.recordings._run

    def spy(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return real_run(*args, **kwargs)

    monkeypatch.setattr(cmp.recordings, "_run", spy)
    side = cmp.record_all(entries, image, workers=3)
    assert len(threads) >= 2 and all(t.startswith("toast-record") for t in threads)
    for a, b in zip(serial, side):
        for p in a.passes:
            np.testing.assert_allclose(a.result.cls[p].numpy(), b.result.cls[p].numpy(), atol=1e-6)
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-6)
    assert cmp.RECORDINGS.misses == len(entries)
    again = cmp.record_all(entries, image, workers=3)  # all cached: the same objects, no new forward
    assert all(x is y for x, y in zip(side, again)) and cmp.RECORDINGS.misses == len(entries)
    monkeypatch.setenv("TOAST_RECORD_WORKERS", "1")
    assert cmp.record_workers(entries) == 1
    monkeypatch.setenv("TOAST_RECORD_WORKERS", "")
    assert 1 <= cmp.record_workers(entries) <= len(entries)


@pytest.fixture(scope="module")
def one_backbone_entries():
    """The seven tiny methods with linear, TOAST and TOAST-Lite on one backbone (as the default models
    are): the tiny models' own backbones differ (one seed per method)."""
    import dataclasses

    fresh = [dataclasses.replace(cmp.tiny_entry(m), key=f"tiny-one-backbone:{m}") for m in tc.available_methods()]
    donor = next(e for e in fresh if e.method == "toast").model.vit.state_dict()
    for e in fresh:
        if e.method in ("linear", "toast-lite"):
            e.model.vit.load_state_dict({k: v for k, v in donor.items() if not k.startswith("head.")}, strict=False)
    return cmp.unique_names(fresh)


@pytest.mark.parametrize("full", [False, True])
def test_linear_toast_and_toast_lite_share_one_frozen_pass(one_backbone_entries, image, monkeypatch, full):
    """The linear probe's pass and both TOAST models' bottom-up passes are one computation on the same
    backbone and input: record_all runs it once (2 fewer backbone passes for these seven models) and every
    recording, pass, map, gate and probability is the one each model gives on its own."""
    from toast_core.compare.shared_pass import PER_PASS, share_groups
    from toast_core.methods.base import TransferModel

    entries = one_backbone_entries
    xs = [cmp.preprocess(e, image) for e in entries]
    assert [[entries[i].method for i in g] for g in share_groups(entries, xs)] == [["toast", "linear", "toast-lite"]]
    assert share_groups(*zip(*[(e, x) for e, x in zip(entries, xs) if e.method != "toast-lite"])) != [] and \
        share_groups([e for e in entries if e.method != "toast"], [x for e, x in zip(entries, xs)
                                                                   if e.method != "toast"]) != []
    calls = []
    real = TransferModel.run_blocks

    def counting(self, *args, **kwargs):
        calls.append(self.method_name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(TransferModel, "run_blocks", counting)
    cmp.RECORDINGS.clear()
    alone = [cmp.record(e, image, full=full) for e in entries]
    n_alone, calls[:] = len(calls), []
    cmp.RECORDINGS.clear()
    shared = cmp.record_all(entries, image, workers=1, full=full)
    assert n_alone == 9 and len(calls) == 7 and calls.count("linear") == 0
    for e, a, b in zip(entries, alone, shared):
        assert a.passes == b.passes, e.method
        for k in PER_PASS:
            for p in a.passes:
                if p in getattr(a.result, k):
                    torch.testing.assert_close(getattr(b.result, k)[p], getattr(a.result, k)[p], atol=1e-6, rtol=0)
        if full:
            for p in a.passes:
                torch.testing.assert_close(b.result.full[p], a.result.full[p], atol=1e-6, rtol=0)
        for k in ("gate", "td_norm", "value_ratio"):
            if getattr(a.result, k) is not None:
                torch.testing.assert_close(getattr(b.result, k), getattr(a.result, k), atol=1e-6, rtol=0)
        np.testing.assert_allclose(b.probs, a.probs, atol=1e-6)
    assert cmp.RECORDINGS.misses == len(entries)
    unshared = cmp.record_all(entries, image, workers=1, full=full, share=False)  # cached: same objects
    assert all(x is y for x, y in zip(shared, unshared))
    cmp.RECORDINGS.clear()


def test_models_on_other_backbones_or_inputs_do_not_share(entries, image):
    """The tiny models' backbones differ (one seed per method): no group, every model runs its own pass."""
    from toast_core.compare.shared_pass import share_groups

    xs = [cmp.preprocess(e, image) for e in entries]
    assert share_groups(entries, xs) == []


def test_maps_match_a_fresh_core_recording(entries, image):
    e = entries[2]
    x = cmp.preprocess(e, image)
    res = tc.extract_attention(e.model, x, full=True)
    strip = cmp.layer_strip(e, image, kind="cls")
    assert strip.shape == (e.num_layers, 8, 8)
    np.testing.assert_allclose(strip, res.cls["main"][:, 0].numpy(), atol=1e-6)
    from toast_core.maps import rollout
    roll = cmp.compare([e], image, kind="rollout", layer=1)[0].map
    np.testing.assert_allclose(roll, rollout(res, end_layer=1)[0].numpy(), atol=1e-5)
    roll_strip = cmp.layer_strip(e, image, kind="rollout")  # one sweep = one rollout per end layer
    for layer in range(e.num_layers):
        np.testing.assert_allclose(roll_strip[layer], rollout(res, end_layer=layer)[0].numpy(), atol=1e-5)


def test_heads_all_and_one_head(entries, image):
    e = entries[0]
    p_all = cmp.compare([e], image, kind="cls", head="all", layer=1)[0]
    assert p_all.heads.shape == (e.num_heads, 8, 8)
    np.testing.assert_allclose(p_all.heads.mean(axis=0), p_all.map, atol=1e-6)
    p_one = cmp.compare([e], image, kind="cls", head=2, layer=1)[0]
    np.testing.assert_allclose(p_one.map, p_all.heads[2], atol=1e-7)
    assert "head 3" in p_one.label  # index 2 = the third head (labels count from 1)
    with pytest.raises(InputError):
        cmp.compare([e], image, kind="cls", head=5)
    with pytest.raises(InputError):
        cmp.compare([e], image, kind="cls", layer=4)
    with pytest.raises(InputError):
        cmp.compare([e], image, kind="saliency")


def test_differences_against_a_reference(entries, image):
    panels = cmp.compare(entries, image, kind="token_norm", layer=0)
    diffs = cmp.differences(panels, "lora")
    assert np.all(diffs["lora"] == 0)
    for p in panels:
        np.testing.assert_allclose(diffs[p.name], p.map - panels[2].map)
    with pytest.raises(InputError):
        cmp.differences(panels, "nope")


def test_toast_steering_zero_equals_bottom_up_and_xi_from_patch(entries, image):
    e = _toast(entries)
    off = cmp.inspect_toast(e, image, td_scale=0.0)
    np.testing.assert_allclose(off.top_down, off.bottom_up, atol=1e-6)
    assert np.all(off.td_norm == 0) and np.all(off.td_norm_trained > 0)
    amp = cmp.inspect_toast(e, image, kind="token_norm", td_scale=2.0)
    assert not np.allclose(amp.top_down, amp.bottom_up)  # steering reaches the top-down maps
    np.testing.assert_allclose(amp.td_norm, 2 * amp.td_norm_trained, rtol=1e-5)
    # ξ from a patch: the gate is the cosine similarity of every token with that patch's token
    pick = cmp.inspect_toast(e, image, td_scale=1.0, xi_patch=(3, 5))
    assert pick.gate[3, 5] == pytest.approx(1.0, abs=1e-5)
    assert pick.gate.shape == (8, 8) and pick.gate.min() >= 0 and pick.gate.max() <= 1
    assert "row 3, col 5" in pick.xi_source
    learned = cmp.inspect_toast(e, image)
    assert not np.allclose(pick.gate, learned.gate)
    x = cmp.preprocess(e, image)
    with torch.inference_mode():
        want = e.model(x, td_scale=1.0, xi=e.model.token_at(x, 3, 5)).softmax(-1)[0].numpy()
    np.testing.assert_allclose(pick.probs, want, atol=1e-5)
    with pytest.raises(InputError):
        cmp.inspect_toast(entries[0], image)
    with pytest.raises(InputError):
        cmp.inspect_toast(e, image, xi_patch=(8, 0))


def test_integrated_gradients_map(entries, image):
    e = entries[1]
    m = cmp.attribution(e, image, steps=4)
    assert m.shape == (8, 8) and np.isfinite(m).all() and m.min() >= 0 and m.max() > 0
    assert cmp.attribution(e, image, steps=4) is m  # cached
    p = cmp.compare([e], image, kind="integrated_gradients", ig_steps=4)[0]
    np.testing.assert_array_equal(p.map, m)
    assert p.layer is None and "Integrated Gradients" in p.label


def test_shared_models_are_never_modified(entries, image):
    before = {e.name: cmp.parameter_digest(e.model) for e in entries}
    cmp.RECORDINGS.clear()
    cmp.compare(entries, image, kind="rollout")
    cmp.inspect_toast(_toast(entries), image, td_scale=1.7, xi_patch=(1, 1))
    cmp.attribution(_toast(entries), image, steps=4, td_scale=0.5)
    for e in entries:
        assert cmp.parameter_digest(e.model) == before[e.name]
        assert all(p.grad is None for p in e.model.parameters())
        assert not e.model.training
    from toast_core.attention import current_recorder
    assert current_recorder() is None


def test_concurrent_sessions_get_their_own_results(entries):
    rng = np.random.default_rng(1)
    imgs = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(4)]
    cmp.RECORDINGS.clear()
    expected = [cmp.compare(entries[:3], im, kind="cls")[0].map for im in imgs]
    cmp.RECORDINGS.clear()
    got: dict[int, np.ndarray] = {}

    def work(i):
        got[i] = cmp.compare(entries[:3], imgs[i], kind="cls")[0].map

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        np.testing.assert_allclose(got[i], expected[i], atol=1e-6)


def test_images_and_layers_helpers(image):
    big = Image.new("RGB", (2000, 1000), (10, 20, 30))
    small = cmp.working_copy(big)
    assert max(small.size) == cmp.WORKING_SIDE and small.size[0] == 2 * small.size[1]
    assert cmp.working_copy(image) is image
    assert cmp.image_id(image) == cmp.image_id(image.copy()) != cmp.image_id(big)
    assert cmp.display_array(big).shape == (160, 320, 3)
    assert cmp.model_layer(None, 12, 4) == 11 and cmp.model_layer(0, 12, 4) == 8 and cmp.model_layer(3, 4, 4) == 3
    assert "CPU" in cmp.device_label("cpu")
    with pytest.raises(InputError):
        cmp.load_entry("tiny:nope")


def test_checkpoint_entry_records_hash_and_predicts_like_the_model(tmp_path, image):
    from tests.conftest import tiny_model
    from toast_core.cache import sha256_file
    from toast_core.io.checkpoints import save_checkpoint

    model = tiny_model("lora")
    path = save_checkpoint(model, tmp_path / "lora.safetensors",
                           meta={"classes": [f"shape{i}" for i in range(5)], "metrics": {"test_accuracy": 0.8}})
    e = cmp.load_entry(f"ckpt:{path}")
    assert e.trained and e.method == "lora" and e.info["sha256"] == sha256_file(path)
    assert e.info["accuracy"] == pytest.approx(0.8) and e.class_names[0] == "shape0"
    x = cmp.preprocess(e, image)
    with torch.no_grad():
        want = model(x).softmax(-1)[0].numpy()
    np.testing.assert_allclose(cmp.record(e, image).probs, want, atol=1e-5)
    assert cmp.model_provenance(e)["checkpoint_sha256"] == sha256_file(path)


def test_figure_spec_and_bundle(entries, image):
    from toast_core.viz.export import build_figure, figure_bytes, read_bundle, export_bundle

    spec, meta, prov = cmp.figure_spec(entries[:3], [("img", image)], layers=[0, None], kind="cls", head=1,
                                       dpi=50, display_side=48)
    assert spec.shape == (3, 2) and spec.col_labels == ["layer 1", "layer 4"]
    assert "head 2" in spec.map_kind and all("(untrained)" in r for r in spec.row_labels)  # index 1 = head 2
    np.testing.assert_allclose(spec.panels[1][0][1], cmp.compare([entries[1]], image, layer=0, head=1)[0].map)
    doc, arrays = read_bundle(export_bundle(spec, meta, prov))
    assert doc["maps_meta"]["map_r0_c1"]["layer"] == 4
    assert doc["provenance"]["models"][0]["init"].startswith("random")
    assert doc["provenance"]["models"][0]["preprocessing"]["input_size"] == [64, 64]
    np.testing.assert_allclose(arrays["map_r2_c0"], spec.panels[2][0][1])
    spec2, _, _ = cmp.figure_spec(entries[:2], [("a", image), ("b", image.rotate(90))], columns="images",
                                  layers=[1], kind="rollout", scale="signed", display_side=48)
    assert spec2.shape == (2, 2) and spec2.col_labels == ["a", "b"] and "layer 2/4" in spec2.map_kind
    assert figure_bytes(build_figure(spec2), "svg").startswith(b"<?xml")
    with pytest.raises(InputError):
        cmp.figure_spec(entries[:1], [("a", image)], columns="rows")


def test_figure_command_writes_pdf_and_bundle(tmp_path, image, capsys):
    from toast_core.cli import main

    img = tmp_path / "in.png"
    image.save(img)
    out, bundle = tmp_path / "fig.pdf", tmp_path / "fig.zip"
    rc = main(["figure", "--checkpoints", "tiny:linear", "tiny:toast", "--images", str(img), "--layers", "1", "last",
               "--kind", "token_norm", "--out", str(out), "--bundle", str(bundle), "--title", "Test",
               "--dpi", "50", "--display-side", "48"])
    assert rc == 0 and out.read_bytes().startswith(b"%PDF")
    with zipfile.ZipFile(bundle) as z:
        doc = json.loads(z.read("manifest.json"))
        assert {"maps.npz", "figure.pdf", "figure.svg", "figure.png"} <= set(z.namelist())
    assert doc["figure"]["shape"] == [2, 2] and doc["provenance"]["map_kind"] == "token_norm"
    assert doc["provenance"]["images"][0]["path"].endswith("in.png")
    # a bad image is a clear error, not a traceback
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    assert main(["figure", "--checkpoints", "tiny:linear", "--images", str(bad), "--out", str(out)]) == 1
    assert "not an image" in capsys.readouterr().err
