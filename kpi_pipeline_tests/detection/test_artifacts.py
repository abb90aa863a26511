import io
import json
import pickle
import zipfile

import numpy as np
import pytest

from kpi_pipeline.detection.artifacts import (
    FORMAT_VERSION,
    UnreadableArtifact,
    library_versions,
    pack,
    read_document,
    unpack,
)

STATE = {
    "scale": 0.1 + 0.2,  # not representable in few digits: read back to the same bits
    "tiny": 5e-324,
    "flags": [True, None, "text"],
    "nested": {"values": np.arange(5, dtype=np.int16), "blob": b"\x00\x01\xff"},
    "matrix": np.linspace(0, 1, 12).reshape(3, 4),
}


def test_a_state_reads_back_exactly():
    got = unpack(pack("thing", STATE), "thing")
    assert got["scale"] == STATE["scale"] and got["tiny"] == 5e-324
    assert got["flags"] == [True, None, "text"]
    values = got["nested"]["values"]
    assert values.dtype == np.int16 and values.tolist() == [0, 1, 2, 3, 4]
    assert bytes(got["nested"]["blob"]) == b"\x00\x01\xff"
    np.testing.assert_array_equal(got["matrix"], STATE["matrix"])


def test_the_same_state_packs_to_the_same_bytes():
    assert pack("thing", STATE) == pack("thing", STATE)


def test_an_artifact_records_its_format_and_the_libraries_that_made_it():
    document, _ = read_document(pack("thing", STATE), "thing")
    assert document["format_version"] == FORMAT_VERSION
    assert document["libraries"] == library_versions()
    assert set(document["libraries"]) == {"numpy", "scikit-learn", "prophet"}
    assert all(document["libraries"].values())


def test_a_pickle_is_refused_with_what_to_do():
    with pytest.raises(UnreadableArtifact, match="pickle.*migrate.*retrain"):
        unpack(pickle.dumps({"a": 1}), "iforest")


def test_another_kind_or_a_newer_format_is_refused():
    with pytest.raises(UnreadableArtifact, match="expected a prophet model"):
        unpack(pack("iforest", {}), "prophet")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(
            "state.json",
            json.dumps(
                {
                    "format": "kpi-pipeline model",
                    "format_version": FORMAT_VERSION + 1,
                    "kind": "thing",
                    "libraries": {},
                    "state": {},
                }
            ),
        )
    with pytest.raises(UnreadableArtifact, match="newer kpi-pipeline"):
        unpack(buffer.getvalue(), "thing")
    with pytest.raises(UnreadableArtifact, match="not a kpi-pipeline model"):
        unpack(b"junk", "thing")


def test_object_arrays_are_not_stored():
    with pytest.raises(TypeError, match="pickle"):
        pack("thing", {"bad": np.array([object()])})


def _version_1(state: dict) -> bytes:
    """``state`` (arrays at its top level) as format version 1 wrote it: each array replaced by
    ``{"array": name}`` alone, its dtype and shape only in the ``.npy`` header."""
    arrays = {f"a{i}": value for i, value in enumerate(v for v in state.values() if isinstance(v, np.ndarray))}
    names = iter(arrays)
    document = {
        "format": "kpi-pipeline model",
        "format_version": 1,
        "kind": "thing",
        "libraries": {},
        "state": {key: {"array": next(names)} if isinstance(v, np.ndarray) else v for key, v in state.items()},
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("state.json", json.dumps(document))
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return buffer.getvalue()


def test_an_artifact_of_format_version_1_still_reads():
    state = {"matrix": np.linspace(0, 1, 12).reshape(3, 4), "count": 3, "ints": np.arange(4, dtype=">i4")}
    got = unpack(_version_1(state), "thing")
    assert got["count"] == 3
    np.testing.assert_array_equal(got["matrix"], state["matrix"])
    assert got["ints"].dtype == np.dtype(">i4") and got["ints"].tolist() == [0, 1, 2, 3]


def test_arrays_read_without_their_header_equal_numpy_s_reading_and_are_writable():
    state = {
        "matrix": np.linspace(0, 1, 12).reshape(3, 4),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),  # stored in C order
        "empty": np.zeros((0, 3)),
        "scalar": np.array(2.5),
        "big_endian": np.arange(3, dtype=">f8"),
        "bools": np.array([True, False]),
    }
    data = pack("thing", state)
    got = unpack(data, "thing")
    document, archive = read_document(data, "thing")
    for key, value in state.items():
        member = document["state"][key]
        assert member["dtype"] == value.dtype.str and member["shape"] == list(value.shape)
        with archive.open(f"{member['array']}.npy") as raw:
            by_numpy = np.lib.format.read_array(raw, allow_pickle=False)
        assert got[key].dtype == by_numpy.dtype and got[key].shape == by_numpy.shape
        np.testing.assert_array_equal(got[key], by_numpy)
        np.testing.assert_array_equal(got[key], value)
    got["matrix"][0, 0] = 7.0  # as an array np.load returns


def test_an_array_shorter_than_its_description_or_of_objects_is_refused():
    data = pack("thing", {"values": np.arange(3.0)})
    document, archive = read_document(data, "thing")
    for wrong in ({"dtype": "<f8", "shape": [1000]}, {"dtype": "|O", "shape": [3]}):
        document["state"]["values"].update(wrong)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as copy:
            copy.writestr("state.json", json.dumps(document))
            copy.writestr("a0.npy", archive.read("a0.npy"))
        with pytest.raises(UnreadableArtifact, match="shorter|objects"):
            unpack(buffer.getvalue(), "thing")
