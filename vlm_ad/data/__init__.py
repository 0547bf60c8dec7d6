"""Data: image and mask reading, MVTec-layout and textile datasets, and the synthetic defect generator.

::

    from vlm_ad.data import MVTecDataset, generate_dataset

    cats = generate_dataset("synthetic", image_size=256, seed=0)      # brick/, grass/, gravel/
    train = MVTecDataset(cats["brick"], "train")
    shots = [train[i] for i in train.sample_shots(8, seed=0)]
    test = MVTecDataset(cats["brick"], "test")
    for sample in test.iter_samples(on_error="skip"):
        ...

Only numpy and Pillow are imported here; scipy and scikit-image are imported by the generator when used.
"""

from __future__ import annotations

from vlm_ad.data.base import DatasetItem, ImageDataset
from vlm_ad.data.images import IMAGE_EXTENSIONS, is_image_file, load_image, load_mask, save_png
from vlm_ad.data.mvtec import ImageFolder, MVTecDataset
from vlm_ad.data.splits import TEXTILE, open_data, open_train, select_shots
from vlm_ad.data.synthetic import (
    BUILTIN_SOURCES,
    DEFECT_TYPES,
    describe_defect,
    generate_dataset,
    load_source,
    make_defect,
    random_crop,
    read_references,
)
from vlm_ad.data.textile import TextileDataset

__all__ = [
    "BUILTIN_SOURCES",
    "DEFECT_TYPES",
    "IMAGE_EXTENSIONS",
    "TEXTILE",
    "DatasetItem",
    "ImageDataset",
    "ImageFolder",
    "MVTecDataset",
    "TextileDataset",
    "describe_defect",
    "generate_dataset",
    "is_image_file",
    "load_image",
    "load_mask",
    "load_source",
    "make_defect",
    "open_data",
    "open_train",
    "random_crop",
    "read_references",
    "save_png",
    "select_shots",
]
