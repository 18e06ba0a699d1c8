"""Pure rendering helpers: upsampling, colour scales, overlays, difference maps, plotly heat maps."""
import matplotlib
import numpy as np
import pytest

from toast_core.errors import InputError
from toast_core.viz.render import (
    color_scale,
    colorize,
    difference_maps,
    grid_figure,
    heatmap_figure,
    overlay,
    upsample_map,
)

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (32, 48, 3), dtype=np.uint8)  # (H, W, 3), non-square
MAP = RNG.random((2, 3))  # (h, w) patch grid, 16x16 patches


def test_upsample_nearest_gives_patch_blocks():
    up = upsample_map(MAP, (32, 48), mode="nearest")
    assert up.shape == (32, 48)
    for r in range(2):
        for c in range(3):
            block = up[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16]
            assert np.all(block == MAP[r, c])


def test_upsample_bilinear_matches_torch_align_corners_false():
    torch = pytest.importorskip("torch")
    m = RNG.random((3, 5))
    ours = upsample_map(m, (21, 40), mode="bilinear")
    ref = torch.nn.functional.interpolate(torch.from_numpy(m)[None, None], size=(21, 40), mode="bilinear",
                                          align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    assert m.min() <= ours.min() and ours.max() <= m.max()


def test_upsample_rejects_bad_input():
    with pytest.raises(InputError, match="mode"):
        upsample_map(MAP, (4, 4), mode="bicubic")
    with pytest.raises(InputError, match="NaN"):
        upsample_map(np.array([[1.0, np.nan]]), (4, 4))
    with pytest.raises(InputError, match="2-D"):
        upsample_map(np.zeros((2, 2, 2)), (4, 4))


def test_shared_scale_is_one_range_over_all_panels():
    a, b = np.array([[0.0, 1.0]]), np.array([[2.0, 5.0]])
    assert color_scale([a, b], mode="shared") == [(0.0, 5.0), (0.0, 5.0)]


def test_per_panel_scale_is_each_panels_own_range():
    a, b = np.array([[0.0, 1.0]]), np.array([[2.0, 5.0]])
    assert color_scale([a, b], mode="per-panel") == [(0.0, 1.0), (2.0, 5.0)]


def test_signed_scale_is_symmetric_around_zero():
    a, b = np.array([[-0.5, 0.2]]), np.array([[0.1, 3.0]])
    shared = color_scale([a, b], mode="shared", signed=True)
    assert shared == [(-3.0, 3.0), (-3.0, 3.0)]
    per = color_scale([a, b], mode="per-panel", signed=True)
    assert per == [(-0.5, 0.5), (-3.0, 3.0)]


def test_percentile_clips_outliers_and_constant_maps_get_a_valid_range():
    m = np.concatenate([np.linspace(0, 1, 99), [100.0]])[None, :]
    lo, hi = color_scale([m], percentile=98)[0]
    assert 0 <= lo < hi < 2
    (lo, hi), = color_scale([np.full((2, 2), 3.0)])
    assert lo == 3.0 and hi > lo
    assert color_scale([np.zeros((2, 2))], signed=True) == [(-1.0, 1.0)]
    with pytest.raises(InputError, match="percentile"):
        color_scale([m], percentile=0)
    with pytest.raises(InputError, match="mode"):
        color_scale([m], mode="global")


def test_colorize_uses_the_matplotlib_colormap_and_clips():
    m = np.array([[-1.0, 0.0, 0.5, 1.0, 2.0]])
    rgb = colorize(m, 0.0, 1.0, "viridis")
    assert rgb.shape == (1, 5, 3) and rgb.dtype == np.uint8
    cm = matplotlib.colormaps["viridis"]
    np.testing.assert_array_equal(rgb[0, 1], cm(0.0, bytes=True)[:3])
    np.testing.assert_array_equal(rgb[0, 3], cm(1.0, bytes=True)[:3])
    np.testing.assert_array_equal(rgb[0, 0], rgb[0, 1])  # clipped below
    np.testing.assert_array_equal(rgb[0, 4], rgb[0, 3])  # clipped above
    assert colorize(m, 0, 1, rgba=True).shape == (1, 5, 4)
    with pytest.raises(InputError, match="colormap"):
        colorize(m, 0, 1, "no-such-map")
    with pytest.raises(InputError, match="vmin < vmax"):
        colorize(m, 1, 1)


def test_overlay_shape_dtype_and_alpha_extremes():
    out = overlay(IMAGE, MAP, 0.0, 1.0, alpha=0.5)
    assert out.shape == IMAGE.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(overlay(IMAGE, MAP, 0.0, 1.0, alpha=0.0), IMAGE)
    full = overlay(IMAGE, MAP, 0.0, 1.0, cmap="magma", alpha=1.0, upsample="nearest")
    np.testing.assert_array_equal(full, colorize(upsample_map(MAP, (32, 48), "nearest"), 0.0, 1.0, "magma"))
    # half way lies between image and colour map, pixel by pixel
    lo = np.minimum(IMAGE, full).astype(int)
    hi = np.maximum(IMAGE, full).astype(int)
    half = overlay(IMAGE, MAP, 0.0, 1.0, cmap="magma", alpha=0.5, upsample="nearest").astype(int)
    assert np.all((lo <= half) & (half <= hi))


@pytest.mark.parametrize(
    "image, m, alpha, match",
    [
        (IMAGE, MAP, 1.5, "alpha"),
        (IMAGE, MAP, -0.1, "alpha"),
        (IMAGE.astype(np.float32), MAP, 0.5, "uint8"),
        (IMAGE[..., 0], MAP, 0.5, r"\(H, W, 3\)"),
        (IMAGE, np.array([[0.0, np.inf]]), 0.5, "infinite"),
    ],
)
def test_overlay_validates_inputs(image, m, alpha, match):
    with pytest.raises(InputError, match=match):
        overlay(image, m, 0.0, 1.0, alpha=alpha)


def test_difference_maps_subtract_the_reference():
    maps = {"linear": np.ones((2, 2)), "toast": np.full((2, 2), 3.0), "lora": np.zeros((2, 2))}
    diff = difference_maps(maps, "linear")
    assert list(diff) == ["toast", "lora"]
    np.testing.assert_array_equal(diff["toast"], np.full((2, 2), 2.0))
    np.testing.assert_array_equal(diff["lora"], np.full((2, 2), -1.0))
    with_ref = difference_maps(maps, "linear", include_reference=True)
    np.testing.assert_array_equal(with_ref["linear"], np.zeros((2, 2)))
    with pytest.raises(InputError, match="reference"):
        difference_maps(maps, "vpt")
    with pytest.raises(InputError, match="shape"):
        difference_maps({"a": np.ones((2, 2)), "b": np.ones((3, 3))}, "a")


def test_heatmap_figure_hover_holds_patch_and_value():
    fig = heatmap_figure(IMAGE, MAP, 0.0, 1.0, cmap="inferno", alpha=0.6, title="CLS attention")
    image_trace, heat = fig.data
    assert image_trace.type == "image" and heat.type == "heatmap"
    assert image_trace.source.startswith("data:image/jpeg;base64,") and image_trace.z is None
    import base64
    import io

    from PIL import Image

    from toast_core.viz.render import image_data_uri

    def decode(uri):
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))

    assert decode(image_trace.source).shape == IMAGE.shape  # same pixel grid as the heat map's
    smooth = np.stack([*np.meshgrid(np.linspace(0, 255, 48), np.linspace(0, 255, 32)), np.full((32, 48), 90.0)],
                      axis=-1).astype(np.uint8)
    assert np.abs(decode(image_data_uri(smooth)).astype(int) - smooth.astype(int)).mean() < 3
    np.testing.assert_array_equal(np.asarray(heat.z), MAP)
    custom = np.asarray(heat.customdata)
    assert custom.shape == (2, 3, 2)
    assert custom[1, 2].tolist() == [1, 2]  # (row, col) of the patch
    assert "row %{customdata[0]}" in heat.hovertemplate and "%{z" in heat.hovertemplate
    assert (heat.zmin, heat.zmax, heat.opacity) == (0.0, 1.0, 0.6)
    # cells cover the image: 3 columns of 16 px from pixel edge -0.5 to W - 0.5
    assert heat.x0 - heat.dx / 2 == -0.5 and heat.x0 + heat.dx * 2.5 == 48 - 0.5
    assert fig.layout.yaxis.scaleanchor == "x" and fig.layout.yaxis.autorange == "reversed"
    assert fig.layout.title.text == "CLS attention" and fig.layout.margin.l <= 10


def test_heatmap_figure_without_image_and_bad_range():
    fig = heatmap_figure(None, MAP, 0.0, 1.0)
    assert [t.type for t in fig.data] == ["heatmap"]
    with pytest.raises(InputError, match="vmin < vmax"):
        heatmap_figure(IMAGE, MAP, 1.0, 0.0)


def test_grid_figure_has_one_subplot_per_panel_and_one_colour_bar():
    panels = [[(IMAGE, MAP), (IMAGE, MAP * 2)], [(None, MAP), (IMAGE, MAP)]]
    scales = [[(0.0, 2.0)] * 2] * 2
    fig = grid_figure(panels, scales, row_labels=["linear", "toast"], col_labels=["L6", "L12"])
    heats = [t for t in fig.data if t.type == "heatmap"]
    assert len(heats) == 4 and sum(bool(t.showscale) for t in heats) == 1
    assert [a.text for a in fig.layout.annotations] == ["linear · L6", "linear · L12", "toast · L6", "toast · L12"]
    with pytest.raises(InputError, match="rectangular"):
        grid_figure([[(IMAGE, MAP)], []], scales)
