"""The wheel carries what an installed vlm-ad needs: every prompt file, loadable from a fresh virtual environment."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import venv

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

CHECK = """
import importlib, json, pkgutil, sys
from pathlib import Path
import vlm_ad
# every subpackage is in the wheel (a folder without __init__.py would be left out)
for mod in ("vlm_ad.cli", "vlm_ad.evaluation.run", "vlm_ad.pipeline", "vlm_ad.report", "vlm_ad.video.model"):
    importlib.import_module(mod)
from vlm_ad.reasoning.llm import load_prompt, prompts_dir
from vlm_ad.clip_prompts import load_prompt_set
root = Path(vlm_ad.__file__).parent
names = sorted(p.stem for p in (root / "prompts").iterdir() if p.suffix in (".yaml", ".json"))
loaded = {n: sorted(load_prompt(n)) for n in names if n != "winclip"}
static = sorted(p.name for p in (root / "web" / "static").iterdir())  # the page of vlm-ad serve
print(json.dumps({"package": str(root), "prompts_dir": str(prompts_dir()), "names": names, "loaded": loaded,
                  "winclip": len(load_prompt_set().templates), "version": vlm_ad.__version__, "static": static}))
"""


def test_wheel_installs_every_prompt(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    for name in ("vlm_ad", "prompts"):
        shutil.copytree(REPO_ROOT / name, src / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(tmp_path / "dist")], check=True)
    wheel = next((tmp_path / "dist").glob("vlm_ad-*.whl"))
    env_dir = tmp_path / "fresh"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   check=True)
    # vlm_ad comes from the wheel; its dependencies (numpy, pydantic, ...) from this test's environment, listed after
    fresh_site = next(env_dir.glob("lib/python*/site-packages"))
    (fresh_site / "zz_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    out = subprocess.run([str(python), "-c", CHECK], check=True, capture_output=True, text=True, cwd=tmp_path)
    import json

    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["package"].startswith(str(env_dir)) and res["prompts_dir"].startswith(str(env_dir))
    shipped = sorted(p.stem for p in (REPO_ROOT / "prompts").iterdir() if p.suffix in (".yaml", ".json"))
    assert res["names"] == shipped and "winclip" in shipped
    assert all(keys for keys in res["loaded"].values())  # every YAML prompt parsed into a non-empty mapping
    assert res["winclip"] > 0
    assert res["static"] == ["app.css", "app.js", "index.html"]
