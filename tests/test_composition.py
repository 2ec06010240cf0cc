"""Reference composition: golden parity (exact) and behaviour on odd inputs."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import EXAMPLES, golden, golden_canvas, run_cli
from magref.composition import RegionLayout, compose_references, grid_cells, latent_mask_from_pixels
from magref.conditioning import reference_mask
from magref.errors import MagrefInputError


def _refs(case):
    return [Image.open(golden("compose", r["file"])) for r in case["refs"]]


def _check(case, comp):
    tensors = load_file(golden("compose", case["tensors"]))
    canvas = np.asarray(Image.open(golden_canvas(case)))
    assert np.array_equal(np.asarray(comp.canvas), canvas), "canvas pixels differ"
    assert np.array_equal(comp.pixel_mask, tensors["pixel_mask"].numpy())
    assert np.array_equal(comp.latent_mask, tensors["latent_mask"].numpy())
    mask4 = reference_mask(torch.from_numpy(comp.latent_mask), 81)[0]
    assert torch.equal(mask4.to(torch.uint8), tensors["mask_4ch_f81"])


def test_golden_from_shuffle_seed(compose_cases):
    assert len(compose_cases) == 8
    for case in compose_cases:
        h, w = case["canvas_hw"]
        comp = compose_references(_refs(case), h, w, layout_seed=case["shuffle_seed"])
        _check(case, comp)
        blocks = load_file(golden("compose", case["tensors"]))["latent_blocks"].numpy()
        assert np.array_equal(comp.latent_blocks, blocks)
        assert [list(c) for c in comp.layout.cells] == case["cells_after_shuffle_x0y0x1y1"]
        assert [r for r, _ in comp.layout.placement] == case["ref_order_after_shuffle"][: len(comp.layout.placement)]


def test_golden_from_explicit_placement(compose_cases):
    for case in compose_cases:
        h, w = case["canvas_hw"]
        comp = compose_references(_refs(case), h, w, layout={"placement": case["placement"]})
        _check(case, comp)


def test_cli_compose_reproduces_golden(tmp_path, compose_cases):
    for case in compose_cases:
        h, w = case["canvas_hw"]
        refs = [golden("compose", r["file"]) for r in case["refs"]]
        layout_file = tmp_path / f"{case['case']}_layout.json"
        layout_file.write_text(json.dumps({"placement": case["placement"]}))
        for how in (["--layout-seed", case["shuffle_seed"]], ["--layout", layout_file]):
            out = tmp_path / case["case"] / how[0].strip("-")
            rc, _, err = run_cli("compose", *refs, "--height", h, "--width", w, *how, "--out", out)
            assert rc == 0, err
            assert np.array_equal(np.asarray(Image.open(out / "canvas.png")), np.asarray(Image.open(golden_canvas(case))))
            mask = np.asarray(Image.open(out / "mask.png"))
            assert set(np.unique(mask)) <= {0, 255}
            assert np.array_equal(mask // 255, load_file(golden("compose", case["tensors"]))["pixel_mask"].numpy())
            # the layout file it writes reproduces the same canvas
            again = tmp_path / case["case"] / "again"
            rc, _, err = run_cli("compose", *refs, "--height", h, "--width", w, "--layout", out / "layout.json", "--out", again)
            assert rc == 0, err
            assert np.array_equal(np.asarray(Image.open(again / "canvas.png")), np.asarray(Image.open(out / "canvas.png")))


def test_official_random_matches_global_random_and_leaves_it_alone():
    import random

    random.seed(5)
    before = random.random()
    random.seed(5)
    layout = RegionLayout.official_random(5, 480, 832, seed=11)
    assert random.random() == before  # the global generator was not consumed
    random.seed(11)
    idx = list(range(5))
    random.shuffle(idx)
    cells = grid_cells(6, 480, 832)
    random.shuffle(cells)
    assert [r for r, _ in layout.placement] == idx and list(layout.cells) == cells


@pytest.mark.parametrize("h,w", [(64, 96), (96, 64), (16, 16), (48, 800), (720, 1280)])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8])
def test_odd_sizes_and_counts(h, w, n):
    rng = np.random.default_rng(n * 1000 + h + w)
    images = [Image.fromarray(rng.integers(0, 255, (int(rng.integers(1, 300)), int(rng.integers(1, 300)), 3), dtype=np.uint8)) for _ in range(n)]
    comp = compose_references(images, h, w)
    assert comp.canvas.size == (w, h)
    assert comp.pixel_mask.shape == (h, w) and comp.latent_mask.shape == (h // 8, w // 8)
    canvas = np.asarray(comp.canvas)
    assert (canvas[comp.pixel_mask == 0] == 255).all(), "outside the references the canvas is white"
    assert np.array_equal(comp.latent_mask, latent_mask_from_pixels(comp.pixel_mask))
    for ref, box in enumerate(comp.layout.boxes()):
        x0, y0, x1, y1 = box
        inside = comp.pixel_mask[y0:y1, x0:x1]
        sw, sh = comp.reference_sizes[ref]
        assert inside.sum() == sw * sh, "each reference covers exactly its scaled size"
        assert sw == x1 - x0 or sh == y1 - y0, "scaled to touch the cell on one side"


def test_alpha_is_composited_on_white():
    im = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    im.paste((0, 0, 255, 255), (8, 8, 24, 24))
    comp = compose_references([im], 32, 32)
    c = np.asarray(comp.canvas)
    assert (c[0, 0] == 255).all() and tuple(c[16, 16]) == (0, 0, 255)
    la = Image.new("LA", (32, 32), (0, 0))
    assert (np.asarray(compose_references([la], 32, 32).canvas) == 255).all()


def test_user_layout_places_references_where_asked():
    red, blue = Image.new("RGB", (10, 10), (255, 0, 0)), Image.new("RGB", (10, 10), (0, 0, 255))
    comp = compose_references([red, blue], 64, 96, layout={"boxes": [[0, 0, 32, 32], [48, 16, 96, 64]]})
    c = np.asarray(comp.canvas)
    assert tuple(c[16, 16]) == (255, 0, 0) and tuple(c[40, 72]) == (0, 0, 255) and tuple(c[50, 10]) == (255, 255, 255)
    assert comp.pixel_mask[:32, :32].all() and comp.pixel_mask[16:64, 48:96].all() and comp.pixel_mask.sum() == 32 * 32 + 48 * 48


def test_user_layout_allows_more_than_eight():
    images = [Image.new("RGB", (8, 8), (i * 20, 0, 0)) for i in range(9)]
    boxes = [[(i % 3) * 32, (i // 3) * 16, (i % 3) * 32 + 32, (i // 3) * 16 + 16] for i in range(9)]
    comp = compose_references(images, 48, 96, layout={"boxes": boxes})
    assert comp.reference_sizes == [(16, 16)] * 9  # square references letter-boxed into 32x16 boxes
    for x0, y0, x1, y1 in boxes:
        assert comp.pixel_mask[y0:y1, x0:x1].sum() == 16 * 16


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(images=[]), "No reference"),
        (dict(images=[Image.new("RGB", (4, 4))] * 17), "at most 16"),
        (dict(height=70), "multiple of 16"),
        (dict(width=0), "multiple of 16"),
        (dict(layout={"boxes": [[0, 0, 200, 32]]}), "outside"),
        (dict(layout={"boxes": [[10, 10, 10, 20]]}), "empty or outside"),
        (dict(layout={"boxes": [[0, 0, 8, 8], [8, 8, 16, 16]]}), "places 2 reference"),
        (dict(layout={"nothing": 1}), "'boxes' list"),
    ],
)
def test_bad_composition_input(kwargs, needle):
    args = dict(images=[Image.new("RGB", (4, 4))], height=64, width=96)
    args.update(kwargs)
    with pytest.raises(MagrefInputError, match=needle):
        compose_references(args.pop("images"), **args)


@pytest.mark.parametrize("stride", [4, 8])
@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_latent_cells_follow_the_model_stride(stride, n):
    """A VAE with another spatial stride (the miniature's 4x) gets latent masks and blocks in its
    own cells, and canvases that are multiples of its stride x patch; 8 stays the default."""
    h, w = 64, 96
    images = [Image.new("RGB", (30 + 7 * i, 50), (40 * i, 90, 200)) for i in range(n)]
    comp = compose_references(images, h, w, spatial_stride=stride)
    assert comp.latent_mask.shape == (h // stride, w // stride) and comp.spatial_stride == stride
    assert np.array_equal(comp.latent_mask, latent_mask_from_pixels(comp.pixel_mask, stride))
    assert np.array_equal(comp.latent_blocks, comp.layout.latent_blocks(stride))
    for x0, x1, y0, y1 in comp.latent_blocks:  # every block inside the latent canvas, and its cell
        assert 0 <= x0 < x1 <= w // stride and 0 <= y0 < y1 <= h // stride
    if stride == 8:
        default = compose_references(images, h, w)
        assert np.array_equal(default.latent_mask, comp.latent_mask) and np.array_equal(default.latent_blocks, comp.latent_blocks)
    else:  # finer cells: the 4x mask, pooled 2x2, is the 8x one
        coarse = compose_references(images, h, w)
        pooled = comp.latent_mask.reshape(h // 8, 2, w // 8, 2).max(axis=(1, 3))
        assert np.array_equal(pooled, coarse.latent_mask)


def test_canvas_size_multiple_follows_the_model_stride():
    img = [Image.new("RGB", (20, 20), (255, 0, 0))]
    assert compose_references(img, 40, 56, spatial_stride=4).latent_mask.shape == (10, 14)  # multiples of 4 x 2
    with pytest.raises(MagrefInputError, match="multiple of 16"):
        compose_references(img, 40, 56)


@pytest.mark.parametrize("n", range(9, 17))
@pytest.mark.parametrize("h,w", [(480, 832), (832, 480), (720, 1280), (512, 512)])
def test_nine_to_sixteen_references_fill_an_extended_grid(n, h, w):
    """9-16 references: a grid with no empty row or column, cells closest to square (portrait
    canvases turn it), every reference inside its own cell, latent blocks inside the canvas and
    not overlapping; 1-8 keep the official grids (the golden tests)."""
    from magref.composition import extended_grid

    images = [Image.new("RGB", (20 + 3 * i, 30), (10 * i, 100, 200)) for i in range(n)]
    comp = compose_references(images, h, w)
    cols, rows = extended_grid(n, h, w)
    assert cols * rows >= n and cols * rows - n < min(cols, rows)
    if w > h:
        assert cols >= rows
    elif h > w:
        assert rows >= cols
    assert comp.layout.extended and len(comp.layout.cells) == cols * rows
    boxes = comp.layout.boxes()
    assert len(boxes) == n
    for i, (x0, y0, x1, y1) in enumerate(boxes):  # disjoint cells
        for a0, b0, a1, b1 in boxes[i + 1:]:
            assert x1 <= a0 or a1 <= x0 or y1 <= b0 or b1 <= y0
    blocks = comp.latent_blocks
    cover = np.zeros((h // 8, w // 8), int)
    for x0, x1, y0, y1 in blocks:
        assert 0 <= x0 < x1 <= w // 8 and 0 <= y0 < y1 <= h // 8
        cover[y0:y1, x0:x1] += 1
    assert cover.max() == 1  # latent blocks do not overlap
    assert comp.pixel_mask.sum() == sum(sw * sh for sw, sh in comp.reference_sizes)
    shuffled = compose_references(images, h, w, layout_seed=3)  # the official shuffles, on the extended cells
    assert set(shuffled.layout.boxes()) <= set(comp.layout.cells) and shuffled.layout.boxes() != boxes


def test_extended_grid_shapes():
    from magref.composition import extended_grid

    assert extended_grid(9, 480, 480) == (3, 3) and extended_grid(16, 720, 720) == (4, 4)
    assert extended_grid(12, 480, 832) == (4, 3) and extended_grid(12, 832, 480) == (3, 4)
    with pytest.raises(MagrefInputError, match="at most 16"):
        compose_references([Image.new("RGB", (8, 8))] * 17, 64, 64)
    assert not compose_references([Image.new("RGB", (8, 8))] * 8, 64, 64).layout.extended


def test_compose_command_uses_a_models_latent_cells(tmp_path):
    """`magref compose --model M` writes latent blocks in M's cells (a 4x VAE here); without a
    model, the official 8-pixel cells."""
    model = tmp_path / "m4"
    (model / "vae").mkdir(parents=True)
    (model / "transformer").mkdir()
    (model / "vae" / "config.json").write_text(json.dumps({"scale_factor_spatial": 4}))
    (model / "transformer" / "config.json").write_text(json.dumps({"patch_size": [1, 2, 2]}))
    ref = tmp_path / "r.png"
    Image.new("RGB", (20, 30), (200, 0, 0)).save(ref)
    for extra, stride in ((["--model", str(model)], 4), ([], 8)):
        rc, _, err = run_cli("compose", ref, ref, "--height", "64", "--width", "64", "--out", tmp_path / f"o{stride}", *extra)
        assert rc == 0, err
        blocks = json.loads((tmp_path / f"o{stride}" / "layout.json").read_text())["latent_blocks_x0x1y0y1"]
        assert blocks == [[0, 32 // stride, 0, 64 // stride], [32 // stride, 64 // stride, 0, 64 // stride]]


def test_cli_compose_is_for_the_model_generate_uses(tmp_path):
    """Without a size, compose makes the canvas of the model generate would use (the miniature's
    128x128, not the official 832x480), so its layout.json is one a plain `generate --layout`
    takes; a size given still wins."""
    from magref.request import GenerationRequest, ModelSpec

    refs = [EXAMPLES / "character.png", EXAMPLES / "mug.png"]
    rc, _, err = run_cli("compose", *refs, "--out", tmp_path / "c")
    assert rc == 0, err
    assert Image.open(tmp_path / "c" / "canvas.png").size == (128, 128)
    spec = ModelSpec.resolve(None)
    request = GenerationRequest.prepare(spec.settings({}, prompt="x", refs=[str(p) for p in refs], layout=str(tmp_path / "c" / "layout.json")), spec)
    assert np.array_equal(np.asarray(request.composition.canvas), np.asarray(Image.open(tmp_path / "c" / "canvas.png")))
    rc, _, err = run_cli("compose", *refs, "--height", 480, "--width", 832, "--out", tmp_path / "o")
    assert rc == 0 and Image.open(tmp_path / "o" / "canvas.png").size == (832, 480), err
