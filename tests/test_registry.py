import pytest

from vlm_ad.errors import ConfigError, UnknownNameError
from vlm_ad.registry import Registry


def _registry():
    reg = Registry("widget")

    @reg.register("alpha")
    def alpha(**kw):
        """An alpha widget."""
        return ("alpha", kw)

    @reg.register("pre:")
    def pre(rest, **kw):
        return ("pre", rest, kw)

    return reg


def test_create_plain_and_prefix_entries():
    reg = _registry()
    assert reg.create("alpha", x=1) == ("alpha", {"x": 1})
    assert reg.create("pre:ViT-B-16", y=2) == ("pre", "ViT-B-16", {"y": 2})
    assert reg.entries()[0].description == "An alpha widget."


def test_unknown_name_lists_valid_names_and_closest_match():
    with pytest.raises(UnknownNameError, match=r"unknown widget 'alpah'\. Did you mean 'alpha'\?.*alpha, pre:<\.\.\.>"):
        _registry().create("alpah")


def test_prefix_without_value_and_double_registration_raise():
    reg = _registry()
    with pytest.raises(ConfigError, match="needs a value after the colon"):
        reg.create("pre:")
    with pytest.raises(ConfigError, match="registered twice"):
        reg.register("alpha")(lambda: None)


def test_names_filter():
    assert _registry().names("al*") == ["alpha"]
