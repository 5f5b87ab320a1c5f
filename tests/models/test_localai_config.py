"""LocalAI's config fields as the config reader and the planner take them: go-yaml's dialect,
`options:`, `known_usecases` / `reranking` deciding tasks, `top_k: -1`, the regexes of
`cutstrings` & co., and the lists of used and cosmetic fields."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from lokal.formats import localai_yaml
from lokal.models.config import ModelConfig
from lokal.models.catalog import scan_models
from lokal.models.localai_config import Finetune, finetune, ignored_fields, parse_options, speculation
from lokal.models.planner import EngineDefaults, plan_load
from tests.fakeengine import write_gguf

DEFAULTS = EngineDefaults(threads=1, parallel=1)


def folder(tmp_path: Path, config: str, architecture: str = "llama", **extra: int | str) -> Path:
    models = tmp_path / "models"
    write_gguf(models / "m.gguf", architecture=architecture, extra=extra or None)
    (models / "m.yaml").write_text("name: m\nparameters:\n  model: m.gguf\n" + config)
    return models


def entry(tmp_path: Path, config: str, architecture: str = "llama", **extra: int | str):  # noqa: ANN201
    return next(e for e in scan_models(folder(tmp_path, config, architecture, **extra)) if e.name == "m")


# go-yaml's dialect ---------------------------------------------------------------------------

def test_an_escaped_single_quote_in_double_quotes_is_a_quote() -> None:
    assert localai_yaml.load('key: "\\\'"') == {"key": "'"}
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load('key: "\\\'"')  # what PyYAML alone says


def test_only_true_and_false_are_booleans() -> None:
    assert localai_yaml.load("a: on\nb: yes\nc: true\nd: False\ne: n") == \
        {"a": "on", "b": "yes", "c": True, "d": False, "e": "n"}


def test_tags_that_build_objects_stay_refused() -> None:
    with pytest.raises(yaml.YAMLError):
        localai_yaml.load("x: !!python/object/apply:os.system ['true']")


def test_the_config_reader_reads_the_dialect(tmp_path: Path) -> None:
    found = entry(tmp_path, 'flash_attention: on\ncutstrings:\n  - "it\\\'s"\n')
    assert found.ok, found.error
    assert found.config.flash_attention == "on" and found.config.cutstrings == ["it's"]


# Values ----------------------------------------------------------------------------------------

def test_top_k_minus_one_is_off_and_below_is_refused(tmp_path: Path) -> None:
    assert entry(tmp_path, "  top_k: -1\n").config.parameters.top_k == -1
    assert "top_k" in (entry(tmp_path / "b", "  top_k: -2\n").error or "")


@pytest.mark.parametrize("options, message", [
    (["spec_type:warp"], "not a speculative type"),
    (["spec_type:draft-mtp,ngram-mod"], "chains several types"),
    (["spec_type:draft"], "needs draft_model"),
    (["spec_type:ngram-simple", "spec_n_max:lots"], "not a whole number"),
    (["reasoning_format:sometimes"], "reasoning_format"),
    (["parallel:0"], "at least 1"),
])
def test_bad_options_are_config_errors(tmp_path: Path, options: list[str], message: str) -> None:
    found = entry(tmp_path, "options:\n" + "".join(f"  - '{o}'\n" for o in options))
    assert found.error is not None and message in found.error


def test_bad_regexes_in_the_config_are_config_errors(tmp_path: Path) -> None:
    found = entry(tmp_path, "cutstrings:\n  - '(open'\n")
    assert found.error is not None and "invalid regular expression" in found.error
    found = entry(tmp_path / "b", "function:\n  response_regex:\n    - '(?P<name>x'\n")
    assert found.error is not None and "invalid regular expression" in found.error


def test_options_parse_and_map_to_speculation() -> None:
    options = parse_options(["use_jinja:true", "spec_type:draft-mtp", "spec_n_max:6", "spec_p_min:0.75", "flag"])
    assert options["flag"] == "true"
    assert speculation(options, None, None) == {"type": "draft_mtp", "n_max": 6, "p_min": 0.75}
    assert speculation(parse_options(["spec_type:ngram-simple", "spec_ngram_size_n:8"]), None, None) == \
        {"type": "ngram_simple", "size_n": 8}
    assert speculation(parse_options(["spec_type:none"]), None, None) is None


def test_unknown_options_are_logged_when_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        found = entry(tmp_path, "options:\n  - use_jinja:true\n  - warp_speed:9\n")
    assert found.ok
    assert "warp_speed mean nothing" in caplog.text and "use_jinja" not in caplog.text


def test_options_reach_the_load_plan(tmp_path: Path) -> None:
    found = entry(tmp_path, "options:\n  - reasoning_format:deepseek\n  - parallel:3\n"
                            "  - spec_type:ngram-mod\n  - spec_ngram_mod_n_match:24\n")
    plan = plan_load(found, "chat", DEFAULTS)
    assert plan.options.parallel == 3 and plan.options.engine_params == {"reasoning_format": "deepseek"}
    assert plan.options.speculative == {"type": "ngram_mod", "n_match": 24}


def test_mtp_needs_the_models_own_head(tmp_path: Path) -> None:
    from lokal.errors import ModelUnavailableError

    found = entry(tmp_path, "options:\n  - spec_type:draft-mtp\n")
    with pytest.raises(ModelUnavailableError, match="multi-token-prediction head"):
        plan_load(found, "chat", DEFAULTS)
    headed = entry(tmp_path / "b", "options:\n  - spec_type:draft-mtp\n", **{"llama.nextn_predict_layers": 1})
    assert plan_load(headed, "chat", DEFAULTS).options.speculative == {"type": "draft_mtp"}


# Tasks -----------------------------------------------------------------------------------------

def test_known_usecases_decide_the_tasks(tmp_path: Path) -> None:
    assert entry(tmp_path, "known_usecases: [chat]\n").tasks == {"chat", "complete"}
    assert entry(tmp_path / "b", "known_usecases: [chat, embeddings]\n").tasks == {"chat", "complete", "embed"}
    assert entry(tmp_path / "c", "known_usecases: [FLAG_EMBEDDINGS]\n").tasks == {"embed"}


def test_a_tts_or_score_model_is_never_served_as_chat(tmp_path: Path) -> None:
    for usecases in ("[tts]", "[score]"):
        found = entry(tmp_path / usecases.strip("[]"), f"known_usecases: {usecases}\n")
        assert not found.ok and not found.tasks
        assert "name no task" in (found.error or "")


def test_reranking_makes_an_encoder_a_cross_encoder(tmp_path: Path) -> None:
    found = entry(tmp_path, "reranking: true\n", architecture="bert")
    assert found.tasks == {"rerank"} and found.rerank_by == "cross-encoder"
    plain = entry(tmp_path / "b", "", architecture="bert")
    assert plain.tasks == {"embed", "rerank"} and plain.rerank_by == "cosine"


# Last touches and field lists --------------------------------------------------------------------

def test_finetune_as_localai_orders_it() -> None:
    config = ModelConfig.model_validate({"name": "m", "cutstrings": ["<x>"], "extract_regex": ["[0-9]+"],
                                         "trimspace": ["A:"], "trimsuffix": ["!"]})
    touches = finetune(config)
    assert isinstance(touches, Finetune) and touches
    assert touches.apply("<x>answer 42!") == "42"
    assert not finetune(ModelConfig(name="m"))


def test_used_cosmetic_and_ignored_fields() -> None:
    config = {"name": "m", "backend": "llama-cpp", "description": "d", "parameters": {"model": "x", "f16": True},
              "function": {"grammar": {"disable": True}, "return_name_in_function_response": True},
              "template": {"chat": "c"}, "options": [], "cache_type_k": "q8_0",
              "mirostat": 2, "function_call_magic": 1}
    assert ignored_fields(config) == ["function_call_magic", "mirostat"]
