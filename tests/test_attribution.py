"""Attribution kinds (gae, legrad, gradcam, attnlrp) against independent references and their invariants.

References: Chefer et al.'s rules computed with hooks on a stock timm ViT (fused attention off);
pytorch-grad-cam's GradCAM; torchcam's LeGrad on a torchvision ViT copied into a timm twin; AttnLRP's
conservation of relevance (with biases zero, input relevance + what the softmax rule absorbs = logit).
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import toast_core as tc
from toast_core import maps
from toast_core.attribution import ATTRIBUTION_KINDS, attnlrp, attribute, gae, gradcam, legrad
from toast_core.attribution.attnlrp import LRPRules
from toast_core.errors import InputError
from toast_core.methods import available_methods

from .conftest import TINY, TINY_REG, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
KINDS = list(ATTRIBUTION_KINDS)


def imgs(b=2, h=32, w=32, seed=0):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def stock_twin(model, spec):
    """timm's own VisionTransformer (stock Attention, fused attention off) with the model's weights."""
    stock = timm.create_model(spec["backbone"], pretrained=False, num_classes=model.vit.num_classes,
                              img_size=spec["img_size"], dynamic_img_size=True, **spec["backbone_kwargs"])
    stock.load_state_dict(model.vit.state_dict())
    for blk in stock.blocks:
        blk.attn.fused_attn = False
    return stock.eval()


def chefer_reference(stock, x, target):
    """Chefer et al.'s GAE with hooks, one image at a time: R = I; R += mean_h((∇A ⊙ A)⁺) R; CLS row."""
    out = []
    for i in range(x.shape[0]):
        attn, grad = {}, {}

        def keep(idx):
            def hook(_module, _inp, a):
                attn[idx] = a
                a.register_hook(lambda g: grad.__setitem__(idx, g))
            return hook

        handles = [b.attn.attn_drop.register_forward_hook(keep(j)) for j, b in enumerate(stock.blocks)]
        try:
            stock(x[i:i + 1])[0, int(target[i])].backward()
        finally:
            for h in handles:
                h.remove()
        n = attn[0].shape[-1]
        rel = torch.eye(n)
        for j in range(len(stock.blocks)):
            cam = (grad[j][0] * attn[j][0]).clamp(min=0).mean(dim=0)
            rel = rel + cam @ rel
        p = stock.num_prefix_tokens
        gh, gw = x.shape[-2] // stock.patch_embed.patch_size[0], x.shape[-1] // stock.patch_embed.patch_size[1]
        out.append(rel[0, p:].reshape(gh, gw).detach())
    return torch.stack(out)


def max_norm(m):
    return m / m.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)


@pytest.mark.parametrize("spec,size", [(TINY, (32, 32)), (TINY, (24, 40)), (TINY_REG, (28, 42))])
def test_gae_matches_chefer_rules_on_stock_timm(spec, size):
    model = tiny_model("linear", spec=spec)
    x = imgs(3, *size)
    ours = gae(model, x)
    ref = chefer_reference(stock_twin(model, spec), x, ours.target)
    assert ours.maps.shape == ref.shape
    gap = (max_norm(ours.maps) - max_norm(ref)).abs().max()
    assert float(gap) <= 1e-4, gap
    # also for a class other than the prediction
    other = (ours.target + 1) % 5
    assert torch.allclose(max_norm(gae(model, x, other).maps), max_norm(chefer_reference(
        stock_twin(model, spec), x, other)), atol=1e-4)


def _grad_cam_reference(model, x, target, lead):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    gh, gw = x.shape[-2] // model.vit.patch_embed.patch_size[0], x.shape[-1] // model.vit.patch_embed.patch_size[1]

    def reshape(t):  # our own transform: prefix tokens dropped, any grid
        return t[:, lead:].reshape(t.shape[0], gh, gw, t.shape[-1]).permute(0, 3, 1, 2)

    with GradCAM(model=model, target_layers=[model.vit.blocks[-1].norm1], reshape_transform=reshape) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in target])


@pytest.mark.parametrize("spec,size", [(TINY, (32, 32)), (TINY, (24, 40)), (TINY_REG, (28, 42))])
def test_gradcam_matches_pytorch_grad_cam(spec, size):
    from pytorch_grad_cam.utils.image import scale_cam_image

    x = imgs(3, *size)
    ours = gradcam(tiny_model("linear", spec=spec), x)
    hooked = tiny_model("linear", spec=spec).requires_grad_(True)  # grad-cam hooks (and needs grads): a copy
    ref = _grad_cam_reference(hooked, x, ours.target, hooked.vit.num_prefix_tokens)
    # grad-cam's output = min-max (resize (min-max (cam))): apply its own scaling to our raw map
    expected = scale_cam_image(scale_cam_image(ours.maps.numpy(), (size[1], size[0])))
    assert ref.shape == expected.shape
    assert float(ours.maps.max()) > 0
    np.testing.assert_allclose(expected, ref, atol=1e-4)


def _torchvision_twin():
    """A tiny random torchvision ViT and the library's timm model with the same weights."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(1)
    tv = VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32,
                           mlp_dim=128, num_classes=5).eval()
    with torch.no_grad():  # torchvision zero-inits the head and class token: randomise everything
        for p in tv.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    twin = tc.build_model("linear", backbone="vit_tiny_patch16_224", num_classes=5, pretrained=False, img_size=32,
                          backbone_kwargs=dict(patch_size=8, depth=3, embed_dim=32, num_heads=2, mlp_ratio=4.0)).eval()
    v, e = twin.vit, tv.encoder
    with torch.no_grad():
        v.patch_embed.proj.weight.copy_(tv.conv_proj.weight)
        v.patch_embed.proj.bias.copy_(tv.conv_proj.bias)
        v.cls_token.copy_(tv.class_token)
        v.pos_embed.copy_(e.pos_embedding)
        for blk, layer in zip(v.blocks, e.layers):
            pairs = [(blk.norm1, layer.ln_1), (blk.norm2, layer.ln_2), (blk.attn.proj, layer.self_attention.out_proj),
                     (blk.mlp.fc1, layer.mlp[0]), (blk.mlp.fc2, layer.mlp[3])]
            for dst, src in pairs:
                dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)
            blk.attn.qkv.weight.copy_(layer.self_attention.in_proj_weight)
            blk.attn.qkv.bias.copy_(layer.self_attention.in_proj_bias)
        v.norm.weight.copy_(e.ln.weight)
        v.norm.bias.copy_(e.ln.bias)
        v.head.weight.copy_(tv.heads.head.weight)
        v.head.bias.copy_(tv.heads.head.bias)
    return tv, twin


def test_legrad_matches_torchcam_on_a_torchvision_twin():
    from torchcam.methods import LeGrad

    tv, twin = _torchvision_twin()
    x = imgs(3)
    assert torch.allclose(tv(x), twin(x), atol=1e-5)  # the twin is the same network
    ours = legrad(twin, x)
    project = lambda t: tv.heads(tv.encoder.ln(t[:, 0]))  # noqa: E731 - CLS score, as the model pools
    with LeGrad(tv, list(tv.encoder.layers), score_projection=project) as extractor:
        scores = tv(x)
        ref = extractor(ours.target.tolist(), scores, normalized=False)[0]
    assert float(ref.max()) > 0
    assert torch.allclose(ours.maps, ref, atol=1e-6, rtol=1e-4), (ours.maps - ref).abs().max()
    # the last two layers only (the LeGrad authors' choice for ViT-B)
    two = legrad(twin, x, last_layers=2)
    with LeGrad(tv, list(tv.encoder.layers)[-2:], score_projection=project) as extractor:
        ref2 = extractor(ours.target.tolist(), tv(x), normalized=False)[0]
    assert torch.allclose(two.maps, ref2, atol=1e-6, rtol=1e-4)
    assert two.extras["first_layer"] == 1 and torch.allclose(two.extras["per_layer"], ours.extras["per_layer"][1:])


def _zero_biases(model):
    """Every additive constant of the network set to 0 (LRP's conservation holds without them)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("bias", "pos_embed", "cls_token", "reg_token", "prompts"):
                p.zero_()
    return model


def _strong_feedback(model):
    """TOAST with a feedback path that matters (A_l = I, B_l = 2I: td_l = 2z) instead of the tiny init."""
    if hasattr(model, "decoders"):
        with torch.no_grad():
            for dec in model.decoders:
                torch.nn.init.eye_(dec.linear.weight)
                torch.nn.init.eye_(dec.linear2.weight).mul_(2.0)
    return model


@pytest.mark.parametrize("method", ["linear", "lora", "vpt-deep", "toast"])
def test_attnlrp_conserves_relevance_with_zero_biases(method):
    model = _strong_feedback(_zero_biases(tiny_model(method))).double()
    x = imgs(3).double()
    cp = attnlrp(model, x, rule="cp")
    logit = cp.extras["logit"]
    # CP-LRP (attention weights constant): the network is linear in the input, all relevance arrives
    assert torch.allclose(cp.maps.flatten(1).sum(1).double(), logit, rtol=1e-5, atol=1e-6)  # float32 maps
    assert torch.allclose(cp.extras["total"], logit, rtol=1e-6, atol=1e-8)
    # AttnLRP: what the softmax rule absorbs is all that is missing
    lrp = attnlrp(model, x, track_softmax=True)
    total, absorbed = lrp.extras["total"], lrp.extras["absorbed"]
    assert torch.allclose(total + absorbed, logit, rtol=1e-6, atol=1e-8), (total + absorbed - logit)
    assert float(absorbed.abs().max()) > 1e-6  # the accounting is not trivially zero
    assert torch.allclose(lrp.maps, attnlrp(model, x).maps)  # tracking does not change the map


def test_attnlrp_rules_leave_values_alone_and_differ_from_plain_gradients():
    model = tiny_model("toast")
    x = imgs(2)
    a = attnlrp(model, x)
    with torch.no_grad():
        assert torch.allclose(a.logits, model(x), atol=1e-5)
    xg = x.clone().requires_grad_(True)
    model(xg).gather(1, a.target.view(-1, 1)).sum().backward()
    plain = (xg * xg.grad).sum(1)
    assert not torch.allclose(plain.sum((1, 2)), a.extras["total"], rtol=1e-3)


def test_lrp_rules_are_thread_local():
    """While one thread runs under the LRP rules, another thread's LayerNorm gradient is the plain one."""
    x = torch.randn(4, 8, requires_grad=True)
    ref = torch.autograd.grad(F.layer_norm(x, (8,)).pow(2).sum(), x)[0]
    entered, done, seen = threading.Event(), threading.Event(), {}

    def other():
        entered.wait()
        seen["g"] = torch.autograd.grad(F.layer_norm(x, (8,)).pow(2).sum(), x)[0]
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with LRPRules():
        entered.set()
        done.wait(10)
        mine = torch.autograd.grad(F.layer_norm(x, (8,)).pow(2).sum(), x)[0]
    t.join()
    assert torch.allclose(seen["g"], ref)
    assert not torch.allclose(mine, ref)


@pytest.mark.parametrize("method", ["toast", "vpt-deep", "lora"])
@pytest.mark.parametrize("kind", KINDS)
def test_batched_equals_per_image(method, kind):
    model = tiny_model(method)
    x = imgs(3, 24, 40)
    batched = attribute(kind, model, x)
    single = torch.cat([attribute(kind, model, x[i:i + 1], target=batched.target[i:i + 1]).maps for i in range(3)])
    assert torch.allclose(batched.maps, single, rtol=1e-4, atol=1e-6), (batched.maps - single).abs().max()


@pytest.mark.parametrize("method", available_methods())
def test_every_method_gives_finite_maps_on_any_grid(method):
    model = tiny_model(method)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for size, grid in [((32, 40), (4, 5)), ((48, 24), (6, 3))]:
        x = imgs(2, *size)
        for kind in KINDS:
            m, res = maps.maps_for(model, x, kind)
            assert m.shape == (2, *grid), (kind, size)
            assert torch.isfinite(m).all() and float(m.abs().max()) > 0, kind
            if kind != "attnlrp":
                assert float(m.min()) >= 0, kind
            assert res.logits.grad_fn is None and res.grid == grid
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model is never modified
    assert all(not b.attn._forward_hooks and not b._forward_hooks for b in model.vit.blocks)


def test_toast_scopes_and_labels():
    model = tiny_model("toast")
    x = imgs(2)
    assert gae(model, x).explains == "top-down pass given bottom-up pass"
    assert attnlrp(model, x).explains == "both passes + feedback path"
    assert gradcam(tiny_model("linear"), x).explains == ""
    assert maps.describe_map("legrad", pass_name="top-down") == "LeGrad · ≥ 0 · top-down pass given bottom-up pass"
    assert maps.describe_map("attnlrp", passes=("bottom-up", "top-down")) == \
        "AttnLRP · signed · both passes + feedback path"
    assert maps.describe_map("gae") == "gradient-weighted rollout (Chefer) · ≥ 0"


def test_toast_attnlrp_reaches_the_feedback_path():
    """The TOAST map changes with the feedback path when only the top-down pass differs (td_scale)."""
    model = _strong_feedback(tiny_model("toast"))
    x = imgs(2)
    full = attnlrp(model, x)
    bottom_only = attnlrp(model, x, forward_kwargs={"td_scale": 0.0}, target=full.target)
    change = (full.maps - bottom_only.maps).abs().max() / bottom_only.maps.abs().max()
    assert float(change) > 0.02


def test_target_and_bad_input():
    model = tiny_model("linear")
    x = imgs(2)
    a = gae(model, x, target=3)
    assert a.target.tolist() == [3, 3]
    assert not torch.allclose(a.maps, gae(model, x, target=1).maps)
    with pytest.raises(InputError, match="out of range"):
        gae(model, x, target=9)
    with pytest.raises(InputError, match="entries"):
        legrad(model, x, target=[0, 1, 2])
    with pytest.raises(InputError, match="unknown attribution kind"):
        attribute("lime", model, x)
    with pytest.raises(InputError, match="eval mode"):
        gradcam(tiny_model("linear").train(), x)
    with torch.inference_mode(), pytest.raises(InputError, match="inference_mode"):
        attnlrp(model, x)
    with pytest.raises(InputError, match="last_layers"):
        legrad(model, x, last_layers=7)


def test_kinds_run_concurrently_on_one_shared_model():
    """Two threads computing different kinds on the same model get what each gets alone (per-call state)."""
    model = tiny_model("toast")
    x = imgs(2)
    alone = {k: attribute(k, model, x).maps for k in ("attnlrp", "gae")}
    got, errors = {"attnlrp": [], "gae": []}, []

    def work(kind):
        try:
            for _ in range(4):
                got[kind].append(attribute(kind, model, x).maps)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for kind, maps_ in got.items():
        assert len(maps_) == 4 and all(torch.allclose(m, alone[kind], atol=1e-6) for m in maps_), kind


# lxt's own CP-LRP rules and torchvision patch map, in a subprocess: lxt patches torch.nn classes
# process-wide, and `import lxt.efficient` fails with transformers 5 (its BERT module imports a removed
# helper), so the child loads lxt.efficient's rules, patches and vit_torch map without the package init.
_LXT_CHILD = r"""
import sys, types
from pathlib import Path
import torch, lxt
from torchvision.models import VisionTransformer

root = Path(lxt.__file__).parent / "efficient"
for name, path in (("lxt.efficient", root), ("lxt.efficient.models", root / "models")):
    pkg = types.ModuleType(name)
    pkg.__path__ = [str(path)]
    sys.modules[name] = pkg
from lxt.efficient.models import vit_torch

for cls, patch in vit_torch.cp_LRP.items():
    assert patch(cls), cls
data = torch.load(sys.argv[1])
tv = VisionTransformer(**data["config"]).eval()
tv.load_state_dict(data["state"])
x = data["x"].clone().requires_grad_(True)
tv(x).gather(1, data["target"].view(-1, 1)).sum().backward()
torch.save((x * x.grad).sum(1).detach(), sys.argv[2])
"""


def test_attnlrp_cp_rule_matches_lxt_on_a_torchvision_twin(tmp_path):
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("lxt") is None:
        pytest.skip("lxt is not installed (pip install --no-deps lxt==2.1; its dependency zennit refuses "
                    "Python < 3.11.11)")
    tv, twin = _torchvision_twin()
    x = imgs(3)
    ours = attnlrp(twin, x, rule="cp")
    cfg = dict(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=128, num_classes=5)
    torch.save({"config": cfg, "state": tv.state_dict(), "x": x, "target": ours.target}, tmp_path / "in.pt")
    done = subprocess.run([sys.executable, "-c", _LXT_CHILD, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    pixel = torch.load(tmp_path / "out.pt")
    ref = pixel.reshape(3, 4, 8, 4, 8).sum(dim=(2, 4))  # lxt's pixel relevance summed per patch
    assert torch.allclose(ours.extras["total"], pixel.flatten(1).sum(1), rtol=1e-4, atol=1e-6)
    assert torch.allclose(ours.maps, ref, rtol=1e-4, atol=1e-6), (ours.maps - ref).abs().max()


def test_models_without_a_class_token():
    """Global average pooling, no prefix token: GAE reads the mean patch row, the rest pool as the model does."""
    spec = dict(backbone="vit_tiny_patch16_224", img_size=32, backbone_kwargs=dict(
        patch_size=8, depth=2, embed_dim=32, num_heads=2, class_token=False, global_pool="avg"))
    for method in ("linear", "toast"):
        model = tiny_model(method, spec=spec)
        x = imgs(2, 32, 24)
        for kind in KINDS:
            m, _ = maps.maps_for(model, x, kind)
            assert m.shape == (2, 4, 3) and torch.isfinite(m).all() and float(m.abs().max()) > 0, (method, kind)


# -- the app's library layer (toast_core.compare) -----------------------------------------------------

def test_compare_panels_and_figures_for_the_attribution_kinds():
    """Compare's grid and the Export figure take every attribution kind, for all seven methods: one map per
    model on its grid, the model's own map (cached), TOAST's label saying what it explains."""
    import numpy as np
    from PIL import Image

    from toast_core import compare as cmp

    entries = cmp.unique_names([cmp.load_entry(f"tiny:{m}") for m in available_methods()])
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8))
    toast = [e.method for e in entries].index("toast")
    for kind in KINDS:
        seen = []
        panels = cmp.compare(entries, image, kind=kind, progress=lambda i, n, name: seen.append((i, n, name)))
        assert [p.name for p in panels] == [e.name for e in entries]
        assert seen == [(i, len(entries), e.name) for i, e in enumerate(entries)]
        for p in panels:
            assert np.isfinite(p.map).all() and p.map.ndim == 2 and np.abs(p.map).max() > 0, (kind, p.name)
            assert p.layer is None and "predicted class" in p.label
        expected = "both passes + feedback path" if kind == "attnlrp" else "top-down pass given bottom-up pass"
        assert expected in panels[toast].label and "given" not in panels[0].label
        e = entries[toast]
        x = cmp.preprocess(e, image)
        assert np.allclose(panels[toast].map, attribute(kind, e.model, x.clone()).maps[0].numpy(), atol=1e-5)
    spec, meta, prov = cmp.figure_spec(entries[:2] + entries[toast:toast + 1], [("img", image)], kind="attnlrp",
                                       columns="images", layers=[None])
    assert "AttnLRP, signed" in spec.map_kind and "(two-pass models: both passes + feedback path)" in spec.map_kind
    assert len(spec.panels) == 3 and prov["map_kind"] == "attnlrp"


@pytest.mark.usefixtures("restore_torch_threads", "app_tiny_models")
def test_compare_page_renders_every_attribution_kind_for_seven_methods():
    """The app's Compare page (AppTest, tiny models of all seven methods): each new kind renders one map per
    method without an exception, with its explanation; AttnLRP on a symmetric diverging scale."""
    from .test_app import _app, _blocks, _charts, _no_exception, _slug

    at = _app()
    for kind in KINDS:
        at.selectbox(key="cmp-kind").set_value(kind).run()
        _no_exception(at)
        charts = {k: c for k, c in _charts(at).items() if k.startswith("fig-")}
        assert len(charts) == 7, (kind, sorted(charts))
        assert f"panel-{_slug('toast')}" in _blocks(at.main)
        captions = " ".join(c.value for c in at.caption)
        assert maps.MAP_KINDS[kind] in captions and "predicted class" in captions
        if kind == "attnlrp":
            heat = [t for t in charts[f"fig-{_slug('toast')}"]["data"] if t["type"] == "heatmap"][0]
            assert heat["zmin"] == pytest.approx(-heat["zmax"])
            assert at.selectbox(key="cmp-cmap-signed").value == "RdBu_r"
            assert "both passes + feedback path" in captions
        else:
            assert "top-down pass given bottom-up pass" in captions


@pytest.mark.usefixtures("restore_torch_threads", "app_tiny_models")
def test_export_page_builds_an_attribution_figure():
    from .test_app import _app, _captions, _no_exception

    at = _app("views/export.py")
    at.multiselect(key="exp-rows").set_value(["linear", "toast"]).run()
    at.radio(key="exp-columns").set_value("images").run()
    at.selectbox(key="exp-kind").set_value("attnlrp").run()
    _no_exception(at)
    opts = at.multiselect(key="exp-images").options
    at.multiselect(key="exp-images").set_value(opts[:2]).run()
    at.selectbox(key="exp-scale").set_value("signed").run()
    _no_exception(at)
    assert any("preview (2×2 panels" in (c.value or "") for c in _captions(at))
    assert any("Use the signed scale" in c.value for c in at.caption)


def test_layer_strip_of_legrad_is_each_layers_own_term():
    from PIL import Image

    from toast_core import compare as cmp

    e = cmp.load_entry("tiny:toast")
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    strip = cmp.layer_strip(e, image, kind="legrad")
    a = legrad(e.model, cmp.preprocess(e, image).clone())
    assert strip.shape == (e.num_layers, *a.maps.shape[1:])
    assert np.allclose(strip, a.extras["per_layer"][:, 0].numpy(), atol=1e-6)
    assert np.allclose(strip.mean(0), cmp.attribution(e, image, kind="legrad"), atol=1e-6)
    with pytest.raises(InputError, match="per-layer"):
        cmp.layer_strip(e, image, kind="gae")


@pytest.mark.usefixtures("restore_torch_threads", "app_tiny_models")
def test_layers_page_shows_legrad_per_layer():
    from .test_app import _app, _blocks, _no_exception, _slug, _walk

    at = _app("views/layers.py")
    assert "gae" not in at.selectbox(key="lay-kind").options  # no per-layer maps
    at.selectbox(key="lay-kind").set_value("legrad").run()
    _no_exception(at)
    strip = _blocks(at.main)[f"strip-{_slug('toast')}"]
    images = [c for c in _walk(strip) if type(getattr(c, "proto", None)).__name__ == "ImageList"]
    assert len(images) == 1 and len(images[0].proto.imgs) == 4  # 4 layers
    assert any("LeGrad · ≥ 0 · top-down pass given bottom-up pass" in m.value for m in at.markdown)


@pytest.mark.usefixtures("restore_torch_threads", "app_tiny_models")
def test_inspector_shows_attribution_under_steering():
    from .test_app import _app, _charts, _no_exception, _z

    at = _app("views/inspector.py")
    assert "ins-attr-steered" not in _charts(at)  # off by default: nothing extra computed
    at.selectbox(key="ins-attr-kind").set_value("attnlrp").run()
    _no_exception(at)
    charts = _charts(at)
    steered, trained = (_z([t for t in charts[k]["data"] if t["type"] == "heatmap"][0])
                        for k in ("ins-attr-steered", "ins-attr-trained"))
    assert np.allclose(steered, trained)  # steering 1 with the learned ξ = as trained
    assert any("both passes + feedback path" in c.value for c in at.caption)
    at.slider(key="ins-scale").set_value(0.0).run()
    _no_exception(at)
    charts = _charts(at)
    steered = _z([t for t in charts["ins-attr-steered"]["data"] if t["type"] == "heatmap"][0])
    assert not np.allclose(steered, trained)  # without the top-down term the map changes
    at.selectbox(key="ins-attr-kind").set_value("gae").run()
    _no_exception(at)
    assert any("top-down pass given bottom-up pass" in c.value for c in at.caption)


@pytest.mark.parametrize("method", ["vpt-deep", "vpt-shallow", "toast"])
def test_gae_equals_the_full_matrix_rules_with_prompts_and_passes(method):
    """GAE's row-vector rollout equals the full R ← R + Ā·R rollout computed from the recorder's explicit
    attention matrices (unfused path) and their autograd gradients; for VPT-deep also with the rows of the
    fresh prompts reset to identity before every block (the discarded prompt outputs get no gradient)."""
    from toast_core.recording import AttentionRecorder, extract_attention

    model = tiny_model(method)
    x = imgs(2, 24, 40)
    ours = gae(model, x)
    rec = AttentionRecorder(full=True, keep_grad=True, token_norm=False)
    res = extract_attention(model, x.clone().requires_grad_(True), recorder=rec)  # every A on the graph
    attn = rec.passes[-1].attn  # the final pass's (B, H, N, N) matrices, on the graph
    grads = torch.autograd.grad(res.logits.gather(1, ours.target.view(-1, 1)).sum(), attn)
    (h, w), p, t = rec.passes[-1].layout
    n = attn[0].shape[-1]
    rel = torch.eye(n).expand(2, n, n).clone()
    for layer, (a, g) in enumerate(zip(attn, grads)):
        if layer > 0 and method == "vpt-deep":  # fresh prompts: their rows depend only on themselves
            rel[:, p:p + t] = torch.eye(n)[p:p + t]
        rel = rel + (g * a).clamp(min=0).mean(dim=1) @ rel
    ref = rel[:, 0, p + t:].reshape(2, h, w).detach()
    assert torch.allclose(ours.maps, ref, rtol=1e-4, atol=1e-7), (ours.maps - ref).abs().max()
