"""Optional dependencies, imported where used, with a precise install hint when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from vlm_ad.errors import MissingDependencyError

# module name -> (pip distribution, vlm-ad extra)
_KNOWN = {
    "faiss": ("faiss-cpu", "retrieval"),
    "open_clip": ("open_clip_torch", "clip"),
    "transformers": ("transformers", "clip"),
    "peft": ("peft", "lora"),
    "accelerate": ("accelerate", "lora"),
    "onnxruntime": ("onnxruntime", "export"),
    "openvino": ("openvino", "export"),
    "llama_cpp": ("llama-cpp-python", "llm-local"),
    "gguf": ("gguf", "llm-local"),
    "langchain_core": ("langchain-core", "llm"),
    "av": ("av", "video"),
    "cv2": ("opencv-python-headless", "video"),
    "anomalib": ("anomalib", "bench"),
    "ray": ("ray", "scale"),
    "fastapi": ("fastapi", "serve"),
    "uvicorn": ("uvicorn", "serve"),
    "python_multipart": ("python-multipart", "serve"),
    "conformal_clip_data": ("conformal-clip-data==0.1.4", "all"),
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra that brings it.

    Args:
        module: importable module name, e.g. ``"faiss"``.
        purpose: what it is needed for, used in the message ("faiss is needed for <purpose>").
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        dist, extra = _KNOWN.get(module, (module, "all"))
        raise MissingDependencyError(
            f"{module} is needed for {purpose}; pip install 'vlm-ad[{extra}]' (or pip install {dist})"
        ) from exc
