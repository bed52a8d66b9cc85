import json
import re
from pathlib import Path

import pytest

from serving import InvalidInput, parse_manifest

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_yaml_blocks() -> list[str]:
    """The ```yaml blocks of the README, as written there."""
    return re.findall(r"^```yaml\n(.*?)^```$", README.read_text(), flags=re.M | re.S)


DIGITS_YAML = readme_yaml_blocks()[0]  # the README's "## Manifest" example


def test_the_documented_yaml_manifest_parses():
    blocks = readme_yaml_blocks()
    assert blocks, "README.md has no ```yaml manifest block"
    for block in blocks:
        parse_manifest(block)  # every manifest the README shows is one the upload accepts
    m = parse_manifest(DIGITS_YAML)
    assert m.task == "image-classification"
    assert str(m.pricing.per_call) == "0.002"
    assert m.pricing.trial_calls == 5
    assert m.inputs[0].shape == [-1, 64]
    assert [o.name for o in m.outputs] == ["label", "probabilities"]


def test_json_manifest_parses_the_same():
    m = parse_manifest(DIGITS_YAML)
    again = parse_manifest(json.dumps(m.model_dump(mode="json")))
    assert again == m


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d.pop("pricing"), "pricing"),
    (lambda d: d.update(task="speech"), "task"),
    (lambda d: d.update(colour="red"), "colour"),
    (lambda d: d.pop("preprocessing"), "preprocessing"),
    (lambda d: d["pricing"].update(per_call="-1"), "per_call"),
    (lambda d: d["pricing"].update(per_call="0.0000001"), "per_call"),
    (lambda d: d["inputs"][0].update(shape=[-1, 0]), "shape"),
    (lambda d: d["inputs"][0].update(dtype="complex64"), "dtype"),
    (lambda d: d.update(preprocessing={"size": [4, 4], "mode": "L"}), "64"),
])
def test_bad_manifests_name_the_problem(mutate, needle):
    data = parse_manifest(DIGITS_YAML).model_dump(mode="json")
    mutate(data)
    with pytest.raises(InvalidInput) as err:
        parse_manifest(json.dumps(data))
    assert err.value.code == "invalid_manifest"
    assert needle in err.value.message


def test_tabular_needs_feature_names_matching_the_input():
    data = {"title": "t", "category": "c", "task": "tabular-regression",
            "inputs": [{"name": "X", "dtype": "float32", "shape": [-1, 3]}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 1]}],
            "feature_names": ["a", "b"], "pricing": {"per_call": "0.001"}}
    with pytest.raises(InvalidInput, match="feature_names"):
        parse_manifest(json.dumps(data))
    data["feature_names"] = ["a", "b", "c"]
    assert parse_manifest(json.dumps(data)).feature_names == ["a", "b", "c"]


@pytest.mark.parametrize("text", ["", "- a\n- b", "{not: [valid", b"\xff\xfe"])
def test_garbage_is_refused_cleanly(text):
    with pytest.raises(InvalidInput):
        parse_manifest(text)
