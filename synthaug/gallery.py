"""`synthaug show`: a static HTML gallery of a store, and a PNG contact sheet.

Each card shows the image with its mask overlaid (class colours, ignore hatched), the prompt,
the seed and the quality figures. The page filters by class and sorts by any quality figure
with a few lines of inline JavaScript; it needs no server and no network.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
from PIL import Image

from synthaug.sample import Sample
from synthaug.store import SampleStore
from synthaug.store_export import out_dir, out_file
from synthaug.visualize import contact_sheet, overlay

THUMB = 160


def _thumb(arr: np.ndarray, size: int = THUMB) -> Image.Image:
    img = Image.fromarray(arr)
    scale = size / max(img.size)
    resample = Image.NEAREST if scale >= 1 else Image.BILINEAR
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), resample)


def write_gallery(store_path: str | Path, out: str | Path, limit: int = 500, columns: int = 10) -> Path:
    """Write out/index.html, out/thumbs/*.png and out/contact_sheet.png for up to `limit` samples."""
    store = SampleStore(store_path)
    out = Path(out)
    thumbs = out_dir(out, "thumbs", store=store.root)
    vocab = store.vocabulary
    cards, tiles, quality_keys = [], [], set()
    for i in range(min(limit, len(store))):
        sample = store.try_read(i)
        if sample is None:
            continue
        over = overlay(sample.image, sample.mask, vocab.palette, alpha=0.5)
        name = f"{i:07d}.png"  # never a name taken from the store: an id cannot steer where a file goes
        _thumb(np.concatenate([sample.image, over], axis=1), THUMB * 2).save(out_file(thumbs, name))
        tiles.append(np.array(_thumb(over, 96)))
        quality_keys |= set(sample.quality)
        cards.append(_card(sample, [vocab.names[c] for c in sample.classes_present], name))
    if tiles:
        size = max(t.shape[0] for t in tiles)
        tiles = [
            np.pad(t, ((0, size - t.shape[0]), (0, size - t.shape[1]), (0, 0)), constant_values=255) for t in tiles
        ]
        Image.fromarray(contact_sheet(tiles, columns=columns)).save(out_file(out, "contact_sheet.png"))
    legend = "".join(
        f'<span class="sw" style="background:rgb{tuple(int(v) for v in c)}"></span>{html.escape(n)} '
        for n, c in zip(vocab.names, vocab.palette)
    )
    boxes = "".join(
        f'<label><input type="checkbox" class="cls" value="{html.escape(n)}"> {html.escape(n)}</label> '
        for n in vocab.names
    )
    options = "".join(f'<option value="{html.escape(k)}">{html.escape(k)}</option>' for k in sorted(quality_keys))
    skipped = f"<p>{len(store.stats.corrupt)} corrupt sample(s) skipped.</p>" if store.stats.corrupt else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>synthaug store {html.escape(str(store.root))}</title>
<style>body{{font-family:sans-serif;margin:1em}}.grid{{display:flex;flex-wrap:wrap;gap:8px}}
.card{{width:{THUMB * 2}px;border:1px solid #ccc;padding:4px;font-size:12px}}.card img{{width:100%;image-rendering:pixelated}}
.p{{font-weight:bold}}.m{{color:#555}}.sw{{display:inline-block;width:12px;height:12px;margin:0 3px 0 8px;border:1px solid #888}}</style>
</head><body><h2>{html.escape(str(store.root))}: {len(cards)} of {len(store)} samples</h2>{skipped}
<div>classes: {legend} <span class="sw" style="background:repeating-linear-gradient(45deg,#fff 0 2px,#000 2px 4px)"></span>ignore</div>
<div>show samples with: {boxes} sort by: <select id="sort"><option value="">store order</option>{options}</select>
<label><input type="checkbox" id="desc" checked> descending</label></div>
<div class="grid" id="grid">{"".join(cards)}</div>
<script>
const grid=document.getElementById('grid');const cards=[...grid.children];
function update(){{const want=[...document.querySelectorAll('.cls:checked')].map(b=>b.value);
const key=document.getElementById('sort').value;const desc=document.getElementById('desc').checked;
let shown=cards.filter(c=>!want.length||want.some(w=>JSON.parse(c.dataset.classes).includes(w)));
if(key)shown.sort((a,b)=>{{const qa=JSON.parse(a.dataset.quality)[key]??-1e9,qb=JSON.parse(b.dataset.quality)[key]??-1e9;return desc?qb-qa:qa-qb;}});
grid.replaceChildren(...shown);}}
document.querySelectorAll('input,select').forEach(e=>e.addEventListener('change',update));
</script></body></html>
"""
    page_file = out_file(out, "index.html")
    page_file.write_text(page)
    return page_file


def _card(sample: Sample, classes: list[str], thumb: str) -> str:
    """One sample's card; every field from the store is HTML-escaped (ids, seeds, prompts and figures alike).
    Its class names are a JSON list, so a name with a space ('potted plant') stays one name for the filter."""
    e = html.escape
    q = " ".join(f"{k}={v:.3f}" for k, v in sorted(sample.quality.items()))
    return (
        f'<div class="card" data-classes="{e(json.dumps(classes))}" data-quality="{e(json.dumps(sample.quality))}">'
        f'<img src="thumbs/{e(thumb)}" alt="{e(str(sample.id))}" title="{e(str(sample.id))}">'
        f'<div class="p">{e(sample.prompt)}</div>'
        f'<div class="m">seed {e(str(sample.seed))} · {e(", ".join(classes))}</div>'
        f'<div class="m">{e(q)}</div></div>'
    )
