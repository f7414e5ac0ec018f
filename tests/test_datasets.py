"""Captioned image sources, built in tmp_path (no test reads shared data)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsr_cli.data.datasets import (FolderSource, ImageSource, ManifestSource, Sample,
                                      load_image, open_dataset, read_key_list)
from clipsr_cli.errors import DataError


def _png(path: Path, color=(10, 20, 30), size=(8, 6), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def _birds(root: Path, *, train=("a", "b", "c"), test=("d",), image_dir="image", ext=".png",
           text=True) -> Path:
    for split, keys in (("train", train), ("test", test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        with open(root / split / "filenames.pickle", "wb") as f:
            pickle.dump(list(keys), f, protocol=2)
        for k in keys:
            _png(root / image_dir / f"{k}{ext}")
            if text:
                (root / "text" / k).parent.mkdir(parents=True, exist_ok=True)
                (root / "text" / f"{k}.txt").write_text(f"a bird called {k}.\n\nit is small.\n")
    return root


# -- loading images ---------------------------------------------------------------------------------
def test_rgba_is_composited_over_white(tmp_path):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[..., 0] = 200  # red-ish everywhere ...
    arr[0, 0, 3] = 0  # ... fully transparent here
    arr[0, 1, 3] = 255  # opaque here
    arr[0, 2, 3] = 128  # half transparent here
    Image.fromarray(arr, "RGBA").save(tmp_path / "x.png")
    im = load_image(tmp_path / "x.png")
    assert im.mode == "RGB"
    assert im.getpixel((0, 0)) == (255, 255, 255)  # white, not black
    assert im.getpixel((1, 0)) == (200, 0, 0)
    r, g, b = im.getpixel((2, 0))
    assert abs(r - 228) <= 1 and abs(g - 127) <= 1 and abs(b - 127) <= 1  # 50 % over white


def test_la_palette_and_gray_images(tmp_path):
    la = np.zeros((2, 2, 2), dtype=np.uint8)
    la[..., 0] = 40
    la[0, 0, 1] = 255
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    im = load_image(tmp_path / "la.png")
    assert im.getpixel((0, 0)) == (40, 40, 40) and im.getpixel((1, 1)) == (255, 255, 255)

    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    im = load_image(tmp_path / "p.png")
    assert im.getpixel((0, 0)) == (255, 255, 255) and im.getpixel((1, 0)) == (0, 255, 0)

    _png(tmp_path / "g.png", color=77, mode="L")
    assert load_image(tmp_path / "g.png").getpixel((0, 0)) == (77, 77, 77)

    Image.fromarray(np.full((2, 2), 256 * 100, dtype=np.uint16)).save(tmp_path / "g16.png")
    assert load_image(tmp_path / "g16.png").getpixel((0, 0)) == (100, 100, 100)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (4, 2), (0, 0, 255))
    im.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    im.save(tmp_path / "rot.png", exif=exif)
    out = load_image(tmp_path / "rot.png")
    assert out.size == (2, 4)
    assert out.getpixel((1, 0)) == (255, 0, 0)  # stored top-left -> displayed top-right


def test_unreadable_images_raise_data_error(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="cannot read image .*bad.png"):
        load_image(tmp_path / "bad.png")
    good = _png(tmp_path / "t.png", size=(64, 64))
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:60])
    with pytest.raises(DataError, match="trunc.png"):
        load_image(tmp_path / "trunc.png")
    with pytest.raises(DataError, match="not found"):
        load_image(tmp_path / "nope.png")
    # the source raises the same at load time
    src = open_dataset(tmp_path, "folder")
    names = [s.path.name for s in src]
    with pytest.raises(DataError):
        src.load(names.index("bad.png"))


def test_datasets_decode_as_upscale_does(tmp_path):
    """An 8-bit RGB file gives exactly the pixels `clipsr upscale` reads (io.images.read_image);
    alpha is composited over white in float; 16 bits are rounded to 8 (load_image) or kept
    (load_rgb)."""
    import torch

    from clipsr_cli.data.datasets import load_rgb
    from clipsr_cli.io.images import read_image, write_image

    rng = np.random.default_rng(0)
    rgb8 = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb8).save(tmp_path / "a.png")
    Image.fromarray(rgb8).save(tmp_path / "a.jpg", quality=80)
    for name in ("a.png", "a.jpg"):
        up = read_image(tmp_path / name).rgb
        assert torch.equal(load_rgb(tmp_path / name), up)
        got = np.asarray(load_image(tmp_path / name)).astype(np.float32) / 255
        assert np.array_equal(got, up[0].permute(1, 2, 0).numpy())
    assert np.array_equal(np.asarray(load_image(tmp_path / "a.png")), rgb8)

    rgba = np.concatenate([rgb8, rng.integers(0, 256, (9, 7, 1), dtype=np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    c, a = rgba[..., :3] / 255.0, rgba[..., 3:] / 255.0
    want = c * a + (1 - a)
    assert np.allclose(load_rgb(tmp_path / "t.png")[0].permute(1, 2, 0).numpy(), want, atol=1e-6)
    assert np.abs(np.asarray(load_image(tmp_path / "t.png")) - np.rint(want * 255)).max() <= 1

    rgb16 = rng.integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    write_image(tmp_path / "w.png", rgb16)
    assert torch.equal(load_rgb(tmp_path / "w.png"), read_image(tmp_path / "w.png").rgb)
    assert np.array_equal(np.asarray(load_image(tmp_path / "w.png")),
                          np.rint(rgb16 / 65535 * 255).astype(np.uint8))


# -- folder -------------------------------------------------------------------------------------------
def test_folder_with_sidecar_captions(tmp_path):
    _png(tmp_path / "b.png")
    (tmp_path / "b.txt").write_text("first caption\n\n  second caption  \n")
    _png(tmp_path / "sub" / "a.jpg")
    _png(tmp_path / ".hidden" / "c.png")
    (tmp_path / "notes.md").write_text("not an image")
    src = open_dataset(tmp_path)
    assert isinstance(src, FolderSource) and src.name == "folder" and len(src) == 2
    assert [s.path.relative_to(tmp_path).as_posix() for s in src] == ["b.png", "sub/a.jpg"]
    assert src[0] == Sample(tmp_path / "b.png", ("first caption", "second caption"))
    assert src[1].captions == ()
    img, caps = src.load(1)
    assert img.mode == "RGB" and img.size == (8, 6) and caps == ()
    assert src.num_captioned == 1 and "2 images" in repr(src)


def test_folder_split_subfolders(tmp_path):
    _png(tmp_path / "train" / "t1.png")
    _png(tmp_path / "train" / "t2.png")
    _png(tmp_path / "val" / "v1.png")
    assert len(open_dataset(tmp_path)) == 2
    assert [s.path.name for s in open_dataset(tmp_path, split="test")] == ["v1.png"]
    assert len(open_dataset(tmp_path, split="val")) == 1


def test_empty_folder_and_bad_arguments(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="no images found in .*empty"):
        open_dataset(tmp_path / "empty")
    with pytest.raises(DataError, match="dataset not found"):
        open_dataset(tmp_path / "missing")
    with pytest.raises(DataError, match="unknown dataset format"):
        open_dataset(tmp_path, "imagenet")
    with pytest.raises(DataError, match="unknown split"):
        open_dataset(tmp_path, split="dev")
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(DataError, match="not a manifest"):
        open_dataset(tmp_path / "x.txt")


# -- manifests ------------------------------------------------------------------------------------------
def test_csv_manifest(tmp_path):
    _png(tmp_path / "imgs" / "a.png")
    _png(tmp_path / "imgs" / "b.png")
    abs_c = _png(tmp_path / "elsewhere" / "c.png")
    (tmp_path / "m.csv").write_text(
        "Image,Caption\n"
        "imgs/a.png,a red bird | on a branch\n"
        "imgs/b.png,\n"
        "imgs/a.png,a third caption\n"
        f"{abs_c},\"with, a comma\"\n"
        "imgs/missing.png,gone\n")
    src = open_dataset(tmp_path / "m.csv")
    assert isinstance(src, ManifestSource) and src.name == "manifest"
    assert [s.path for s in src] == [tmp_path / "imgs" / "a.png", tmp_path / "imgs" / "b.png", abs_c]
    assert src[0].captions == ("a red bird", "on a branch", "a third caption")
    assert src[1].captions == () and src[2].captions == ("with, a comma",)
    assert src.missing == 1

    (tmp_path / "p.csv").write_text("path,text,split\nimgs/a.png,x,train\nimgs/b.png,y,val\n")
    assert [s.captions for s in open_dataset(tmp_path / "p.csv")] == [("x",)]
    assert [s.captions for s in open_dataset(tmp_path / "p.csv", split="test")] == [("y",)]

    (tmp_path / "bad.csv").write_text("file_path,caption\na.png,x\n")
    with pytest.raises(DataError, match="no image column .*file_path"):
        open_dataset(tmp_path / "bad.csv")
    (tmp_path / "gone.csv").write_text("image,caption\nno1.png,x\nno2.png,y\n")
    with pytest.raises(DataError, match="none of the 2 images"):
        open_dataset(tmp_path / "gone.csv")


def test_jsonl_manifest(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    lines = [{"image": "a.png", "caption": "one"}, {"image": "b.png", "captions": ["two", "three"]},
             {"image": "a.png", "captions": ["four"]}, {"image": "nope.png"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    src = open_dataset(tmp_path / "m.jsonl")
    assert [(s.path.name, s.captions) for s in src] == [("a.png", ("one", "four")),
                                                          ("b.png", ("two", "three"))]
    assert src.missing == 1
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid JSON"):
        open_dataset(tmp_path / "bad.jsonl")
    (tmp_path / "noimg.jsonl").write_text('{"caption": "x"}\n')
    with pytest.raises(DataError, match="noimg.jsonl:1: missing 'image'"):
        open_dataset(tmp_path / "noimg.jsonl")
    (tmp_path / "badcap.jsonl").write_text('{"image": "a.png", "captions": [1]}\n')
    with pytest.raises(DataError, match="list of strings"):
        open_dataset(tmp_path / "badcap.jsonl")


# -- the CLIP-SR (birds) layout ---------------------------------------------------------------------
def test_birds_layout(tmp_path):
    root = _birds(tmp_path / "Birds")
    src = open_dataset(root)
    assert src.name == "birds" and len(src) == 3 and src.missing == 0
    assert src[0] == Sample(root / "image" / "a.png", ("a bird called a.", "it is small."))
    img, caps = src.load(2)
    assert img.mode == "RGB" and caps[0] == "a bird called c."
    for split in ("test", "val"):
        assert [s.path.name for s in open_dataset(root, "birds", split=split)] == ["d.png"]


def test_cub_keys_with_subfolders_and_missing_images(tmp_path):
    keys = ["002.Laysan_Albatross/Laysan_Albatross_0002_1027", "001.Black_footed/Black_0001",
            "003.Sooty/Sooty_0003"]
    root = _birds(tmp_path / "cub", train=keys, test=[keys[0]],
                  image_dir="CUB_200_2011/images", ext=".jpg")
    (root / "CUB_200_2011" / "images" / "003.Sooty" / "Sooty_0003.jpg").unlink()
    (root / "text" / "001.Black_footed" / "Black_0001.txt").unlink()
    src = open_dataset(root, "birds")
    assert len(src) == 2 and src.missing == 1 and src.missing_captions == 1
    assert src[0].path == root / "CUB_200_2011" / "images" / (keys[0] + ".jpg")
    assert src[0].captions[0] == f"a bird called {keys[0]}."
    assert src[1].captions == ()


def test_birds_layout_errors(tmp_path):
    root = _birds(tmp_path / "nocap", text=False)
    with pytest.raises(DataError, match=r"caption folder .*nocap/text not found"):
        open_dataset(root)
    root = _birds(tmp_path / "gone")
    for p in (root / "image").iterdir():
        p.unlink()
    with pytest.raises(DataError):
        open_dataset(root)
    root = _birds(tmp_path / "allmissing")
    with open(root / "train" / "filenames.pickle", "wb") as f:
        pickle.dump(["x", "y"], f)
    with pytest.raises(DataError, match="none of the 2 images"):
        open_dataset(root)
    with open(root / "train" / "filenames.pickle", "wb") as f:
        pickle.dump(["../../etc/passwd"], f)
    with pytest.raises(DataError, match="outside the dataset folder"):
        open_dataset(root)
    (tmp_path / "plain").mkdir()
    _png(tmp_path / "plain" / "x.png")
    with pytest.raises(DataError, match="filenames.pickle not found"):
        open_dataset(tmp_path / "plain", "birds")


def test_auto_detection(tmp_path):
    assert open_dataset(_birds(tmp_path / "CelebA-HQ")).name == "celeba"
    assert open_dataset(_birds(tmp_path / "coco_clipsr", image_dir="images")).name == "coco"
    assert open_dataset(_birds(tmp_path / "cub200")).name == "birds"
    root = tmp_path / "mscoco"
    _png(root / "train2017" / "000000000009.jpg")
    _png(root / "train2017" / "000000000025.jpg")
    _png(root / "val2017" / "000000000139.jpg")
    (root / "annotations").mkdir()
    train = {"images": [{"id": 9, "file_name": "000000000009.jpg"},
                        {"id": 25, "file_name": "000000000025.jpg"},
                        {"id": 30, "file_name": "000000000030.jpg"}],
             "annotations": [{"image_id": 9, "caption": "A plate of food. "},
                             {"image_id": 9, "caption": "Broccoli."},
                             {"image_id": 25, "caption": "A giraffe."}]}
    val = {"images": [{"id": 139, "file_name": "000000000139.jpg"}],
           "annotations": [{"image_id": 139, "caption": "A room."}]}
    (root / "annotations" / "captions_train2017.json").write_text(json.dumps(train))
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps(val))
    src = open_dataset(root)
    assert src.name == "coco" and len(src) == 2 and src.missing == 1
    assert src[0].captions == ("A plate of food.", "Broccoli.")
    assert open_dataset(root, split="val")[0].captions == ("A room.",)


# -- the restricted unpickler ---------------------------------------------------------------------
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_key_list_pickles(tmp_path):
    p = tmp_path / "k.pickle"
    p.write_bytes(pickle.dumps(("x", "y/z")))
    assert read_key_list(p) == ["x", "y/z"]
    # what Python 2 writes for ['abc', 'def'] with protocol 2 (SHORT_BINSTRING) and protocol 0
    p.write_bytes(b"\x80\x02]q\x00(U\x03abcq\x01U\x03defq\x02e.")
    assert read_key_list(p) == ["abc", "def"]
    p.write_bytes(b"(lp0\nS'abc'\np1\naS'def'\np2\na.")
    assert read_key_list(p) == ["abc", "def"]
    p.write_bytes(b"\x80\x02]q\x00X\x05\x00\x00\x00caf\xc3\xa9a.")  # py2 unicode (BINUNICODE)
    assert read_key_list(p) == ["caf\u00e9"]
    p.write_bytes(b"\x80\x02]q\x00U\x05caf\xc3\xa9a.")  # py2 str holding UTF-8 bytes
    assert read_key_list(p) == ["caf\u00e9"]


def test_malicious_pickles_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "filenames.pickle"
    for payload in (_Evil(marker), ["ok", _Evil(marker)], [Path("a")]):
        p.write_bytes(pickle.dumps(payload, protocol=2))
        with pytest.raises(DataError, match="not a list of file names"):
            read_key_list(p)
        assert not marker.exists()
    for payload, what in (({"a": 1}, "dict"), (["a", 3], "int"), ("abc", "str")):
        p.write_bytes(pickle.dumps(payload))
        with pytest.raises(DataError, match=what):
            read_key_list(p)
    p.write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a list of file names"):
        read_key_list(p)
    # through open_dataset as well
    root = _birds(tmp_path / "evil")
    (root / "train" / "filenames.pickle").write_bytes(pickle.dumps([_Evil(marker)]))
    with pytest.raises(DataError, match="filenames.pickle is not a list"):
        open_dataset(root)
    assert not marker.exists()


def test_image_source_is_a_sized_indexable_list(tmp_path):
    _png(tmp_path / "a.png")
    src = open_dataset(tmp_path)
    assert isinstance(src, ImageSource) and len(src) == 1 and src[-1] == src[0]
    with pytest.raises(IndexError):
        src[1]
