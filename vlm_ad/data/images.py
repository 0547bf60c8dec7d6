"""Reading images and masks into the library's array conventions, and writing PNGs atomically.

Images are returned as ``(H, W, 3)`` ``uint8`` RGB whatever the file holds:

* grayscale (``L``, ``1``) is repeated into three channels;
* palette images go through their palette (transparency included);
* alpha (``RGBA``, ``LA``, ``PA``) is composited onto black, so fully transparent pixels read as black;
* 16-bit and 32-bit integer (single-channel) images are scaled from the range of their bit depth: 8, 12 or 16
  bits, the smallest that holds the image's largest value (a 12-bit camera frame stored in a 16-bit PNG or TIFF
  uses 0-4095; read as 16-bit it would keep 16 grey levels), or ``$VLM_AD_BIT_DEPTH`` when set (see
  :func:`bit_depth`); 16-bit colour TIFFs and PNGs the same way (through tifffile and OpenCV: Pillow keeps only
  each sample's high byte);
  float images in [0, 1] are scaled by 255 and other float ranges are min-max stretched;
* CMYK, YCbCr, LAB and other modes are converted by Pillow;
* the EXIF orientation tag is applied (the array is what a viewer shows);
* multi-frame files (TIFF, GIF) give their first frame.

Every failure (missing, unreadable, corrupt or truncated file) raises :class:`~vlm_ad.errors.ImageReadError`
naming the file and the reason. Truncated files are never padded: ``Image.load()`` must decode every pixel.
"""

from __future__ import annotations

import contextlib
import io
import os
from os import PathLike
from pathlib import Path
from typing import Callable, TypeVar, Union

import numpy as np
from PIL import Image, ImageOps

from vlm_ad._cache import atomic_write_bytes
from vlm_ad.errors import ConfigError, ImageReadError, ImageTooLargeError, MaskError

__all__ = ["IMAGE_EXTENSIONS", "bit_depth", "is_image_file", "load_image", "load_mask", "save_png"]

PathLikeStr = Union[str, PathLike]
T = TypeVar("T")

#: File name suffixes (lower case) treated as images when listing folders.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def is_image_file(path: PathLikeStr) -> bool:
    """True for a visible file whose suffix is one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


#: Largest image (width x height) decoded without being asked: 40 MP, e.g. 8000 x 5000. A flat 12000 x 9000 PNG is
#: 126 KB on disk and gigabytes once decoded, overlaid and measured. ``$VLM_AD_MAX_PIXELS`` changes it (0 = no cap).
DEFAULT_MAX_PIXELS = 40_000_000


def max_pixels() -> int:
    """The pixel cap in force: ``$VLM_AD_MAX_PIXELS`` when set (0 = none), else :data:`DEFAULT_MAX_PIXELS`."""
    raw = os.environ.get("VLM_AD_MAX_PIXELS")
    if raw is None:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"VLM_AD_MAX_PIXELS must be a whole number of pixels (0 = no cap), got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"VLM_AD_MAX_PIXELS must be >= 0 (0 = no cap), got {value}")
    return value


def _check_size(im: Image.Image, path: Path, what: str, cap: int) -> None:
    """Refuse an image larger than ``cap`` pixels from its header, before any pixel is decoded."""
    w, h = im.size
    if cap and w * h > cap:
        raise ImageTooLargeError(
            f"{what} {path} is {w} x {h} = {w * h / 1e6:.1f} MP, above the {cap / 1e6:.0f} MP limit that guards "
            "memory; downscale it, or raise the limit with VLM_AD_MAX_PIXELS=<pixels> if you have the memory"
        )


def _read(path: Path, error: type[Exception], what: str, convert: Callable[[Image.Image], T]) -> T:
    """Open ``path``, check its size from the header, decode every pixel and ``convert`` the image; failures
    become ``error`` naming the file."""
    if not path.exists():
        raise error(f"{what} {path} does not exist; check the path")
    if not path.is_file():
        raise error(f"{what} {path} is not a file; pass an image file (one of {', '.join(IMAGE_EXTENSIONS)})")
    cap = max_pixels()
    try:
        with Image.open(path) as im:
            _check_size(im, path, what, cap)
            deep = _deep_colour(im)  # read before load(), which drops the decoder's raw mode
            # and the orientation, which Pillow's TIFF loader applies to its own pixels and removes
            turned = _orientation(im) if deep else 1
            im.load()  # decodes all pixel data of the first frame; truncated files raise here
            if deep and convert is _to_rgb:
                return _deep_colour_rgb(im, path, error, what, turned or _orientation(im))
            return convert(im)
    except (error, ImageTooLargeError, ConfigError):  # ConfigError: a bad $VLM_AD_BIT_DEPTH, not a bad file
        raise
    except Image.UnidentifiedImageError:
        raise error(
            f"cannot read {what} {path}: not a recognised image format "
            f"(expected one of {', '.join(IMAGE_EXTENSIONS)}); the file may be corrupt or mislabelled"
        ) from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ... on bad data
        reason = str(exc) or type(exc).__name__
        hint = "the file is corrupt or truncated; re-export it or remove it from the folder"
        raise error(f"cannot read {what} {path}: {reason} ({hint})") from exc


def _deep_colour(im: Image.Image) -> bool:
    """True for a 16-bit-per-sample colour file: Pillow decodes only the high byte of each sample of those."""
    if im.mode not in ("RGB", "RGBA") or not im.tile:
        return False
    args = im.tile[0][3]
    raw = args[0] if isinstance(args, tuple) and args else args
    return isinstance(raw, str) and ";16" in raw


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1-8), 0 when the file has none or its EXIF block is malformed."""
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 0))
    except Exception:
        return 0


def _deep_colour_rgb(im: Image.Image, path: Path, error: type[Exception], what: str, orientation: int) -> np.ndarray:
    """A 16-bit colour file as uint8 RGB by its bit depth, every bit read: TIFF through tifffile, PNG through OpenCV
    (Pillow decodes only the high byte of each sample of both). The file's EXIF orientation is applied as for 8-bit
    files. Where neither reader can decode the file (a TIFF compression tifffile needs imagecodecs for; OpenCV not
    installed), Pillow's high bytes are used, and a PNG whose values fit in 12 bits (the high bytes alone would be a
    black image) is refused with what to do instead."""
    arr = _deep_colour_array(im, path)
    if arr is not None:
        rgb = _high_depth_to_uint8(arr[..., :3], is_float=False).astype(np.float32)
        if arr.shape[2] == 4:  # alpha composited onto black, as for 8-bit RGBA
            rgb *= _high_depth_to_uint8(arr[..., 3:], is_float=False).astype(np.float32) / 255.0
        out = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(oriented(out, orientation))
    out = _to_rgb(im)
    if out.max() <= 15 and os.environ.get("VLM_AD_BIT_DEPTH", "").strip() != "16":
        raise error(
            f"cannot read {what} {path}: a 16-bit colour {im.format} whose values fit in 12 bits (0-4095); the "
            f"reader gives only the high byte of each value (at most {int(out.max())} here), which would be a black "
            "image. Save it as an uncompressed or deflate 16-bit TIFF (read at its full depth) or as an 8-bit PNG "
            "(value * 255 / 4095), or set VLM_AD_BIT_DEPTH=16 to read it as it is"
        )
    return out


def _deep_colour_array(im: Image.Image, path: Path) -> np.ndarray | None:
    """The file's (H, W, 3|4) integer RGB(A) samples at full depth, or None when no installed reader decodes it."""
    arr: np.ndarray | None = None
    if im.format == "TIFF":
        import tifffile

        with contextlib.suppress(Exception):  # a compression tifffile cannot decode without imagecodecs
            arr = np.asarray(tifffile.imread(path, key=0))
    elif im.format == "PNG":
        try:
            import cv2
        except ImportError:  # opencv-python-headless is a dependency; a broken install falls back to Pillow
            return None
        with contextlib.suppress(Exception):
            arr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if arr is not None and arr.ndim == 3 and arr.shape[2] in (3, 4):
            arr = arr[..., [2, 1, 0, 3][: arr.shape[2]]]  # OpenCV gives BGR(A)
    # Pillow reports a TIFF's size with width and height swapped when its orientation turns it a quarter
    if arr is None or arr.ndim != 3 or arr.shape[2] not in (3, 4) or sorted(arr.shape[:2]) != sorted(im.size):
        return None
    return arr


_EXIF_ORIENTATION = 0x0112


def oriented(arr: np.ndarray, orientation: int) -> np.ndarray:
    """``arr`` (H, W[, C]) as a viewer shows it under EXIF orientation ``orientation`` (1-8; anything else: as
    stored), the same transposition as Pillow's ``ImageOps.exif_transpose``."""
    swap = (1, 0) + tuple(range(2, arr.ndim))
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(swap),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 2).transpose(swap),
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(orientation)
    return op(arr) if op else arr


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Convert a decoded Pillow image of any mode to (H, W, 3) uint8 RGB."""
    with contextlib.suppress(Exception):  # a malformed EXIF block should not make the pixels unreadable
        im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    elif mode == "PA":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        return np.clip(np.rint(rgba[..., :3] * alpha), 0, 255).astype(np.uint8)
    if mode in ("L", "1"):
        gray = np.asarray(im.convert("L"), dtype=np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(im)
        gray = _high_depth_to_uint8(arr, is_float=mode == "F")
        if gray.ndim == 3:
            gray = gray[..., 0]
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


#: Bit depths an integer image over 8 bits is read at when ``$VLM_AD_BIT_DEPTH`` is not set (the smallest that holds
#: its largest value). 10- and 14-bit are left out on purpose: a dark frame of a 12-bit camera whose brightest pixel
#: is under 1024 would otherwise be read 4x brighter than its siblings; 12 and 16 bits are the usual storage of
#: industrial cameras (Mono12 unshifted, or shifted into 16 bits). A 10- or 14-bit camera: set the variable.
AUTO_BIT_DEPTHS: tuple[int, ...] = (8, 12, 16)


def bit_depth(arr: np.ndarray) -> int:
    """The bit depth an integer image is scaled from: ``$VLM_AD_BIT_DEPTH`` (8-16) when set, else the smallest of
    :data:`AUTO_BIT_DEPTHS` whose range holds the image's largest value."""
    raw = os.environ.get("VLM_AD_BIT_DEPTH")
    if raw is not None and raw.strip().lower() not in ("", "auto"):
        try:
            bits = int(raw)
        except ValueError:
            bits = 0
        if not 8 <= bits <= 16:
            raise ConfigError(f"VLM_AD_BIT_DEPTH must be a whole number of bits from 8 to 16 (or 'auto'), got {raw!r}")
        return bits
    top = float(arr.max()) if arr.size else 0.0
    return next((b for b in AUTO_BIT_DEPTHS if top <= 2**b - 1), AUTO_BIT_DEPTHS[-1])


def _high_depth_to_uint8(arr: np.ndarray, *, is_float: bool) -> np.ndarray:
    if is_float:
        a = np.nan_to_num(arr.astype(np.float64))
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0.0 and hi <= 1.0:
            return np.rint(a * 255.0).astype(np.uint8)
        scale = hi - lo if hi > lo else 1.0
        return np.rint((a - lo) / scale * 255.0).astype(np.uint8)
    a = np.clip(arr.astype(np.float64), 0, 65535)
    top = 2 ** bit_depth(a) - 1
    return np.rint(np.minimum(a, top) * (255.0 / top)).astype(np.uint8)


def load_image(path: PathLikeStr) -> np.ndarray:
    """Read an image file (PNG, JPEG, BMP, TIFF, ...) as ``(H, W, 3)`` ``uint8`` RGB.

    Args:
        path: the image file.

    Returns:
        A new, writable ``(H, W, 3)`` uint8 array.

    Raises:
        ImageReadError: the file is missing, not an image, corrupt or truncated (the message names the file
            and the reason).
        ImageTooLargeError: it has more pixels than :func:`max_pixels` allows (checked before decoding).
    """
    return _read(Path(path), ImageReadError, "image", _to_rgb)


def load_mask(path: PathLikeStr, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Read a ground-truth mask as an ``(H, W)`` bool array (any value > 0 is defect).

    Colour masks count a pixel as defect when any colour channel is > 0; a mask whose colour channels are
    all zero but whose alpha varies is read from its alpha channel instead. Palette masks go through their
    palette.

    Args:
        path: the mask file.
        expected_hw: ``(height, width)`` of the image the mask belongs to; checked when given.

    Raises:
        MaskError: the file is missing, unreadable, or its size differs from ``expected_hw`` (the message names
            the file and both sizes).
    """
    path = Path(path)
    mask = _read(path, MaskError, "mask", _mask_from_image)
    if expected_hw is not None:
        exp_h, exp_w = int(expected_hw[0]), int(expected_hw[1])
        if mask.shape != (exp_h, exp_w):
            h, w = mask.shape
            raise MaskError(
                f"mask {path} is {w}x{h} (width x height) but its image is {exp_w}x{exp_h}; "
                "a mask must have exactly the size of its image: re-export it at the image's size"
            )
    return mask


def _mask_from_image(im: Image.Image) -> np.ndarray:
    with contextlib.suppress(Exception):  # same orientation rule as load_image (a no-op without EXIF)
        im = ImageOps.exif_transpose(im)
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    arr = np.asarray(im)
    if arr.ndim == 3:
        if im.mode in ("RGBA", "LA", "RGBa", "La"):
            colour, alpha = arr[..., :-1], arr[..., -1]
            mask = colour.max(axis=2) > 0
            if not mask.any() and (alpha < alpha.max()).any():
                mask = alpha > 0
        else:
            mask = arr.max(axis=2) > 0
    else:
        mask = arr > 0
    return np.ascontiguousarray(mask, dtype=bool)


def save_png(path: PathLikeStr, array: np.ndarray) -> None:
    """Write ``array`` as a PNG through a temporary file and an atomic rename.

    Accepts ``(H, W)`` or ``(H, W, 1|3|4)`` ``uint8`` arrays, and ``(H, W)`` bool arrays (written as 0/255
    grayscale, the MVTec mask convention). The bytes depend only on the pixels (no timestamps), so equal
    arrays give identical files.

    Raises:
        ConfigError: an unsupported dtype or shape.
    """
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8:
        raise ConfigError(f"save_png needs a uint8 or bool array, got dtype {a.dtype}; convert it first")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ConfigError(f"save_png needs an (H, W) or (H, W, 3|4) array, got shape {a.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG", compress_level=6)
    atomic_write_bytes(Path(path), buf.getvalue())
