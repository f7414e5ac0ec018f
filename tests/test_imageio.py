"""clipsr_cli.io.images: every format round-tripped, 16-bit kept, metadata carried, errors named.

All images are made here (small, fixed seed); nothing is read from outside the test's tmp_path.
"""

from __future__ import annotations

import dataclasses
import io
import os
import stat
import struct
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageOps

from clipsr_cli.io import encode
from clipsr_cli.io import images as imageio
from clipsr_cli.errors import InputError, OutputExistsError, UsageError
from clipsr_cli.io.images import (
    from_pil,
    is_image_path,
    output_path_for,
    read_image,
    to_pil,
    write_image,
)

RNG = np.random.default_rng(0)
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def smooth_rgb(h: int = 24, w: int = 32) -> torch.Tensor:
    """A smooth colour ramp (lossy codecs keep it close) as (1, 3, H, W) in [0, 1]."""
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([x, y, (x + y) / 2])[None].float()


def u16(h: int, w: int, c: int) -> np.ndarray:
    return RNG.integers(0, 65536, (h, w, c), dtype=np.uint16)


def as_u16(t: torch.Tensor) -> np.ndarray:
    return np.rint(t[0].permute(1, 2, 0).numpy() * 65535).astype(np.uint16)


def as_u8(t: torch.Tensor) -> np.ndarray:
    return np.rint(t[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def png_ihdr(path) -> tuple[int, int]:
    data = path.read_bytes()
    return data[24], data[25]  # bit depth, colour type


def fake_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


# -- formats --------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext,lossless", [("png", True), ("jpg", False), ("webp", False),
                                          ("tif", True), ("bmp", True)])
def test_round_trip_every_format(tmp_path, ext, lossless):
    rgb = smooth_rgb()
    out = write_image(tmp_path / f"a.{ext}", rgb)
    assert out == tmp_path / f"a.{ext}"
    back = read_image(out)
    assert back.size == (32, 24) and back.bit_depth == 8 and not back.grayscale
    assert back.rgb.shape == (1, 3, 24, 32) and back.rgb.dtype == torch.float32
    assert back.alpha is None
    if lossless:
        assert np.array_equal(as_u8(back.rgb), as_u8(rgb))
    else:
        assert (back.rgb - rgb).abs().mean() < 0.02


def test_quantisation_rounds(tmp_path):
    rgb = torch.full((1, 3, 2, 2), 100.6 / 255)
    rgb[..., 0, 0] = 100.4 / 255
    back = read_image(write_image(tmp_path / "r.png", rgb))
    vals = as_u8(back.rgb)[..., 0]
    assert vals[0, 0] == 100 and vals[1, 1] == 101


@pytest.mark.parametrize("ext", ["png", "tif", "webp"])
def test_rgba_keeps_alpha(tmp_path, ext):
    rgb = smooth_rgb()
    alpha = torch.linspace(0, 1, 32).expand(1, 1, 24, 32).contiguous()
    back = read_image(write_image(tmp_path / f"a.{ext}", rgb, alpha))
    assert back.alpha is not None and back.alpha.shape == (1, 1, 24, 32)
    assert (back.alpha - alpha).abs().max() <= (0.5 / 255 if ext != "webp" else 0.05)


@pytest.mark.parametrize("ext", ["jpg", "bmp"])
def test_alpha_composited_over_white_where_it_cannot_be_kept(tmp_path, ext):
    rgb = torch.zeros(1, 3, 16, 16)
    alpha = torch.ones(1, 1, 16, 16)
    alpha[..., :, 8:] = 0  # right half fully transparent black → white
    back = read_image(write_image(tmp_path / f"a.{ext}", rgb, alpha))
    assert back.alpha is None
    assert back.rgb[..., :, 12:].min() > 0.95 and back.rgb[..., :, :4].max() < 0.05


def test_grayscale_modes(tmp_path):
    g = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
    Image.fromarray(g).save(tmp_path / "l.png")
    li = read_image(tmp_path / "l.png")
    assert li.grayscale and li.bit_depth == 8 and li.alpha is None
    assert all(np.array_equal(as_u8(li.rgb)[..., c], g) for c in range(3))
    out = write_image(tmp_path / "l_out.png", li.rgb, like=li)
    assert Image.open(out).mode == "L" and np.array_equal(np.asarray(Image.open(out)), g)

    a = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
    Image.fromarray(np.dstack([g, a])).save(tmp_path / "la.png")
    li = read_image(tmp_path / "la.png")
    assert li.grayscale and np.array_equal(np.rint(li.alpha[0, 0].numpy() * 255), a)
    out = write_image(tmp_path / "la_out.png", li.rgb, li.alpha, like=li)
    assert Image.open(out).mode == "LA" and np.array_equal(np.asarray(Image.open(out)),
                                                           np.dstack([g, a]))

    Image.fromarray(g > 127).save(tmp_path / "bilevel.png")  # mode "1"
    li = read_image(tmp_path / "bilevel.png")
    assert li.grayscale and set(np.unique(as_u8(li.rgb))) <= {0, 255}


def test_palette_with_and_without_transparency(tmp_path):
    p = Image.new("P", (4, 3))
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.putpixel((1, 1), 1)
    p.save(tmp_path / "p.png")
    li = read_image(tmp_path / "p.png")
    assert not li.grayscale and li.alpha is None
    assert as_u8(li.rgb)[1, 1].tolist() == [0, 255, 0]
    assert as_u8(li.rgb)[0, 0].tolist() == [255, 0, 0]

    p.save(tmp_path / "pt.png", transparency=1)  # index 1 is transparent
    li = read_image(tmp_path / "pt.png")
    assert li.alpha is not None
    assert li.alpha[0, 0, 1, 1] == 0 and li.alpha[0, 0, 0, 0] == 1

    p.save(tmp_path / "p.gif", transparency=1)  # GIF: read as its first frame
    li = read_image(tmp_path / "p.gif")
    assert li.alpha[0, 0, 1, 1] == 0 and as_u8(li.rgb)[0, 0].tolist() == [255, 0, 0]


def test_rgb_colour_key_transparency(tmp_path):
    arr = np.zeros((2, 3, 3), np.uint8)
    arr[0, 0] = [10, 20, 30]
    Image.fromarray(arr).save(tmp_path / "k.png", transparency=(10, 20, 30))
    li = read_image(tmp_path / "k.png")
    assert li.alpha[0, 0, 0, 0] == 0 and li.alpha[0, 0, 1, 1] == 1


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # red
    li = read_image(tmp_path / "c.jpg")
    r, g, b = as_u8(li.rgb)[2, 2].tolist()
    assert r > 200 and g < 60 and b < 60 and li.icc_profile is None


# -- 16 bit ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [3, 4, 2])
def test_png16_colour_exact_round_trip(tmp_path, channels):
    import png  # pypng: an independent decoder for what we write

    data = u16(7, 9, channels)
    colour, alpha = (data[..., :-1], data[..., -1]) if channels in (2, 4) else (data, None)
    if channels == 2:
        colour = np.repeat(colour, 3, axis=2)  # gray content
    out = write_image(tmp_path / "a.png", colour, alpha,
                      like=None if channels != 2 else _gray16_like())
    assert png_ihdr(out) == (16, {3: 2, 4: 6, 2: 4}[channels])
    w, h, rows, _ = png.Reader(filename=str(out)).read()
    decoded = np.vstack([np.asarray(r, np.uint16) for r in rows]).reshape(h, w, -1)
    assert np.array_equal(decoded, data)
    with Image.open(out) as im:  # Pillow's C decoder agrees (it keeps the high byte)
        if channels != 2:
            assert np.array_equal(np.asarray(im), (data >> 8).astype(np.uint8))

    back = read_image(out)
    assert back.bit_depth == 16 and back.grayscale == (channels == 2)
    got = as_u16(back.rgb)[..., :1] if channels == 2 else as_u16(back.rgb)
    assert np.array_equal(got, data[..., :got.shape[2]])
    if alpha is not None:
        assert np.array_equal(np.rint(back.alpha[0, 0].numpy() * 65535).astype(np.uint16), alpha)
    again = write_image(tmp_path / "b.png", back.rgb, back.alpha, like=back)
    assert again.read_bytes() == out.read_bytes()


def _gray16_like():
    return imageio.LoadedImage(rgb=torch.zeros(1, 3, 1, 1), alpha=None, bit_depth=16,
                               grayscale=True, icc_profile=None, exif=None, format="PNG",
                               source="<test>")


def test_row_blocks_join_seamlessly(tmp_path, monkeypatch):
    data = u16(23, 9, 4)
    rgb = torch.rand(1, 3, 23, 9)
    alpha = torch.rand(1, 1, 23, 9)
    whole = [read_image(write_image(tmp_path / "a.png", data[..., :3], data[..., 3])),
             read_image(write_image(tmp_path / "a.bmp", rgb, alpha))]
    monkeypatch.setattr(encode, "_BLOCK", 80)  # blocks of 2 (PNG filter) and 8 (quantise) rows
    blocks = [read_image(write_image(tmp_path / "b.png", data[..., :3], data[..., 3])),
              read_image(write_image(tmp_path / "b.bmp", rgb, alpha))]
    for x, y in zip(whole, blocks, strict=True):
        assert torch.equal(x.rgb, y.rgb)
    assert np.array_equal(as_u16(blocks[0].rgb), data[..., :3])


@pytest.mark.parametrize("interlace", [False, True])
def test_png16_from_an_independent_encoder(tmp_path, interlace):
    import png

    data = u16(5, 6, 3)
    with open(tmp_path / "p.png", "wb") as f:
        png.Writer(6, 5, greyscale=False, bitdepth=16, interlace=interlace).write(
            f, data.reshape(5, -1))
    back = read_image(tmp_path / "p.png")
    assert back.bit_depth == 16 and np.array_equal(as_u16(back.rgb), data)


def test_png16_gray(tmp_path):
    g = u16(5, 7, 1)[..., 0]
    Image.fromarray(g).save(tmp_path / "g.png")  # Pillow: mode I;16
    li = read_image(tmp_path / "g.png")
    assert li.bit_depth == 16 and li.grayscale
    assert np.array_equal(as_u16(li.rgb)[..., 0], g)
    out = write_image(tmp_path / "g_out.png", li.rgb, like=li)
    assert png_ihdr(out) == (16, 0)
    assert np.array_equal(np.asarray(Image.open(out)), g)


@pytest.mark.parametrize("channels", [3, 4, 1])
def test_tiff16_exact_round_trip(tmp_path, channels):
    import tifffile

    data = u16(6, 8, channels)
    src = tmp_path / "src.tif"
    tifffile.imwrite(src, data[..., 0] if channels == 1 else data,
                     photometric="minisblack" if channels == 1 else "rgb",
                     extrasamples=("unassalpha",) if channels == 4 else None)
    li = read_image(src)
    assert li.bit_depth == 16 and li.grayscale == (channels == 1)
    assert np.array_equal(as_u16(li.rgb)[..., :min(channels, 3)], data[..., :3])
    out = write_image(tmp_path / "out.tiff", li.rgb, li.alpha, like=li)
    got = tifffile.imread(out)
    assert got.dtype == np.uint16
    assert np.array_equal(got.reshape(data.shape), data)


def test_tiff16_with_a_codec_tifffile_lacks_is_a_clear_error(tmp_path):
    import tifffile

    src = tmp_path / "lzw.tif"
    tifffile.imwrite(src, u16(4, 4, 3), photometric="rgb")
    with tifffile.TiffFile(src, mode="r+b") as tif:
        tif.pages[0].tags["Compression"].overwrite(5)  # claims LZW (data is not)
    with pytest.raises(InputError) as e:
        read_image(src)
    if 5 not in tifffile.TIFF.DECOMPRESSORS:
        assert "imagecodecs" in str(e.value)


def test_sixteen_bits_requested_for_jpeg_is_refused(tmp_path):
    with pytest.raises(UsageError, match="16 bits"):
        write_image(tmp_path / "a.jpg", smooth_rgb(), bit_depth=16)
    li16 = read_image(write_image(tmp_path / "a.png", u16(4, 4, 3)))
    out = write_image(tmp_path / "b.jpg", li16.rgb, like=li16)  # a 16-bit *source* → 8-bit JPEG
    assert read_image(out).bit_depth == 8


# -- metadata -------------------------------------------------------------------------------------
def test_exif_orientation_6_comes_out_upright(tmp_path):
    upright = np.full((10, 20, 3), 128, np.uint8)  # 20 wide, 10 tall
    upright[:4, :4] = [255, 0, 0]  # marker at the top-left
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # as a camera stores it
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "clipsr-test"  # Make
    stored.save(tmp_path / "o.jpg", exif=exif.tobytes(), quality=95)
    li = read_image(tmp_path / "o.jpg")
    assert li.size == (20, 10)
    assert as_u8(li.rgb)[1, 1].tolist()[0] > 200 and as_u8(li.rgb)[1, 18].tolist()[0] < 160
    out = write_image(tmp_path / "o_out.jpg", li.rgb, like=li)
    written = Image.open(out).getexif()
    assert written.get(0x0112) == 1 and written.get(0x010F) == "clipsr-test"
    assert Image.open(out).size == (20, 10)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow(tmp_path, orientation):
    arr = RNG.integers(0, 256, (3, 5, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(tmp_path / "o.png", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")))
    assert np.array_equal(as_u8(read_image(tmp_path / "o.png").rgb), expected)


@pytest.mark.parametrize("ext,bits", [("png", 8), ("jpg", 8), ("webp", 8), ("tif", 8),
                                      ("png", 16), ("tif", 16)])
def test_icc_profile_carried(tmp_path, ext, bits):
    src = tmp_path / f"in.{ext}"
    if bits == 16:
        li = read_image(write_image(tmp_path / f"s.{ext}", u16(4, 4, 3)))
        li = dataclasses.replace(li, icc_profile=SRGB)
        write_image(src, li.rgb, like=li)
    else:
        Image.fromarray(as_u8(smooth_rgb(8, 8))).save(src, icc_profile=SRGB)
    li = read_image(src)
    assert li.icc_profile == SRGB and li.bit_depth == bits
    out = write_image(tmp_path / f"out.{ext}", li.rgb, like=li)
    assert Image.open(out).info.get("icc_profile") == SRGB


def test_rgb_icc_not_put_on_grayscale_output(tmp_path):
    li = read_image(write_image(tmp_path / "g.png", torch.full((1, 3, 4, 4), 0.5)))
    li = dataclasses.replace(li, icc_profile=SRGB, grayscale=True)
    out = write_image(tmp_path / "g2.png", li.rgb, like=li)
    assert Image.open(out).mode == "L" and "icc_profile" not in Image.open(out).info


# -- stdin / stdout / bytes -----------------------------------------------------------------------
class _Std:
    def __init__(self, data: bytes = b"", tty: bool = False):
        self.buffer = io.BytesIO(data)
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_stdin_and_stdout(tmp_path, monkeypatch):
    buf = io.BytesIO()
    Image.fromarray(as_u8(smooth_rgb(5, 6))).save(buf, "PNG")
    monkeypatch.setattr(sys, "stdin", _Std(buf.getvalue()))
    li = read_image("-")
    assert li.source == "<stdin>" and li.size == (6, 5) and li.format == "PNG"

    out = _Std()
    monkeypatch.setattr(sys, "stdout", out)
    assert write_image("-", li.rgb, format="png") is None
    assert np.array_equal(as_u8(read_image(out.buffer.getvalue()).rgb), as_u8(li.rgb))
    with pytest.raises(UsageError, match="`format='png'`"):  # no format, no input to follow
        write_image("-", li.rgb)
    assert os.listdir(tmp_path) == []


def test_empty_or_terminal_stdio(monkeypatch):
    monkeypatch.setattr(sys, "stdin", _Std(b""))
    with pytest.raises(InputError, match="empty"):
        read_image("-")
    monkeypatch.setattr(sys, "stdin", _Std(b"", tty=True))  # nothing piped: do not hang
    with pytest.raises(InputError, match="piped"):
        read_image("-")
    monkeypatch.setattr(sys, "stdout", _Std(tty=True))
    with pytest.raises(InputError, match="terminal"):
        write_image("-", smooth_rgb(2, 2), format="png")


# -- broken inputs --------------------------------------------------------------------------------
def _good_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    arr = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # noise: no run compresses away
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_detected(tmp_path, fmt):
    data = _good_bytes(fmt)
    (tmp_path / "t.img").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"corrupt|truncated"):
        read_image(tmp_path / "t.img")


def test_corrupt_png_data(tmp_path):
    data = bytearray(_good_bytes("PNG"))
    i = data.index(b"IDAT") + 40
    data[i:i + 20] = b"\xff" * 20
    (tmp_path / "c.png").write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupt"):
        read_image(tmp_path / "c.png")


def test_truncated_16bit_png(tmp_path):
    data = write_image(tmp_path / "a.png", u16(64, 64, 3)).read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"corrupt|truncated"):
        read_image(tmp_path / "t.png")


@pytest.mark.parametrize("content,match", [
    (b"", "empty"),
    (b"hello, this is text\n", "not a PNG"),
])
def test_not_images(tmp_path, content, match):
    (tmp_path / "x.png").write_bytes(content)
    with pytest.raises(InputError, match=match):
        read_image(tmp_path / "x.png")


def test_known_but_unsupported_format_is_named(tmp_path):
    Image.new("RGB", (3, 3)).save(tmp_path / "x.ppm")
    with pytest.raises(InputError, match="PPM"):
        read_image(tmp_path / "x.ppm")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="folder"):
        read_image(tmp_path)


def test_zero_size_and_absurd_size(tmp_path):
    (tmp_path / "z.png").write_bytes(fake_png(0, 5))
    with pytest.raises(InputError):
        read_image(tmp_path / "z.png")
    (tmp_path / "huge.png").write_bytes(fake_png(100_000, 100_000))
    with pytest.raises(InputError, match="megapixels"):
        read_image(tmp_path / "huge.png")
    # 200 MP: over Pillow's own bomb limit but a legitimate photo size: only the (fake) data fails
    limit = Image.MAX_IMAGE_PIXELS
    (tmp_path / "big.png").write_bytes(fake_png(20_000, 10_000))
    with pytest.raises(InputError, match=r"corrupt|truncated"):
        read_image(tmp_path / "big.png")
    assert limit == Image.MAX_IMAGE_PIXELS


# -- writing safely -------------------------------------------------------------------------------
@pytest.mark.parametrize("exc", [RuntimeError("encoder broke"), KeyboardInterrupt()])
def test_failed_write_leaves_nothing(tmp_path, monkeypatch, exc):
    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"partial data")
        raise exc

    (tmp_path / "keep.png").write_bytes(b"old")
    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(type(exc)):
        write_image(tmp_path / "new.png", smooth_rgb())
    with pytest.raises(type(exc)):
        write_image(tmp_path / "keep.png", smooth_rgb(), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["keep.png"]
    assert (tmp_path / "keep.png").read_bytes() == b"old"


def test_failed_16bit_write_leaves_nothing(tmp_path, monkeypatch):
    def broken(f, kind, data):
        if kind == b"IEND":
            raise OSError(28, "No space left on device")
        f.write(data)

    monkeypatch.setattr(encode, "_png_chunk", broken)
    with pytest.raises(InputError, match="No space left"):
        write_image(tmp_path / "a.png", u16(4, 4, 3))
    assert os.listdir(tmp_path) == []


def test_no_overwrite_without_permission(tmp_path):
    dest = tmp_path / "a.png"
    dest.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="`overwrite=True`") as e:
        write_image(dest, smooth_rgb())
    assert e.value.path == dest
    assert dest.read_bytes() == b"old"
    write_image(dest, smooth_rgb(), overwrite=True)
    assert read_image(dest).size == (32, 24)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o666 & ~umask
    assert sorted(os.listdir(tmp_path)) == ["a.png"]


def test_refuses_to_write_onto_the_input(tmp_path):
    src = write_image(tmp_path / "in.png", smooth_rgb())
    li = read_image(src)
    with pytest.raises(OutputExistsError, match="input"):
        write_image(src, li.rgb, like=li)
    write_image(src, 1 - li.rgb, like=li, overwrite=True)
    assert torch.allclose(read_image(src).rgb, 1 - li.rgb, atol=1 / 255)


def test_destination_problems(tmp_path):
    rgb = smooth_rgb(4, 4)
    with pytest.raises(InputError, match="does not exist"):
        write_image(tmp_path / "no" / "a.png", rgb)
    with pytest.raises(InputError, match="extension"):
        write_image(tmp_path / "a.xyz", rgb)
    with pytest.raises(UsageError, match="does not match"):
        write_image(tmp_path / "a.png", rgb, format="jpeg")
    with pytest.raises(UsageError, match="unknown image format"):
        write_image(tmp_path / "a", rgb, format="gif")
    with pytest.raises(UsageError, match="quality"):
        write_image(tmp_path / "a.jpg", rgb, quality=0)
    (tmp_path / "d.png").mkdir()
    with pytest.raises(InputError, match="folder"):
        write_image(tmp_path / "d.png", rgb)
    assert write_image(tmp_path / "a.out", rgb, format="jpg").read_bytes()[:2] == b"\xff\xd8"
    with pytest.raises(ValueError, match="NaN"):
        write_image(tmp_path / "n.png", torch.full((1, 3, 2, 2), float("nan")))
    assert not (tmp_path / "n.png").exists()
    with pytest.raises(ValueError, match="batch"):
        write_image(tmp_path / "b.png", torch.zeros(2, 3, 2, 2))
    with pytest.raises(ValueError, match="alpha"):
        write_image(tmp_path / "b.png", rgb, torch.ones(1, 1, 3, 3))


# -- helpers and PIL bridge -----------------------------------------------------------------------
def test_paths():
    assert output_path_for("/x/photo.JPG", 4).as_posix() == "/x/photo_x4.JPG"
    assert output_path_for("/x/photo.jpg", 2, format="png").as_posix() == "/x/photo_x2.png"
    assert output_path_for("/x/anim.gif", 2).as_posix() == "/x/anim_x2.png"
    assert output_path_for("p.png", 4, suffix="_edited").as_posix() == "p_edited.png"
    with pytest.raises(InputError, match="`output=FILE`"):
        output_path_for("-", 4)
    assert is_image_path("a/B.TIFF") and is_image_path("x.jpeg") and is_image_path("y.webp")
    assert not is_image_path("notes.txt") and not is_image_path("anim.gif")
    assert not is_image_path("png")


def test_pil_bridge():
    img = Image.new("RGBA", (3, 2), (255, 0, 0, 128))
    li = from_pil(img)
    assert li.size == (3, 2) and li.alpha is not None and li.source == "<image>"
    assert abs(float(li.alpha.mean()) - 128 / 255) < 1e-6
    back = to_pil(li.rgb, li.alpha)
    assert back.mode == "RGBA" and back.getpixel((0, 0)) == (255, 0, 0, 128)

    # what the engine passes: a quantised uint16 (H, W, 3) array + an alpha tensor
    arr = np.full((2, 3, 3), 257 * 200, np.uint16)
    pil = to_pil(arr, torch.ones(1, 1, 2, 3), bit_depth=16, icc_profile=SRGB)
    assert pil.mode == "RGBA" and pil.getpixel((1, 1)) == (200, 200, 200, 255)
    assert pil.info["icc_profile"] == SRGB
    g = to_pil(np.full((2, 3, 3), 1234, np.uint16), bit_depth=16, grayscale=True)
    assert g.mode == "I;16" and g.getpixel((0, 0)) == 1234
    with pytest.raises(InputError):
        from_pil("not an image")  # type: ignore[arg-type]
