"""What crosses between the ingress and a model replica, checked without a cluster:
errors keep their kind, status and type; a node lacking a model file refuses to serve."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ray")

from lokal import errors  # noqa: E402
from lokal.scale.wire import ReplicaSetupError, check_model_files, decode_error, encode_error  # noqa: E402


@pytest.mark.parametrize("exc, kind, status", [
    (errors.UnknownModelError("m"), errors.NotFound, 404),
    (errors.ModelBusyError("m", 4, retry_after=3), errors.Busy, 429),
    (errors.ContextOverflowError(9000, 2048), errors.BadRequest, 400),
    (errors.ModelUnavailableError("m", "bad file"), errors.ServerError, 500),
    (errors.EngineStuck(5), errors.ServerError, 500),
    (errors.ShuttingDown(), errors.Unavailable, 503),
    (errors.EngineError(400, "grammar is wrong", "invalid_request_error"), errors.LokalError, 400),
])
def test_errors_keep_kind_status_type_and_details(exc: errors.LokalError, kind: type, status: int) -> None:
    again = decode_error(encode_error(exc))
    assert isinstance(again, kind)
    assert (again.status, again.type, again.message, again.param) == (exc.status, exc.type, exc.message, exc.param)
    assert again.extra == exc.extra
    assert again.headers == exc.headers  # Retry-After included


def test_engine_context_overflow_is_normalised_on_the_replica() -> None:
    exc = errors.EngineError(400, "too long", "exceed_context_size_error",
                             {"n_prompt_tokens": 5000, "n_ctx": 2048})
    again = decode_error(encode_error(exc))
    assert isinstance(again, errors.BadRequest)
    assert again.extra == {"n_prompt_tokens": 5000, "n_ctx": 2048}


def test_an_unknown_exception_is_a_500_that_says_what_failed() -> None:
    again = decode_error(encode_error(ValueError("boom")))
    assert isinstance(again, errors.ServerError) and again.status == 500
    assert "ValueError: boom" in again.message


def test_a_node_lacking_a_model_file_refuses_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(b"x" * 10)
    (tmp_path / "b.gguf").write_bytes(b"x" * 5)
    expected = {"a": {"path": "a.gguf", "size": 10, "dir": False},
                "b": {"path": "b.gguf", "size": 10, "dir": False},
                "c": {"path": "sub/c.gguf", "size": 3, "dir": False}}
    with pytest.raises(ReplicaSetupError) as caught:
        check_model_files(tmp_path, expected, "node-1")
    text = str(caught.value)
    assert "node node-1" in text
    assert "model 'c': file " in text and "sub/c.gguf is missing" in text
    assert "model 'b'" in text and "5 bytes, not 10" in text
    assert "model 'a'" not in text
    assert "must hold the same files on every node" in text
    check_model_files(tmp_path, {"a": expected["a"]}, "node-1")  # all there: no error
