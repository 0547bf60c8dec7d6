"""Video input: frame folders (the UCSD layout ``<split>/<clip>/NNN.jpg``) and video files decoded with PyAV.

Frames are read lazily, one at a time. A frame or file that cannot be decoded is reported in
:attr:`VideoClip.problems` and skipped; it never stops the frames that can be read.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vlm_ad.errors import DataError, EmptyDatasetError

__all__ = ["FRAME_EXTS", "VIDEO_EXTS", "Frame", "VideoClip", "load_frame_labels", "load_mask", "open_clips"]

FRAME_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


@dataclass
class Frame:
    """One decoded frame.

    Attributes:
        index: 0-based frame index in its clip (the file order for frame folders, the decode order for videos).
        image: (H, W, 3) uint8 RGB pixels.
        clip: the clip name.
    """

    index: int
    image: np.ndarray
    clip: str


@dataclass
class VideoClip:
    """A lazily read clip: a folder of frame images or one video file.

    Attributes:
        name: clip name (folder name or file stem).
        path: the folder or the video file.
        problems: frames or files that could not be read, one line each (filled while iterating).
    """

    name: str
    path: Path
    problems: list[str] = field(default_factory=list)

    @property
    def is_video_file(self) -> bool:
        """Whether the clip is a video file (else a folder of frames)."""
        return self.path.is_file()

    def frame_files(self) -> list[Path]:
        """The frame image files of a frame-folder clip, sorted by name."""
        return sorted(p for p in self.path.iterdir() if p.suffix.lower() in FRAME_EXTS and not p.name.startswith("."))

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def frames(self, stride: int = 1) -> Iterator[Frame]:
        """Yield every ``stride``-th readable frame; unreadable ones go to :attr:`problems`."""
        self.problems.clear()
        source = self._video_frames() if self.is_video_file else self._folder_frames()
        for frame in source:
            if frame.index % stride == 0:
                yield frame

    def _folder_frames(self) -> Iterator[Frame]:
        for index, path in enumerate(self.frame_files()):
            try:
                with Image.open(path) as im:
                    image = np.array(im.convert("RGB"))
            except (OSError, ValueError) as exc:
                self.problems.append(f"{path}: unreadable frame skipped ({type(exc).__name__}: {exc})")
                continue
            yield Frame(index, image, self.name)

    def _video_frames(self) -> Iterator[Frame]:
        from vlm_ad._deps import require

        av = require("av", "reading video files")
        try:
            container = av.open(str(self.path))
        except (av.FFmpegError, OSError, ValueError) as exc:
            self.problems.append(f"{self.path}: unreadable video skipped ({type(exc).__name__}: {exc})")
            return
        index = 0
        with container:
            try:
                for packet in container.demux(video=0):
                    try:
                        decoded = packet.decode()
                    except (av.FFmpegError, ValueError) as exc:
                        self.problems.append(f"{self.path}: packet at frame {index} skipped ({exc})")
                        continue
                    for frame in decoded:
                        yield Frame(index, frame.to_ndarray(format="rgb24"), self.name)
                        index += 1
            except (av.FFmpegError, OSError, ValueError) as exc:
                self.problems.append(f"{self.path}: stream ends early after {index} frames ({exc})")


def _has_frames(folder: Path) -> bool:
    return any(p.suffix.lower() in FRAME_EXTS for p in folder.iterdir())


def open_clips(path: str | Path, split: str | None = None) -> list[VideoClip]:
    """The clips at ``path``: a video file, a folder of frames, a folder of clip folders / video files, or a
    UCSD-layout root (with ``split`` = ``"train"`` or ``"test"``).

    Raises:
        EmptyDatasetError: when no clip is found.
    """
    path = Path(path)
    if split is not None:
        path = path / split
    if not path.exists():
        raise DataError(f"video input {path} does not exist; give a video file, a frame folder or a folder of clips")
    if path.is_file():
        if path.suffix.lower() not in VIDEO_EXTS:
            raise DataError(f"{path} is not a video file (allowed: {', '.join(VIDEO_EXTS)})")
        return [VideoClip(path.stem, path)]
    if _has_frames(path):
        return [VideoClip(path.name, path)]
    clips = [VideoClip(p.stem if p.is_file() else p.name, p) for p in sorted(path.iterdir())
             if (p.is_dir() and _has_frames(p)) or (p.is_file() and p.suffix.lower() in VIDEO_EXTS)]
    if not clips:
        raise EmptyDatasetError(f"no clips in {path}: expected <clip>/NNN.jpg folders or video files "
                                f"({', '.join(VIDEO_EXTS)})")
    return clips


def load_frame_labels(csv_path: str | Path) -> dict[str, dict[int, int]]:
    """Frame labels from a CSV with columns ``clip, frame, anomalous`` -> {clip: {frame: 0 or 1}}."""
    labels: dict[str, dict[int, int]] = {}
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"clip", "frame", "anomalous"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{csv_path} lacks columns {sorted(missing)}; expected a header 'clip,frame,anomalous'")
        for row in reader:
            labels.setdefault(row["clip"], {})[int(row["frame"])] = int(row["anomalous"])
    return labels


def load_mask(root: str | Path, clip: str, frame_file: Path | int) -> np.ndarray | None:
    """The (H, W) bool mask ``<root>/ground_truth/<clip>/<stem>_mask.png`` of a frame, or None if there is none."""
    stem = Path(frame_file).stem if isinstance(frame_file, Path) else f"{frame_file:03d}"
    path = Path(root) / "ground_truth" / clip / f"{stem}_mask.png"
    if not path.exists():
        return None
    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127
