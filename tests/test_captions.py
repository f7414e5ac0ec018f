"""clipsr_cli.data.captions: one caption reader for batch, eval and training."""

from __future__ import annotations

import json
import logging
from pathlib import PurePosixPath

import pytest
from PIL import Image

from clipsr_cli.data.captions import (CaptionTable, parse_captions, read_caption_file,
                                      read_manifest, sidecar_captions)
from clipsr_cli.data.datasets import open_dataset
from clipsr_cli.errors import DataError, log


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings_():
    h = _Records()
    h.setLevel(logging.WARNING)
    old = log.level
    log.addHandler(h)
    log.setLevel(logging.INFO)
    yield h.messages
    log.removeHandler(h)
    log.setLevel(old)


def test_a_caption_text_is_one_caption_per_non_empty_line(tmp_path):
    assert parse_captions("\ufeff a  red\tbird \n\n  on a branch\r\n") == ("a red bird", "on a branch")
    assert parse_captions("a | b\nc") == ("a | b", "c")
    assert parse_captions("a | b\nc", bar=True) == ("a", "b", "c")
    assert parse_captions(" \n\n") == ()
    p = tmp_path / "c.txt"
    p.write_bytes(b"caf\xe9 ok\nsecond\n")  # not UTF-8: replaced, not fatal
    assert read_caption_file(p) == ("caf\ufffd ok", "second")


def test_sidecars(tmp_path):
    img = tmp_path / "p.jpg"
    assert sidecar_captions(img) == ()
    (tmp_path / "p.jpg.txt").write_text("second choice")
    assert sidecar_captions(img) == ("second choice",)
    (tmp_path / "p.txt").write_text("\ufeff first\nchoice ")
    assert sidecar_captions(img) == ("first", "choice")  # NAME.txt wins; one caption per line


def test_csv_and_tsv_with_or_without_a_header(tmp_path, warnings_):
    (tmp_path / "h.csv").write_text("Image_Path,Prompt,split\n"
                                    "a.png,\"one | two\",train\n"
                                    ",orphan,train\n"
                                    "b.png,,val\n"
                                    "c.png\n")  # no caption cell: an image without caption
    m = read_manifest(tmp_path / "h.csv")
    assert [(e.key, e.captions, e.split) for e in m.entries] == [
        ("a.png", ("one", "two"), "train"), ("b.png", (), "val"), ("c.png", (), None)]
    assert m.dropped == 1 and m.entries[0].where.endswith("h.csv:2")
    assert any("h.csv" in w and "1 broken row" in w for w in warnings_)

    (tmp_path / "n.tsv").write_text("x.png\ta fish\nonly-a-path\n\n\ty\n")  # no header
    m = read_manifest(tmp_path / "n.tsv")
    assert [(e.key, e.captions) for e in m.entries] == [("x.png", ("a fish",))]
    assert m.dropped == 2 and any("2 broken rows" in w for w in warnings_)

    (tmp_path / "noimg.csv").write_text("file_path,caption\na.png,x\n")
    with pytest.raises(DataError, match="no image column .*file_path"):
        read_manifest(tmp_path / "noimg.csv")


def test_jsonl_and_json(tmp_path):
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"file_name": "a.png", "text": "one\ntwo"}) + "\n\n"
        + json.dumps({"IMAGE": "b.png", "caption": "x", "captions": ["y", "z"], "split": "test"})
        + "\n" + json.dumps({"path": "c.png"}) + "\n")
    m = read_manifest(tmp_path / "m.jsonl")
    assert [(e.key, e.captions, e.split) for e in m.entries] == [
        ("a.png", ("one", "two"), None), ("b.png", ("x", "y", "z"), "test"), ("c.png", (), None)]
    (tmp_path / "d.json").write_text(json.dumps({"a.png": "by name", "b.png": ["p", "q"]}))
    assert [e.captions for e in read_manifest(tmp_path / "d.json").entries] == [("by name",),
                                                                                 ("p", "q")]
    (tmp_path / "l.json").write_text(json.dumps([{"image": "a.png", "prompt": "hi"}]))
    assert read_manifest(tmp_path / "l.json").entries[0].captions == ("hi",)
    for name, body, match in [("bad.jsonl", '{"image": "a.png"}\n{oops\n', r"bad.jsonl:2: invalid JSON"),
                              ("noimg.jsonl", '{"caption": "x"}\n', "noimg.jsonl:1: missing 'image'"),
                              ("cap.jsonl", '{"image": "a", "captions": [1]}\n', "list of strings"),
                              ("arr.jsonl", '["a.png"]\n', "arr.jsonl:1: expected a JSON object"),
                              ("num.json", '{"a.png": 3}', "num.json: expected"),
                              ("c.yaml", "a: b\n", "c.yaml: unknown manifest type")]:
        (tmp_path / name).write_text(body)
        with pytest.raises(DataError, match=match):
            read_manifest(tmp_path / name)
    with pytest.raises(DataError, match="does not exist"):
        read_manifest(tmp_path / "gone.csv")


def test_caption_table_lookup(tmp_path, monkeypatch):
    img = tmp_path / "imgs" / "sub" / "p.png"
    (tmp_path / "c.csv").write_text(f"path,caption\nsub/p.png,relative\n{img},absolute\n"
                                    "q.png,first\nq.png,second\n")
    t = CaptionTable.load(tmp_path / "c.csv")
    assert t.lookup(img) == ("absolute",)  # by absolute path first
    assert t.lookup(tmp_path / "elsewhere" / "p2.png", PurePosixPath("sub/p.png")) == ("relative",)
    assert t.lookup(tmp_path / "far" / "q.png") == ("first", "second")  # by name; rows merge
    assert t.first(tmp_path / "far" / "q.png") == "first"
    assert t.lookup(tmp_path / "x.png") == () and t.first(tmp_path / "x.png") is None
    (tmp_path / "r.csv").write_text("path,caption\nsub/p.png,relative\n")
    assert CaptionTable.load(tmp_path / "r.csv").lookup(img) == ()
    img.parent.mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "imgs")  # relative entries: the manifest's folder, then the cwd
    assert CaptionTable.load(tmp_path / "r.csv").lookup(img) == ("relative",)
    assert CaptionTable.load(tmp_path / "c.csv").lookup(img) == ("absolute",)  # exact wins
    (tmp_path / "none.csv").write_text("image,caption\na.png,\n")
    with pytest.raises(DataError, match="none.csv holds no captions"):
        CaptionTable.load(tmp_path / "none.csv")


def test_datasets_and_caption_table_read_a_manifest_alike(tmp_path):
    for n in "ab":
        Image.new("RGB", (4, 4)).save(tmp_path / f"{n}.png")
    (tmp_path / "m.tsv").write_text("file\ttext\na.png\tx | y\nb.png\tz\na.png\tw\n")
    src = open_dataset(tmp_path / "m.tsv")
    table = CaptionTable.load(tmp_path / "m.tsv")
    assert [s.captions for s in src] == [("x", "y", "w"), ("z",)]
    assert [table.lookup(s.path) for s in src] == [s.captions for s in src]
    (tmp_path / "a.txt").write_text("side one\nside two\n")
    folder = open_dataset(tmp_path, "folder")
    assert [s.captions for s in folder] == [sidecar_captions(tmp_path / "a.png"), ()]
    assert folder[0].captions == ("side one", "side two")
