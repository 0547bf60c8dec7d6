"""The exceptions vlm-ad raises.

Every error says what was wrong, what is allowed, and how to fix it. The tree::

    VlmAdError                      base of everything vlm-ad raises on purpose
    ├── ConfigError (ValueError)    a bad option, argument or config value
    │   └── UnknownNameError        a registry name that does not exist (lists the valid ones)
    ├── MissingDependencyError (ImportError)
    │                               an optional extra is not installed (says which pip command fixes it)
    ├── WeightsNotFoundError (FileNotFoundError)
    │                               model weights are not on disk (says how to provide them)
    ├── DataError (ValueError)      input data that cannot be used
    │   ├── ImageReadError          an unreadable, truncated or unsupported image file
    │   │   └── ImageTooLargeError  more pixels than the memory guard allows ($VLM_AD_MAX_PIXELS)
    │   ├── MaskError               a missing or malformed ground-truth mask
    │   └── EmptyDatasetError       a folder or split with no usable images
    ├── NotFittedError (RuntimeError)
    │                               an estimator used before ``fit``
    └── ReasonerError               the reasoning stage failed
        ├── BackendUnavailableError (ConnectionError)
        │                           an LLM server that cannot be reached, or a model that cannot be loaded
        └── ExplanationError        LLM output that stayed invalid after repair and retries (keeps ``raw``)
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "ConfigError",
    "DataError",
    "EmptyDatasetError",
    "ExplanationError",
    "ImageReadError",
    "ImageTooLargeError",
    "MaskError",
    "MissingDependencyError",
    "NotFittedError",
    "ReasonerError",
    "UnknownNameError",
    "VlmAdError",
    "WeightsNotFoundError",
]


class VlmAdError(Exception):
    """Base class of every error vlm-ad raises on purpose."""


class ConfigError(VlmAdError, ValueError):
    """A bad option, argument or config value."""


class UnknownNameError(ConfigError, KeyError):
    """A registry lookup of a name that does not exist."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class MissingDependencyError(VlmAdError, ImportError):
    """An optional dependency is not installed."""


class WeightsNotFoundError(VlmAdError, FileNotFoundError):
    """Model weights are not available on disk."""


class DataError(VlmAdError, ValueError):
    """Input data that cannot be used."""


class ImageReadError(DataError):
    """An image file that cannot be read (corrupt, truncated, unsupported)."""


class ImageTooLargeError(ImageReadError):
    """An image with more pixels than the memory guard allows (``$VLM_AD_MAX_PIXELS``)."""


class MaskError(DataError):
    """A missing or malformed ground-truth mask."""


class EmptyDatasetError(DataError):
    """A folder or split that holds no usable images."""


class NotFittedError(VlmAdError, RuntimeError):
    """An estimator used before it was fitted."""


class ReasonerError(VlmAdError):
    """The reasoning stage (evidence -> explanation) failed."""


class BackendUnavailableError(ReasonerError, ConnectionError):
    """An LLM server that cannot be reached, or a local model that cannot be loaded."""


class ExplanationError(ReasonerError):
    """LLM output that is still invalid after JSON repair and retries.

    Attributes:
        raw: the model's last raw reply, kept so the user can see what went wrong.
        problems: what was wrong with it (parse errors, uncited numbers, unknown region ids).
    """

    def __init__(self, message: str, *, raw: str = "", problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.raw = raw
        self.problems = list(problems or [])
