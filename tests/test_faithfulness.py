"""Which map is faithful? Deletion / insertion curves on a model whose true pixel importance is known,
the ranking table and its CIs, every map kind scored on tiny ViTs, and ``analyze --faithfulness``."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.conftest import tiny_model
from toast_core.analysis import faithfulness as fa
from toast_core.data.demo_task import DemoTaskConfig, generate_demo_task
from toast_core.data.masked_dataset import MaskedImageDataset
from toast_core.errors import InputError
from toast_core.maps import MAP_KINDS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMG, GRID = 32, 4  # 4x4 patches of 8 px


class PatchLinear(torch.nn.Module):
    """logit_0 = sum_p w_p * (mean of patch p over channels and pixels), logit_1 = 0: additive in patches."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = w

    def forward(self, x):
        means = torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), IMG // GRID)[:, 0]  # (B, 4, 4)
        logit = (means * self.w).flatten(1).sum(1) * 0.5
        return torch.stack([logit, torch.zeros_like(logit)], dim=1)


def _setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(GRID, GRID, generator=g)  # signed weights: some patches speak against the class
    levels = torch.rand(3, GRID, GRID, generator=g) + 0.2  # patch-level contrast, plus pixel noise
    image = levels.repeat_interleave(IMG // GRID, 1).repeat_interleave(IMG // GRID, 2)
    image = image + 0.05 * torch.randn(3, IMG, IMG, generator=g)
    model = PatchLinear(w)
    score = lambda x: torch.softmax(model(x), dim=-1)  # noqa: E731
    patch_means = torch.nn.functional.avg_pool2d(image.mean(0, keepdim=True), IMG // GRID)[0]
    return model, score, image, w, patch_means


def test_true_importance_beats_every_other_order_on_an_additive_model():
    """With a zero baseline the true importance of patch p is w_p * mean_p. Removing patches in its order
    gives the lowest probability at every step of all orders (so the lowest deletion AUC), revealing in
    it the highest; the inverted map is the worst on both. Fails if the curves ranked ascending, mapped
    patches to the wrong pixels or mixed up the two curves."""
    _, score, image, w, pm = _setup()
    truth = (w * pm).numpy()
    assert truth.min() < 0 < truth.max()  # signed: ranked on raw values, not |.|
    kw = dict(steps=8, deletion_baseline="zero", insertion_baseline="zero")
    best = fa.image_curves(score, image, truth, 0, **kw)
    worst = fa.image_curves(score, image, -truth, 0, **kw)
    rand = [fa.image_curves(score, image, fa.random_maps([i], (GRID, GRID))[0], 0, **kw) for i in range(12)]
    for r in rand:
        assert best["deletion_auc"] <= r["deletion_auc"] + 1e-9 and r["deletion_auc"] <= worst["deletion_auc"] + 1e-9
        assert best["insertion_auc"] >= r["insertion_auc"] - 1e-9 and r["insertion_auc"] >= worst["insertion_auc"] - 1e-9
        assert np.all(best["deletion"] <= r["deletion"] + 1e-9)  # optimal at every step
    assert best["deletion_auc"] < np.mean([r["deletion_auc"] for r in rand]) - 0.02
    assert best["insertion_auc"] > np.mean([r["insertion_auc"] for r in rand]) + 0.02
    # both curves run from the full image to the baseline (and back)
    p_full, p_zero = score(image[None])[0, 0].item(), score(torch.zeros(1, 3, IMG, IMG))[0, 0].item()
    assert best["deletion"][0] == pytest.approx(p_full, abs=1e-6) and best["deletion"][-1] == pytest.approx(p_zero, abs=1e-6)
    assert best["insertion"][0] == pytest.approx(p_zero, abs=1e-6) and best["insertion"][-1] == pytest.approx(p_full, abs=1e-6)


def test_default_baselines_mean_for_deletion_blur_for_insertion():
    """Deletion replaces by the image's mean colour: the true importance is then w_p * (mean_p - mu)."""
    _, score, image, w, pm = _setup(1)
    truth = (w * (pm - image.mean())).numpy()
    best = fa.image_curves(score, image, truth, 0, steps=16)
    worst = fa.image_curves(score, image, -truth, 0, steps=16)
    assert best["deletion_auc"] < worst["deletion_auc"] - 0.05
    p_mean = score(image.mean((1, 2), keepdim=True).expand_as(image)[None])[0, 0].item()
    assert best["deletion"][-1] == pytest.approx(p_mean, abs=1e-6)
    from torchvision.transforms.functional import gaussian_blur
    blurred = gaussian_blur(image[None], [7, 7], [IMG / 45] * 2)  # sigma = max(H, W) / 45, 3-sigma kernel
    assert best["insertion"][0] == pytest.approx(score(blurred)[0, 0].item(), abs=1e-6)  # insertion: from the blur
    assert best["insertion"][0] != pytest.approx(p_mean, abs=1e-4)


def test_ordering_map_and_kinds():
    m = np.array([[-2.0, 1.0], [0.5, -0.1]])
    o = fa.ordering_map(m)
    assert o.min() == 0 and np.array_equal(np.argsort(o.ravel()), np.argsort(m.ravel()))
    assert np.array_equal(fa.ordering_map(np.array([[1.0, 2.0]])), [[1.0, 2.0]])  # non-negative maps unchanged
    assert fa.parse_map_kinds() == list(MAP_KINDS) + ["random"]  # generic: new kinds join by registering
    assert fa.parse_map_kinds("cls, random") == ["cls", "random"]
    with pytest.raises(InputError, match="map kinds"):
        fa.parse_map_kinds("cls,nope")
    with pytest.raises(InputError):
        fa.ordering_map(np.array([[np.nan, 1.0]]))
    a, b = fa.random_maps([3, 4], (2, 3)), fa.random_maps([3], (2, 3))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], a[1])  # same image, same noise, any batch


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = generate_demo_task(tmp_path_factory.mktemp("task") / "quick", DemoTaskConfig.quick(image_size=64), workers=1)
    return MaskedImageDataset(d, "test", image_size=IMG, mean=(0.5,) * 3, std=(0.5,) * 3)


@pytest.fixture(scope="module")
def scored(dataset):
    models = {"linear": tiny_model("linear", 12), "toast": tiny_model("toast", 12)}
    seen = []
    rows = fa.run_faithfulness(models, dataset, steps=3, max_images=3, batch_size=2, device="cpu",
                               progress=lambda d, t: seen.append((d, t)))
    return models, rows, seen


def test_every_kind_of_every_method_is_scored(scored):
    models, rows, seen = scored
    kinds = list(MAP_KINDS) + ["random"]
    assert len(rows) == 3 * len(models) * len(kinds)
    assert {(r["method"], r["kind"]) for r in rows} == {(m, k) for m in models for k in kinds}
    assert all(set(r) == set(fa.FAITH_COLUMNS) for r in rows)
    for r in rows:
        assert 0 <= r["deletion_auc"] <= 1 and 0 <= r["insertion_auc"] <= 1 and r["seconds"] > 0
        assert r["ins_minus_del"] == pytest.approx(r["insertion_auc"] - r["deletion_auc"])
        assert r["pointing_hit"] in (0.0, 1.0) and 0 <= r["energy_target"] <= 1
    assert seen[-1] == (6, 6)
    assert all(not m.training for m in models.values())  # restored to what they were (eval)


def test_ranking_table_rows_ranks_and_cis(scored):
    _, rows, _ = scored
    table = fa.ranking_table(rows, n_boot=200)
    kinds = list(MAP_KINDS) + ["random"]
    assert [(t["method"], t["kind"]) for t in table if t["method"] == "linear"] != []
    assert sorted((t["method"], t["kind"]) for t in table) == sorted((m, k) for m in ("linear", "toast") for k in kinds)
    for t in table:
        assert t["n"] == 3
        for m, _, _ in fa.FAITH_METRICS:
            mean, lo, hi = t[m]
            if math.isfinite(mean):
                assert lo - 1e-12 <= mean <= hi + 1e-12
    for method in ("linear", "toast"):
        mine = [t for t in table if t["method"] == method]
        assert [t["rank"] for t in mine] == list(range(1, len(kinds) + 1))
        vals = [t["ins_minus_del"][0] for t in mine]
        assert vals == sorted(vals, reverse=True)
        dels = sorted(mine, key=lambda t: t["rank_deletion"])
        assert [t["deletion_auc"][0] for t in dels] == sorted(t["deletion_auc"][0] for t in mine)
        assert math.isnan(mine[-1]["gap"][0]) and all(t["gap"][0] >= -1e-12 for t in mine[:-1])
    md = fa.ranking_markdown(table, steps=3)
    assert md.count("| linear |") == len(kinds) and "deletion AUC ↓" in md and "`random`" in md
    flat = fa.ranking_records(table)
    assert {"deletion_auc_mean", "deletion_auc_lo", "gap_hi", "rank", "seconds"} <= set(flat[0])


def test_paired_gap_uses_matching_images():
    a = [dict(image_id=i, ins_minus_del=0.5 + 0.01 * i) for i in range(5)]
    b = [dict(image_id=i, ins_minus_del=0.4 + 0.01 * i) for i in range(4, -1, -1)]  # other order
    mean, lo, hi = fa.paired_gap(a, b, n_boot=100)
    assert mean == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)


def test_attach_fills_the_last_layer_cls_rows_of_the_final_pass():
    frows = [dict(method="toast", image_id="a", kind="cls", deletion_auc=0.1, insertion_auc=0.9),
             dict(method="toast", image_id="a", kind="rollout", deletion_auc=0.2, insertion_auc=0.8)]
    rows = [dict(method="toast", image_id="a", kind=k, layer=l, deletion_auc=math.nan, insertion_auc=math.nan, **{"pass": p})
            for k in ("cls", "rollout") for l in (1, 2) for p in ("bottom-up", "top-down")]
    assert fa.attach_to_rows(rows, frows, {"toast": 3}) == 1
    hit = [r for r in rows if not math.isnan(r["deletion_auc"])]
    assert hit == [dict(method="toast", image_id="a", kind="cls", layer=2, deletion_auc=0.1, insertion_auc=0.9,
                        **{"pass": "top-down"})]


def test_errors(dataset):
    m = {"linear": tiny_model("linear", 12)}
    with pytest.raises(InputError, match="no model"):
        fa.run_faithfulness({}, dataset)
    with pytest.raises(InputError, match="steps"):
        fa.run_faithfulness(m, dataset, steps=0)
    with pytest.raises(InputError, match="unknown model"):
        fa.run_faithfulness(m, dataset, forward_kwargs={"x": {}})
    with pytest.raises(InputError, match="no faithfulness rows"):
        fa.ranking_table([])


def test_cli_writes_the_ranking_table_and_plot(tmp_path, monkeypatch, capsys):
    import json

    from toast_core.analysis import read_rows_csv
    from toast_core.cli import main

    monkeypatch.setenv("TOAST_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    rc = main(["analyze", "--quick", "--out", str(out), "--kinds", "cls", "--layers", "last", "--max-images", "3",
               "--faithfulness", "--map-kinds", "cls,rollout,random", "--faithfulness-max-images", "3", "--no-progress",
               "--bootstrap", "100"])
    assert rc == 0
    md = (out / "summary.md").read_text()
    assert "Which map is faithful?" in md
    ranking = read_rows_csv(out / "faithfulness_ranking.csv")
    methods = ["linear", "finetune", "lora", "vpt-shallow", "vpt-deep", "toast", "toast-lite"]
    assert sorted((r["method"], r["kind"]) for r in ranking) == sorted((m, k) for m in methods
                                                                        for k in ("cls", "rollout", "random"))
    assert all(r["deletion_auc_lo"] <= r["deletion_auc_mean"] <= r["deletion_auc_hi"] for r in ranking)
    assert len(read_rows_csv(out / "faithfulness_rows.csv")) == 3 * len(methods) * 3
    for name in ("faithfulness_ranking.png", "faithfulness_ranking.pdf"):
        assert (out / name).stat().st_size > 1000
    # the cls rows of the attention analysis carry the same deletion / insertion values
    rows = read_rows_csv(out / "rows.csv")
    frows = {(r["method"], r["image_id"]): r for r in read_rows_csv(out / "faithfulness_rows.csv") if r["kind"] == "cls"}
    final = [r for r in rows if r["pass"] in ("main", "top-down")]
    assert final and all(r["deletion_auc"] == pytest.approx(frows[(r["method"], r["image_id"])]["deletion_auc"], abs=1e-5)
                         for r in final)
    meta = json.loads((out / "run.json").read_text())
    assert meta["faithfulness_steps"] == 4 and meta["faithfulness_map_kinds"] == ["cls", "random", "rollout"]
    capsys.readouterr()
    assert main(["analyze", "--quick", "--out", str(tmp_path / "x"), "--faithfulness", "--map-kinds", "nope"]) == 1
    assert "map kinds must be among" in capsys.readouterr().err and not (tmp_path / "x" / "rows.csv").exists()


def test_app_session_ranks_every_group(dataset):
    """The Analysis page's runner: the ranking over the chosen kinds, the cls values in the headline."""
    from toast_core.analysis import session

    task = dataset.root
    models = {"linear": tiny_model("linear", 12), "vpt-deep": tiny_model("vpt-deep", 12)}
    res = session.run_app_analysis(models, task, n_images=3, layers="last", device="cpu", faithfulness=True,
                                   faithfulness_steps=3, faithfulness_max_images=2, map_kinds=["cls", "random"],
                                   n_boot=100)
    assert res.n_faithfulness == 2 and len(res.ranking) == 4
    assert {(r["method"], r["map kind"]) for r in res.ranking} == {(m, k) for m in models
                                                                    for k in ("CLS attention", "random")}
    assert all(r["images"] == 2 for r in res.ranking)
    assert {"faithfulness_ranking.csv", "faithfulness_rows.csv", "faithfulness_ranking.png"} <= set(res.files)
    assert "Which map is faithful?" in res.files["summary.md"].decode()
    assert all("deletion AUC ↓" in row for row in res.headline["cls"])


def test_on_a_users_image_folder(tmp_path):
    """A user's annotated folder: deletion / insertion for every image, localisation only where a mask is."""
    from PIL import Image

    from toast_core.analysis import load_dataset

    rng = np.random.default_rng(1)
    for c in ("cat", "dog"):
        for split in ("train", "test"):
            (tmp_path / split / c).mkdir(parents=True)
            for k in range(2):
                Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(tmp_path / split / c / f"{k}.png")
    (tmp_path / "masks" / "test" / "cat").mkdir(parents=True)
    mask = np.zeros((24, 40), np.uint8)
    mask[:12, :20] = 255
    Image.fromarray(mask).save(tmp_path / "masks" / "test" / "cat" / "0.png")
    model = tiny_model("linear", num_classes=2)
    ds = load_dataset(tmp_path, "test", model=model)
    rows = fa.run_faithfulness({"linear": model}, ds, ["cls", "random"], steps=2, device="cpu")
    assert len(rows) == 2 * len(ds) == 8
    assert all(math.isfinite(r["deletion_auc"]) and math.isfinite(r["insertion_auc"]) for r in rows)
    masked = [r for r in rows if r["image_id"] == 0]
    assert all(0 <= r["energy_target"] <= 1 for r in masked)
    assert all(math.isnan(r["energy_target"]) and math.isnan(r["pointing_hit"]) for r in rows if r["image_id"] != 0)
    table = fa.ranking_table(rows, n_boot=50)
    assert all(t["n"] == 4 and math.isfinite(t["energy_target"][0]) for t in table)  # NaNs dropped, not averaged
