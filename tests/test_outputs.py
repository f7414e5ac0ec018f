"""clipsr_cli.io.outputs (the one output policy), io.atomic's temporaries and io.reports."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest

from clipsr_cli.errors import InputError, OutputExistsError, UsageError
from clipsr_cli.io import atomic
from clipsr_cli.io.outputs import (check_destination, output_path_for, resolve_destination,
                                   write_bytes_atomic, write_stdout)
from clipsr_cli.io.reports import to_json_text, write_csv, write_json


# -- the rule ---------------------------------------------------------------------------------------
def test_check_destination(tmp_path):
    src = tmp_path / "in.png"
    src.write_bytes(b"input")
    out = tmp_path / "out.png"
    assert check_destination(out, source=src, overwrite=False) == out  # new file: fine
    out.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="`overwrite=True`") as e:
        check_destination(out, source=src, overwrite=False)
    assert e.value.path == out and isinstance(e.value, InputError)
    assert check_destination(out, source=src, overwrite=True) == out
    with pytest.raises(OutputExistsError, match="refusing to overwrite the input") as e:
        check_destination(src, source=src, overwrite=False)
    assert e.value.path == src
    link = tmp_path / "link.png"
    os.link(src, link)  # another name of the input is the input
    with pytest.raises(OutputExistsError, match="the input"):
        check_destination(link, source=src, overwrite=False)
    with pytest.raises(OutputExistsError, match="another `report`"):
        check_destination(out, overwrite=False, param="report")
    # not "exists" problems: plain InputErrors
    with pytest.raises(InputError, match="does not exist") as e:
        check_destination(tmp_path / "no" / "a.png", overwrite=True)
    assert not isinstance(e.value, OutputExistsError)
    (tmp_path / "d.png").mkdir()
    with pytest.raises(InputError, match="is a folder") as e:
        check_destination(tmp_path / "d.png", overwrite=True)
    assert not isinstance(e.value, OutputExistsError)


def test_resolve_destination(tmp_path):
    src = tmp_path / "photo.jpg"
    src.write_bytes(b"x")
    assert resolve_destination(str(src), None, 4) == tmp_path / "photo_x4.jpg"
    assert resolve_destination(str(src), None, 2, format="png") == tmp_path / "photo_x2.png"
    assert resolve_destination(str(src), None, 4, suffix="_big") == tmp_path / "photo_big.jpg"
    (tmp_path / "out").mkdir()
    assert resolve_destination(str(src), str(tmp_path / "out"), 4) == tmp_path / "out" / "photo_x4.jpg"
    assert resolve_destination("-", str(tmp_path / "out"), 4) == tmp_path / "out" / "stdin_x4.png"
    assert resolve_destination(str(src), str(tmp_path / "o.webp"), 4) == tmp_path / "o.webp"
    assert resolve_destination(str(src), "-", 4, format="png") is None
    assert resolve_destination(str(src), "-", 4) is None  # in the input's format (issue #22)
    with pytest.raises(InputError, match="`output=FILE`"):
        resolve_destination("-", None, 4)
    with pytest.raises(OutputExistsError, match="input"):
        resolve_destination(str(src), str(src), 4)
    assert resolve_destination(str(src), str(src), 4, overwrite=True) == src
    (tmp_path / "photo_x4.jpg").write_bytes(b"old")
    with pytest.raises(OutputExistsError):
        resolve_destination(str(src), None, 4)
    with pytest.raises(InputError, match="does not exist"):
        resolve_destination(str(src), str(tmp_path / "nowhere" / "a.png"), 4)
    assert output_path_for(src, 8).name == "photo_x8.jpg"


def test_write_bytes_atomic_never_clobbers(tmp_path):
    p = tmp_path / "r.json"
    assert write_bytes_atomic(p, b"one", overwrite=False) == p and p.read_bytes() == b"one"
    with pytest.raises(OutputExistsError) as e:  # also when the file appeared after any check
        write_bytes_atomic(p, b"two", overwrite=False)
    assert e.value.path == p and p.read_bytes() == b"one"
    write_bytes_atomic(p, b"three", overwrite=True)
    assert p.read_bytes() == b"three" and os.listdir(tmp_path) == ["r.json"]
    with pytest.raises(InputError, match="cannot write"):
        write_bytes_atomic(tmp_path / "no" / "x", b"", overwrite=True)


class _Tty:
    def isatty(self) -> bool:
        return True


def test_stdout_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stdout", _Tty())
    with pytest.raises(InputError, match="terminal"):
        write_stdout(b"\x89PNG")


# -- the atomic writer's temporary files ----------------------------------------------------------
def test_temporary_owner_knows_the_writers_names(tmp_path):
    seen = []
    atomic.atomic_write(tmp_path / "a.b_x4.png", lambda f: seen.extend(os.listdir(tmp_path)))
    (tmp,) = seen  # the writer's own temporary, while it was being written
    assert atomic.temporary_owner(tmp) == "a.b_x4.png"
    for name in ("a.png", ".a.png", "a.png.part", ".part", "..part", ".a.part"):
        assert atomic.temporary_owner(name) is None, name
    assert atomic.temporary_owner(".a.png.x1_y.part") == "a.png"


def test_remove_stale_temporaries_touches_only_those_of_the_destinations(tmp_path):
    mine, theirs = tmp_path / "a_x4.png", tmp_path / "b_x4.png"
    stale = [tmp_path / ".a_x4.png.x1y2z3.part", tmp_path / ".a_x4.png.q.part"]
    keep = [tmp_path / ".b_x4.png.k3j4.part", tmp_path / ".a_x4.png.part", tmp_path / "a_x4.png.q.part",
            tmp_path / ".a_x4.png.q.part.bak"]
    for p in stale + keep:
        p.write_bytes(b"x")
    (tmp_path / ".a_x4.png.dir.part").mkdir()  # not a file: kept
    removed = atomic.remove_stale_temporaries([mine, theirs.with_name("c_x4.png"),
                                               tmp_path / "gone" / "x.png"])
    assert sorted(removed) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


# -- reports --------------------------------------------------------------------------------------
def _strict(text: str):
    def refuse(c):
        raise ValueError(c)

    return json.loads(text, parse_constant=refuse)


def test_json_report_is_strict_stable_and_atomic(tmp_path):
    p = tmp_path / "r.json"
    data = {"z": 1, "a": [math.nan, 1.5, (math.inf, -math.inf)], "n": {"x": math.nan},
            "path": tmp_path, "text": "café"}
    assert write_json(p, data, version=3, overwrite=False) == p
    text = p.read_text(encoding="utf-8")
    assert text.endswith("}\n") and "café" in text
    obj = _strict(text)
    assert list(obj) == ["version", "z", "a", "n", "path", "text"]  # version first, then as given
    assert obj == {"version": 3, "z": 1, "a": [None, 1.5, [None, None]], "n": {"x": None},
                   "path": str(tmp_path), "text": "café"}
    with pytest.raises(OutputExistsError):
        write_json(p, {}, version=3, overwrite=False)
    write_json(p, {"version": 3, "k": 1}, version=3, overwrite=True)
    assert _strict(p.read_text()) == {"version": 3, "k": 1}
    with pytest.raises(ValueError):
        to_json_text({"version": 2}, version=3)
    assert to_json_text({"k": math.nan}) == '{\n  "k": null\n}\n'
    with pytest.raises(InputError, match="does not exist"):
        write_json(tmp_path / "no" / "r.json", {}, version=1, overwrite=True)
    assert os.listdir(tmp_path) == ["r.json"]


def test_csv_report(tmp_path):
    p = tmp_path / "r.csv"
    rows = [{"name": "a", "psnr": 30.5, "clip": None}, {"name": "b,c", "psnr": math.nan}]
    write_csv(p, rows, fields=["name", "psnr", "clip"], overwrite=False)
    assert p.read_bytes().decode() == 'name,psnr,clip\r\na,30.5,\r\n"b,c",,\r\n'
    with pytest.raises(OutputExistsError):
        write_csv(p, rows, fields=["name", "psnr", "clip"], overwrite=False)
    with pytest.raises(ValueError):  # a key that is not a field: a programming error
        write_csv(p, [{"other": 1}], fields=["name"], overwrite=True)
    assert p.read_bytes().startswith(b"name,psnr,clip")  # the failed write left the old file
