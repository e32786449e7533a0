"""The restricted unpickler for Dassl's few-shot files (issue 12 §5), fuzzed with hypothesis.

- Valid structures (any strings and ints, protocols 2-5, with or without ``val``) round-trip exactly.
- Hostile pickles are refused with the DataError that names the file and the refused global, and their payload
  never runs: ``os.system``/``subprocess`` via ``__reduce__``, ``builtins.eval``/``exec``/``getattr``/
  ``__import__``, any other module's global, hidden at any depth inside lists and dicts, hand-written opcode
  streams (protocol 0 ``GLOBAL``/``INST``, dotted names after ``Datum``, extension codes, persistent ids).
- Truncated, corrupted and random bytes give a DataError and nothing else.

Every payload would create a marker file; each test checks first that the payload is live (plain ``pickle.loads``
creates the marker) and then that the restricted reader never did.
"""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dassl_pickles import OfficialDatum, dassl_modules, dumps_official
from vlprompt.data.dassl_fewshot import DasslDatum, loads_dassl_fewshot, read_dassl_fewshot
from vlprompt.errors import DataError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "payload-ran"
    yield path
    assert not path.exists(), "the payload ran"


def _payloads(marker) -> dict[str, object]:
    """Objects whose unpickling creates ``marker`` (each through a different global)."""
    m = str(marker)
    code = f"open({m!r}, 'w').close()"

    class Reduce:
        def __init__(self, fn, args):
            self.fn, self.args = fn, args

        def __reduce__(self):
            return self.fn, self.args

    return {
        "os.system": Reduce(os.system, (f"touch '{m}'",)),
        "subprocess.call": Reduce(subprocess.call, (["touch", m],)),
        "builtins.eval": Reduce(builtins.eval, (code,)),
        "builtins.exec": Reduce(builtins.exec, (code,)),
        "builtins.__import__": Reduce(builtins.__import__, ("os",)),
    }


def _raw_getattr_chain(marker) -> bytes:
    """Protocol 0, by hand: ``getattr(__import__('os'), 'system')('touch marker')``."""
    return (b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(S'os'\ntRS'system'\ntR(S'touch " + str(marker).encode()
            + b"'\ntR.")


def _refused_without_running(data: bytes, marker, global_name: str | None = None, protocol: int = 4) -> str:
    with pytest.raises(DataError) as e:
        loads_dassl_fewshot(data, "shot_16-seed_1.pkl")
    msg = str(e.value)
    assert "shot_16-seed_1.pkl" in msg
    if global_name is not None:  # protocols < 3 store Python 2 module names (builtins -> __builtin__): match the tail
        named = f"'{global_name}', which" if protocol >= 3 else f".{global_name.rsplit('.', 1)[-1]}', which"
        assert named in msg and "which is refused" in msg and "only Dassl's split_fewshot" in msg
    assert not marker.exists()
    return msg


def _live(data: bytes, marker) -> None:
    """Plain pickle runs the payload (so the refusal above is not a dud); the marker is removed again."""
    with dassl_modules():
        try:
            pickle.loads(data)
        except Exception:  # noqa: BLE001 (the payload ran before the structure broke)
            pass
    assert marker.exists(), "payload did not run under plain pickle"
    marker.unlink()


@pytest.mark.parametrize("name", ["os.system", "subprocess.call", "builtins.eval", "builtins.exec"])
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_reduce_payloads_are_refused(marker, name, protocol):
    evil = _payloads(marker)[name]
    data = dumps_official({"train": [OfficialDatum("/d/x.jpg"), evil], "val": []}, protocol)
    refused = {"os.system": "posix.system", "subprocess.call": "subprocess.call"}.get(name, name)
    _refused_without_running(data, marker, refused, protocol)
    _live(data, marker)


def test_import_and_getattr_are_refused(marker):
    data = dumps_official({"train": [_payloads(marker)["builtins.__import__"]]}, 4)
    _refused_without_running(data, marker, "builtins.__import__")
    raw = _raw_getattr_chain(marker)
    _refused_without_running(raw, marker, "builtins.getattr")
    _live(raw, marker)


@pytest.mark.parametrize("raw,refused", [
    (b"cos\nsystem\n(S'true'\ntR.", "os.system"),                                   # protocol 0 GLOBAL + REDUCE
    (b"(S'true'\nios\nsystem\n.", "os.system"),                                     # protocol 0 INST
    (b"\x80\x04\x8c dassl.data.datasets.base_dataset\x8c\x0fDatum.__class__\x93.",   # dotted name after Datum
     "dassl.data.datasets.base_dataset.Datum.__class__"),
    (b"\x80\x04\x8c\x13dassl.data.datasets\x8c\x05Datum\x93.", "dassl.data.datasets.Datum"),  # other module
    (b"\x80\x04\x8c\x0fvlprompt.errors\x8c\tDataError\x93.", "vlprompt.errors.DataError"),  # any module global
])
def test_hand_written_globals_are_refused(marker, raw, refused):
    _refused_without_running(raw, marker, refused)


def test_extension_codes_and_persistent_ids_are_refused(marker):
    import copyreg

    copyreg.add_extension("os", "system", 0x7A)  # even a registered extension code goes through find_class
    try:
        _refused_without_running(b"\x80\x02\x82\x7a(S'true'\ntR.", marker, "os.system")
    finally:
        copyreg.remove_extension("os", "system", 0x7A)
    _refused_without_running(b"\x80\x02\x82\x7b.", marker)  # unregistered code
    assert "persistent id" in _refused_without_running(b"\x80\x02X\x03\x00\x00\x00abcQ.", marker)


def test_setstate_planted_by_a_first_build_cannot_call_anything(marker):
    """BUILD looks ``__setstate__`` up on the instance: a first BUILD can plant one, but the only callable a file can
    name is the stand-in class itself, which takes no arguments (instances of opcode-built types are not callable)."""
    raw = (b"\x80\x04\x8c\x20dassl.data.datasets.base_dataset\x8c\x05Datum\x93\x94)\x81"
           b"}\x8c\x0c__setstate__h\x00sb}b.")
    assert "TypeError" in _refused_without_running(raw, marker)


# --- hypothesis ---------------------------------------------------------------------------------------------------

datums = st.builds(DasslDatum, st.text(), st.integers(0, 2**70), st.integers(-(2**70), 2**70), st.text())


@FUZZ
@given(train=st.lists(datums, max_size=20), val=st.none() | st.lists(datums, max_size=8), protocol=st.integers(2, 5),
       shared=st.booleans())
def test_valid_structures_round_trip(train, val, protocol, shared):
    def official(ds):
        out = [OfficialDatum(d.impath, d.label, d.domain, d.classname) for d in ds]
        return out + out[:1] if shared and out else out  # the same Datum twice: memo references (BINGET)

    data = {"train": official(train)} if val is None else {"train": official(train), "val": official(val)}
    got_train, got_val = loads_dassl_fewshot(dumps_official(data, protocol))
    want = train + train[:1] if shared and train else train
    assert got_train == want
    assert got_val == (None if val is None else (val + val[:1] if shared and val else val))


@st.composite
def hostile_trees(draw, evil):
    """A random JSON-like structure (dicts/lists/str/int/Datum) with ``evil`` placed somewhere inside it."""
    leaves = st.one_of(st.integers(), st.text(max_size=5), st.builds(lambda: OfficialDatum("/d/a.jpg")))
    tree = draw(st.recursive(leaves, lambda kids: st.lists(kids, max_size=3)
                             | st.dictionaries(st.text(max_size=3), kids, max_size=3), max_leaves=10))
    depth = draw(st.integers(0, 4))
    node = evil
    for _ in range(depth):
        node = [tree, node] if draw(st.booleans()) else {"train": node, "k": tree}
    return {"train": [node]} if draw(st.booleans()) else {"val": [], "train": [tree, node]}


@FUZZ
@given(data=st.data(), name=st.sampled_from(["os.system", "subprocess.call", "builtins.eval", "builtins.exec"]),
       protocol=st.integers(2, 5))
def test_payloads_hidden_anywhere_are_refused(marker, data, name, protocol):
    evil = _payloads(marker)[name]
    blob = dumps_official(data.draw(hostile_trees(evil)), protocol)
    _refused_without_running(blob, marker, {"os.system": "posix.system"}.get(name, name), protocol)


_VALID = dumps_official({"train": [OfficialDatum(f"/d/oxford_pets/images/a_{i}.jpg", i % 3, 0, "a") for i in range(6)],
                         "val": [OfficialDatum("/d/oxford_pets/images/b_1.jpg", 1, 0, "b")]}, 5)


@FUZZ
@given(cut=st.integers(0, len(_VALID) - 1))
def test_truncated_files_are_refused(cut):
    with pytest.raises(DataError, match="not a readable pickle|bytes after the end|holds"):
        loads_dassl_fewshot(_VALID[:cut], "f.pkl")


@FUZZ
@given(pos=st.integers(0, len(_VALID) - 1), byte=st.integers(0, 255), extra=st.binary(max_size=4))
def test_corrupted_files_give_data_error_or_a_valid_result(marker, pos, byte, extra):
    blob = _VALID[:pos] + bytes([byte]) + _VALID[pos + 1:]
    for candidate in (blob, _VALID + extra if extra else blob):
        try:
            train, val = loads_dassl_fewshot(candidate, "f.pkl")
        except DataError:
            continue
        assert all(type(d) is DasslDatum for d in train + (val or []))


@FUZZ
@given(extra=st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_refused(extra):
    """A genuine file ends at its pickle's STOP; anything appended (a second pickle included) is refused."""
    for blob in (_VALID + extra, _VALID + pickle.dumps(0)):
        with pytest.raises(DataError, match="bytes after the end of its pickle"):
            loads_dassl_fewshot(blob, "f.pkl")


@FUZZ
@given(blob=st.binary(max_size=200))
def test_random_bytes_are_refused(blob):
    with pytest.raises(DataError):
        loads_dassl_fewshot(blob, "f.pkl")


@FUZZ
@given(value=st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4)
                          | st.binary(max_size=4),
                          lambda kids: st.lists(kids, max_size=3) | st.tuples(kids, kids)
                          | st.dictionaries(st.text(max_size=4), kids, max_size=3), max_leaves=8))
def test_other_structures_are_refused(value):
    """Anything but {"train": [Datum...], "val": [Datum...]} (wrong types, keys, attributes) is refused."""
    for data in (value, {"train": value}, {"train": [value]}, {"train": [], "val": value}):
        if data == {"train": []} or (isinstance(data, dict) and data.get("val") == [] and data.get("train") == []):
            continue
        with pytest.raises(DataError):
            loads_dassl_fewshot(pickle.dumps(data, 4), "f.pkl")


@pytest.mark.parametrize("attrs", [
    {"_impath": "/a.jpg", "_label": True, "_domain": 0, "_classname": "a"},       # bool is not an int label
    {"_impath": b"/a.jpg", "_label": 0, "_domain": 0, "_classname": "a"},         # bytes path
    {"_impath": "/a.jpg", "_label": 0, "_domain": 0},                             # missing field
    {"_impath": "/a.jpg", "_label": 0, "_domain": 0, "_classname": "a", "x": 1},  # extra field
    {"_impath": "/a.jpg", "_label": -1, "_domain": 0, "_classname": "a"},         # negative label
])
def test_malformed_datums_are_refused(attrs):
    d = OfficialDatum()
    d.__dict__.clear()
    d.__dict__.update(attrs)
    with pytest.raises(DataError, match=r"'train'\[0\]"):
        loads_dassl_fewshot(dumps_official({"train": [d]}), "f.pkl")


def test_file_level_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="no such file"):
        read_dassl_fewshot(str(tmp_path / "none.pkl"))
    big = tmp_path / "shot_16-seed_1.pkl"
    big.write_bytes(_VALID)
    monkeypatch.setattr("vlprompt.data.dassl_fewshot.MAX_FILE_BYTES", len(_VALID) - 1)
    with pytest.raises(DataError, match="Dassl few-shot files are a few MB at most"):
        read_dassl_fewshot(str(big))
