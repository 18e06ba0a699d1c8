"""The app at first glance on laptop screens, in real headless Chromium (issue 20): at 1024×768 and
1366×768 every Compare map shows its whole image at the image's aspect ratio, no page is wider than
the window, no page raises, the browser asks no host but the app's own, and an exported one-image
figure (columns = images) keeps its title and caption inside the PDF page."""
from __future__ import annotations

import re
import shutil
import subprocess
from urllib.parse import urlsplit

import pytest

from tests.browser.expect import make_image
from tests.browser.ui import exceptions, goto_page, open_app, upload, wait_charts, wait_idle, wait_rerun, wait_text

pytestmark = pytest.mark.browser

LAPTOPS = [(1024, 768), (1366, 768)]
PAGES = ["Compare", "Layers", "TOAST inspector", "Analysis", "Models", "Export"]

#: per Compare card: the map image's box, the plot area and the card, in CSS px
MAP_BOXES = """() => Array.from(document.querySelectorAll('[class*="st-key-panel-"]')).map(card => {
    const img = card.querySelector('.js-plotly-plot g.imagelayer image');
    const area = card.querySelector('.js-plotly-plot .nsewdrag');
    const box = el => { const r = el.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
    return {card: box(card), img: img && box(img), area: area && box(area)};
})"""

#: what sticks out of the window or of a scroll box (tables): [description, overflow px]
OVERFLOW = """() => {
    const W = window.innerWidth, out = [];
    if (document.documentElement.scrollWidth > W) out.push(['document', document.documentElement.scrollWidth - W]);
    for (const el of document.querySelectorAll('[data-testid="stMain"] *')) {
        const r = el.getBoundingClientRect();
        if (r.width === 0 || r.height === 0) continue;
        const sx = getComputedStyle(el).overflowX;
        if ((sx === 'auto' || sx === 'scroll') && el.scrollWidth > el.clientWidth + 1)
            out.push(['scrolls sideways: ' + (el.className || el.tagName).toString().slice(0, 80),
                      el.scrollWidth - el.clientWidth]);
        if (r.right > W + 1) {  // past the window's edge, unless an ancestor clips it inside the window
            let clipped = false;
            for (let a = el.parentElement; a; a = a.parentElement) {
                const s = getComputedStyle(a);
                if (s.overflowX !== 'visible' && a.getBoundingClientRect().right <= W + 1) { clipped = true; break; }
            }
            if (!clipped) out.push(['past the window: ' + (el.className || el.tagName).toString().slice(0, 80),
                                    r.right - W]);
        }
    }
    return out;
}"""


def intersect(*boxes):
    x0, y0 = max(b[0] for b in boxes), max(b[1] for b in boxes)
    x1, y1 = min(b[2] for b in boxes), min(b[3] for b in boxes)
    return max(0.0, x1 - x0), max(0.0, y1 - y0)


def test_compare_maps_whole_at_laptop_widths(page, app_server, tmp_path):
    open_app(page, app_server.url)
    width, height = 150, 100  # a 3:2 upload: a squeezed or cropped map changes its shape
    upload(page, make_image(tmp_path / "wide.png", seed=5, size=(width, height)))
    for w, h in LAPTOPS:
        page.set_viewport_size({"width": w, "height": h})
        wait_idle(page)
        wait_charts(page, 7)
        page.wait_for_timeout(300)  # plotly relayout after the resize
        cards = page.evaluate(MAP_BOXES)
        assert len(cards) == 7, cards
        for c in cards:
            assert c["img"] and c["area"], c
            img_w, img_h = c["img"][2] - c["img"][0], c["img"][3] - c["img"][1]
            vis_w, vis_h = intersect(c["img"], c["area"], c["card"])
            # the whole image is drawn (nothing cut by the plot area or the card) ...
            assert vis_w * vis_h >= 0.99 * img_w * img_h, (w, c)
            # ... at the input's aspect ratio, and large enough to read
            assert abs(vis_w / vis_h - width / height) <= 0.05 * width / height, (w, vis_w, vis_h)
            assert vis_w >= 120, (w, vis_w)
        assert page.evaluate(OVERFLOW) == []
        assert exceptions(page) == []
    # all heads: every head thumbnail whole (its box has the input's aspect; st.image does not crop
    # to a slot narrower than the image), labelled from 1, and still nothing wider than the window
    radio = page.locator('[data-testid="stRadio"]', has_text="Heads").first
    wait_rerun(page, lambda: radio.locator("label", has_text="all heads").first.click())
    wait_charts(page, 7)
    thumbs = page.evaluate("""() => Array.from(document.querySelectorAll('[class*="st-key-heads-"] img')).map(i => {
        const r = i.getBoundingClientRect(); return [r.width, r.height, i.naturalWidth, i.naturalHeight]; })""")
    assert thumbs, "no head thumbnails"
    for bw, bh, nw, nh in thumbs:
        assert abs(bw / bh - width / height) <= 0.05 * width / height and abs(bw / bh - nw / nh) <= 0.02, thumbs
    assert "head 1" in page.locator('[class*="st-key-heads-"]').first.inner_text()
    assert page.evaluate(OVERFLOW) == []
    # the task and the upload's distance line sit above the maps
    text = page.locator(".st-key-compare-task").inner_text()
    assert "Task:" in text and "class" in text and "No ground truth" in text, text

    # the inspector's three maps: one size, the whole image at its aspect (the clickable one included)
    page.set_viewport_size({"width": 1024, "height": 768})
    goto_page(page, "TOAST inspector")
    wait_charts(page, 4)
    boxes = page.evaluate("""() => ['ins-bottom-up', 'ins-top-down', 'ins-gate'].map(k => {
        const el = document.querySelector('.st-key-' + k + ' .js-plotly-plot');
        const img = el.querySelector('g.imagelayer image').getBoundingClientRect();
        const area = el.querySelector('.nsewdrag').getBoundingClientRect();
        const box = r => [r.left, r.top, r.right, r.bottom];
        return {img: box(img), area: box(area)}; })""")
    sizes = []
    for b in boxes:
        vis_w, vis_h = intersect(b["img"], b["area"])
        assert abs(vis_w / vis_h - width / height) <= 0.05 * width / height and vis_w >= 150, boxes
        sizes.append((round(vis_w), round(vis_h)))
    assert max(w for w, _ in sizes) - min(w for w, _ in sizes) <= 2, sizes
    assert page.evaluate(OVERFLOW) == [] and exceptions(page) == []


def test_every_page_fits_a_laptop_and_asks_only_its_own_server(page, app_server):
    own = urlsplit(app_server.url).netloc
    asked = []
    page.on("request", lambda r: asked.append(r.url))
    page.set_viewport_size({"width": 1024, "height": 768})
    open_app(page, app_server.url)
    wait_charts(page, 7)
    gallery_text = page.locator(".st-key-compare-task").inner_text()
    assert re.search(r"True label:\*?\*? ?\w+", gallery_text), gallery_text  # first gallery image
    titles = [t.strip().splitlines()[-1].strip()  # the link text after its icon's ligature name
              for t in page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()]
    assert set(PAGES) <= set(titles), titles  # every page in the navigation, pages added later too
    for title in titles:
        goto_page(page, title)
        for w, h in LAPTOPS:
            page.set_viewport_size({"width": w, "height": h})
            page.wait_for_timeout(500)
            assert exceptions(page) == [], (title, w)
            assert page.evaluate(OVERFLOW) == [], (title, w)
        page.set_viewport_size({"width": 1024, "height": 768})
    foreign = sorted({u for u in asked if urlsplit(u).scheme in ("http", "https", "ws", "wss")
                      and urlsplit(u).netloc != own})
    assert foreign == [], foreign
    assert any(urlsplit(u).netloc == own for u in asked)


@pytest.mark.skipif(not shutil.which("pdftotext"), reason="needs poppler-utils (pdftotext)")
def test_export_one_image_as_columns_keeps_title_and_caption_inside_the_pdf(page, app_server, tmp_path):
    open_app(page, app_server.url)
    goto_page(page, "Export")
    page.locator(".st-key-export-preview img").first.wait_for()
    radio = page.locator('[data-testid="stRadio"]', has_text="Columns").first
    wait_rerun(page, lambda: radio.locator("label", has_text="images").first.click())
    title = page.locator(".st-key-exp-title input")
    wait_rerun(page, lambda: (title.fill("Where each transfer method looks on one image of the task"),
                              title.press("Enter")))
    wait_text(page, ".st-key-export-preview", r"7×1 panels")
    assert exceptions(page) == []
    with page.expect_download(timeout=120_000) as info:
        page.locator(".st-key-dl-pdf button").first.click()
    pdf = tmp_path / "figure.pdf"
    info.value.save_as(pdf)
    html = subprocess.run(["pdftotext", "-bbox", str(pdf), "-"], capture_output=True, text=True, check=True,
                          timeout=60).stdout
    page_w, page_h = (float(v) for v in re.search(r'<page width="([\d.]+)" height="([\d.]+)"', html).groups())
    words = [(w, *map(float, box)) for *box, w in re.findall(
        r'<word xMin="([-\d.]+)" yMin="([-\d.]+)" xMax="([-\d.]+)" yMax="([-\d.]+)">([^<]*)</word>', html)]
    text = " ".join(w for w, *_ in words)
    assert "Where each transfer method looks" in text and "attention" in text, text
    for w, x0, y0, x1, y1 in words:
        assert 0 <= x0 and x1 <= page_w and 0 <= y0 and y1 <= page_h, (w, x0, y0, x1, y1, page_w, page_h)
