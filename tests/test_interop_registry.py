"""The Hugging Face registry: each interop/<family>.py registers itself, and the registry alone
answers which families convert and as what."""

import os
import subprocess
import sys

import pytest

from attnlab.errors import UserError
from attnlab.interop import HFModelType, HFSpec, hf_spec_for, register_hf
from attnlab.interop.registry import HF_MODEL_TYPES, HF_SPECS, hf_model_type, model_type_for_export
from attnlab.models import FAMILIES, preset

CONVERTING = {"gpt": {"gpt2"}, "bert": {"bert", "roberta", "distilbert"}, "t5": {"t5"}, "transformer": {"marian"},
              "reformer": {"reformer"}, "longformer": {"longformer"}, "bigbird": {"big_bird"}, "mamba": {"mamba"}}


def test_every_interop_module_registers_itself_on_importing_the_package():
    """A fresh interpreter that only asks the registry sees every family: nothing names the modules."""
    code = "from attnlab.interop.registry import HF_SPECS; print(' '.join(sorted(HF_SPECS)))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # this checkout's attnlab
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == sorted(CONVERTING)


def test_hf_spec_for_names_the_model_types_of_each_family_and_none_for_the_rest():
    for family in FAMILIES:
        spec = hf_spec_for(family)
        if family in CONVERTING:
            assert spec.family == family
            assert {t.model_type for t in spec.model_types} == CONVERTING[family]
        else:
            assert spec is None, family
    assert set(HF_SPECS) <= set(FAMILIES)


def test_bert_exports_as_the_model_type_its_config_calls_for():
    assert model_type_for_export(preset("bert-tiny")).model_type == "bert"
    assert model_type_for_export(preset("bert-tiny", position_style="roberta", pad_token_id=1)).model_type == "roberta"
    assert model_type_for_export(preset("bert-tiny", type_vocab_size=0, pooler=False)).model_type == "distilbert"


def test_unknown_names_are_one_line_errors_listing_the_registry():
    with pytest.raises(UserError, match="attnlab imports bert, big_bird, distilbert, gpt2") as err:
        hf_model_type("llama")
    assert "\n" not in str(err.value)
    xl = FAMILIES["transformer_xl"].config_class()
    with pytest.raises(UserError, match="no Hugging Face export; attnlab exports bert, bigbird, gpt"):
        model_type_for_export(xl)


def test_a_spec_registers_once_and_a_multi_type_spec_needs_an_export_choice():
    gpt2 = HF_MODEL_TYPES["gpt2"]
    with pytest.raises(ValueError, match="registered twice"):
        register_hf(HFSpec("gpt", (gpt2,)))
    with pytest.raises(ValueError, match="registered twice"):
        register_hf(HFSpec("another", (gpt2,)))
    assert "another" not in HF_SPECS
    with pytest.raises(ValueError, match="needs export_type"):
        HFSpec("two", (gpt2, HFModelType("other", "Other", "", None, None, None, {})))
