"""The explanation schema (pydantic), bounded JSON repair, and the check that every claim is grounded in evidence."""

from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from vlm_ad.evidence import Evidence

__all__ = ["Explanation", "Step", "check_grounding", "parse_explanation", "reply_schema", "repair_json"]


class Step(BaseModel):
    """One reasoning step: a claim and the evidence ids it rests on (``S``, ``R1``, ``E1``, ...)."""

    text: str = Field(min_length=1)
    evidence: list[str] = Field(default_factory=list)


class Explanation(BaseModel):
    """A validated explanation of one image.

    ``flags`` lists grounding problems that were tolerated (``on_ungrounded="flag"``) or the fallback used;
    an explanation with no flags cites only evidence that exists.
    """

    verdict: Literal["normal", "anomalous"]
    confidence: float = Field(ge=0.0, le=1.0)
    defect_type: str | None = None
    location: str | None = None
    cited_regions: list[str] = Field(default_factory=list)
    steps: list[Step] = Field(min_length=1)
    summary: str = Field(min_length=1)
    reasoner: str = ""
    flags: list[str] = Field(default_factory=list)

    @field_validator("verdict", mode="before")
    @classmethod
    def _lower(cls, v):
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("cited_regions", mode="before")
    @classmethod
    def _region_ids(cls, v):
        # models write 1, "1", "R1" or "region 1": normalise to "R1"
        if not isinstance(v, list):
            return v
        return [f"R{m.group(1)}" if (m := re.search(r"(\d+)", str(x))) else str(x) for x in v]


def reply_schema(evidence: Evidence | None = None) -> dict:
    """The JSON schema an LLM reply must follow (the :class:`Explanation` fields a model writes).

    With ``evidence``, the schema only admits what the evidence holds: the measured verdict (the score against the
    threshold, :func:`~vlm_ad.reasoning.verify.measured_verdict`; either verdict without a threshold), cited ids
    among its ids, the location among its regions' location words (null when it has no region), the defect type
    among its namer's names (free text when no namer ran), and texts whose digits all belong to a number, id or file
    name of the evidence (:func:`quotable_pattern`). A backend that decodes under a grammar (llama.cpp) then cannot
    contradict the measurement, cite evidence that does not exist nor write a number that was not measured; the
    verdict comes first in the reply, so the texts after it are written for the measured verdict. Everything is
    still checked afterwards by :func:`check_grounding` and
    :func:`~vlm_ad.reasoning.verify.verify_claims` (other backends may ignore the schema).
    """
    from vlm_ad.reasoning.verify import measured_verdict  # verify imports this module
    def one_of(values, *, nullable=True):
        values = sorted(set(values))
        if not values:
            return {"type": ["string", "null"]} if nullable else {"type": "string"}
        return {"enum": [*values, None]} if nullable else {"type": "string", "enum": values}

    ids = sorted(evidence.ids) if evidence else []
    regions = [r.id for r in evidence.regions] if evidence else []
    measured = measured_verdict(evidence) if evidence is not None else None
    verdicts = [measured] if measured else ["normal", "anomalous"]
    location = one_of([r.location for r in evidence.regions] if evidence else [])
    if evidence is not None and not regions:  # no region has a location to name (P1 is below the threshold)
        location = {"type": "null"}
    text = {"type": "string", "minLength": 1, "maxLength": 400}
    summary = text
    if evidence is not None:  # a pattern bounds its own length (the grammar ignores maxLength next to a pattern)
        text = {"type": "string", "pattern": quotable_pattern(evidence, max_units=80)}
        summary = {"type": "string", "pattern": quotable_pattern(evidence, max_units=160)}
    return {
        "type": "object",
        "properties": {
            "verdict": {"type": "string", "enum": verdicts},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "defect_type": one_of([r.defect.name for r in evidence.regions if r.defect] if evidence else []),
            "location": location,
            "cited_regions": {"type": "array", "items": one_of(regions, nullable=False),
                              "maxItems": len(regions) if evidence else 8},
            "steps": {"type": "array", "minItems": 1, "maxItems": 6 if evidence is None else 4,
                      "items": {"type": "object", "required": ["text", "evidence"],
                                "properties": {"text": text, "evidence": {"type": "array", "maxItems": 4,
                                                                          "items": one_of(ids, nullable=False)}}}},
            "summary": summary,
        },
        "required": ["verdict", "confidence", "defect_type", "location", "cited_regions", "steps", "summary"],
    }


def _number_text(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def quotable(evidence: Evidence) -> list[str]:
    """Every digit-bearing text an explanation of ``evidence`` may write: its numbers as the evidence JSON writes them
    (and the derived ones of :meth:`Evidence.numbers`), its ids and the file names it holds. (The grounding check also
    lets small counts pass; under the grammar a model writes them as words.)"""
    found: set[str] = set(evidence.ids)

    def walk(x) -> None:
        if isinstance(x, bool) or x is None:
            return
        if isinstance(x, (int, float)):
            found.update((_number_text(x), json.dumps(x)))  # 1.0 is written "1.0" in the JSON, may be said "1"
        elif isinstance(x, str):  # file names and ids, word by word (notes are sentences)
            found.update(w.strip(",;:()[]'") for w in x.split() if any(ch.isdigit() for ch in w) and '"' not in w
                         and "\\" not in w)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(evidence.to_json())
    found |= {_number_text(v) for v in evidence.numbers()}
    return sorted(found, key=lambda t: (-len(t), t))


def quotable_pattern(evidence: Evidence, *, max_units: int | None = None) -> str:
    """A regular expression (JSON-schema ``pattern``, which llama.cpp turns into grammar) for a text whose every digit
    belongs to one of :func:`quotable` ``(evidence)``: a quotable starts the text or follows a character that is not a
    letter or digit, and is followed by one ("0.43" cannot grow into "0.435", "R" + "1" cannot make an id the evidence
    lacks). Quotes, backslashes and newlines are left out so the text stays a plain JSON string.

    ``max_units`` bounds the text to about that many characters (a quoted number counts as one), so that a model under
    the grammar cannot write on until it runs out of tokens."""
    other, letter, stop = r'[^0-9A-Za-z"\\\n]', "[A-Za-z]", r'[^0-9A-Za-z."\\\n]'
    alts = "|".join(_literal(t) for t in quotable(evidence) if not _SPECIAL.intersection(t))
    # a quotable, then (after an optional full stop) a character that is no letter, digit or full stop: "1" + "." +
    # "20" cannot chain into "1.20"
    quoted = rf"({alts})([.]?){stop}"
    times = "*" if max_units is None else f"{{1,{max_units}}}"
    return rf"^({quoted})*({letter}|{other}({quoted}){{0,3}}){times}({other}({alts})[.]?)?$"


# regex characters a quotable text may not hold; "." and "-" are written as [.] and [-], the one form both Python's
# re and llama-cpp-python's pattern-to-grammar conversion read alike (it keeps "\." as an escape GBNF rejects)
_SPECIAL = set("\\^$*+?()[]{}|\"\n")


def _literal(text: str) -> str:
    return "".join(f"[{c}]" if c in ".-" else c for c in text)


# ---------------------------------------------------------------------------------------------------- repair
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def repair_json(text: str) -> str:
    """Best-effort local repair of a model's JSON: code fences, prose around the object, trailing commas,
    Python literals, smart quotes. Returns a string for ``json.loads`` (which may still fail)."""
    m = _FENCE.search(text)
    s = m.group(1) if m else text
    start = s.find("{")
    if start >= 0:
        s = s[start:]
        depth, end = 0, -1
        for i, ch in enumerate(s):
            depth += ch == "{"
            depth -= ch == "}"
            if depth == 0 and ch == "}":
                end = i
                break
        s = s[: end + 1] if end >= 0 else s + "}" * depth  # close a truncated object
    s = s.replace("\u201c", '"').replace("\u201d", '"').replace("\u2019", "'")
    s = re.sub(r",\s*([}\]])", r"\1", s)
    s = re.sub(r"\bTrue\b", "true", re.sub(r"\bFalse\b", "false", re.sub(r"\bNone\b", "null", s)))
    return s


def parse_explanation(text: str) -> Explanation:
    """Parse a model reply into an :class:`Explanation`, repairing the JSON locally first.

    Raises:
        ValueError: with a short description of what is still wrong (for the retry prompt).
    """
    for candidate in (text, repair_json(text)):
        try:
            return Explanation.model_validate(json.loads(candidate))
        except json.JSONDecodeError:
            continue
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
            raise ValueError(f"the JSON does not match the schema ({problems})") from exc
    raise ValueError("the reply is not valid JSON (answer with one JSON object only)")


# --------------------------------------------------------------------------------------------------- grounding
_REGION = re.compile(r"\b(?:R|region\s*#?\s*)(\d+)\b", re.I)
_EXEMPLAR = re.compile(r"\bE(\d+)\b")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")
_FREE_NUMBERS = {0.0, 1.0, 2.0, 3.0, 100.0}  # counts and the 3x3 grid are always fine to say


def _matches(value: float, decimals: int, allowed: list[float]) -> bool:
    tol = 0.5 * 10.0 ** (-decimals) + 1e-9
    # a rounded quote of a value is fine; so is a ratio quoted as a percent
    return any(abs(value - a) <= max(tol, 0.005 * abs(a)) or abs(value - 100 * a) <= tol for a in allowed)


def _ungrounded_numbers(text: str, allowed: list[float]) -> list[str]:
    bad = []
    stripped = _EXEMPLAR.sub(" ", _REGION.sub(" ", text))
    for m in _NUMBER.finditer(stripped):
        tok = m.group(0)
        value = float(tok)
        decimals = len(tok.split(".")[1]) if "." in tok else 0
        if value not in _FREE_NUMBERS and not _matches(value, decimals, allowed):
            bad.append(tok)
    return bad


def check_grounding(expl: Explanation, evidence: Evidence) -> list[str]:
    """Problems with the claims of ``expl``: cited ids, mentioned regions and quoted numbers not in ``evidence``.

    An empty list means every cited id exists and every number matches a measured value (to its quoted precision):
    one of :meth:`Evidence.numbers`, or a number the evidence itself states in its texts (a defect name's
    "elongation 1.7, area 0.5% of the image"), which :func:`quotable` lets a model under the grammar write as well.
    """
    ids, problems = evidence.ids, []
    allowed = evidence.numbers() + [float(m.group(0)) for t in quotable(evidence) for m in _NUMBER.finditer(t)]
    for rid in expl.cited_regions:
        if rid not in ids:
            problems.append(f"cited_regions names {rid}, which is not in the evidence (regions: "
                            f"{', '.join(r.id for r in evidence.regions) or 'none'})")
    texts = [("summary", expl.summary)] + [(f"step {i}", s.text) for i, s in enumerate(expl.steps, 1)]
    for i, step in enumerate(expl.steps, 1):
        problems += [f"step {i} cites {e}, which is not an evidence id" for e in step.evidence if e not in ids]
    for where, text in texts:
        problems += [f"{where} mentions R{n}, which does not exist" for n in _REGION.findall(text)
                     if f"R{n}" not in ids]
        problems += [f"{where} mentions E{n}, which does not exist" for n in _EXEMPLAR.findall(text)
                     if f"E{n}" not in ids]
        problems += [f"{where} quotes {tok}, which matches no measured value" for tok in
                     _ungrounded_numbers(text, allowed)]
    return problems
