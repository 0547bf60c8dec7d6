import subprocess
import sys

import vlm_ad


def test_public_api_is_exactly_all():
    public = {n for n in dir(vlm_ad) if not n.startswith("_")} | {"__version__"}
    assert public == set(vlm_ad.__all__)
    for name in vlm_ad.__all__:
        assert getattr(vlm_ad, name) is not None, name


def test_import_is_light():
    code = (
        "import sys, vlm_ad; "
        "print([m for m in ('torch', 'faiss', 'open_clip', 'transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
