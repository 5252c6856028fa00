"""`inputs` that cannot be what the user meant are refused before any cluster is touched."""

from __future__ import annotations

import pytest

from burla import remote_parallel_map

pytestmark = pytest.mark.timeout(10)


def identity(x: object) -> object:
    return x


@pytest.fixture(autouse=True)
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BURLA_CLUSTER", "tcp://127.0.0.1:1")  # nothing listens there


@pytest.mark.parametrize("inputs, shown", [(None, "NoneType: None"), (5, "int: 5"),
                                           (object, "type: <class 'object'>")])
def test_a_non_iterable_is_refused_naming_it(inputs: object, shown: str) -> None:
    with pytest.raises(TypeError) as caught:
        remote_parallel_map(identity, inputs)  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith("inputs must be an iterable") and shown in message
    assert "pass [value]" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.mark.parametrize("text, kind", [("hello", "str"), (b"hello", "bytes"),
                                        (bytearray(b"hi"), "bytearray")])
def test_text_and_bytes_are_refused_suggesting_a_list(text: object, kind: str) -> None:
    with pytest.raises(TypeError) as caught:
        remote_parallel_map(identity, text)  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith(f"inputs is a {kind} ") and "once per" in message
    assert "pass [text]" in message and "list(text)" in message


def test_iterables_of_every_kind_pass_the_check() -> None:
    for empty in ([], (), {}, set(), range(0), iter([]), (x for x in ())):
        assert remote_parallel_map(identity, empty) == []
