"""BIDS JSON sidecars: reading, unit checks, writing."""

import json

import numpy as np
import pytest

from chimap.io import Acquisition, parse_sidecar, read_sidecar, sidecar_path_for, write_sidecar


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_parse_single_and_list_echo_times(tmp_path):
    p = _write(tmp_path / "a.json", {"EchoTime": 0.0052, "MagneticFieldStrength": 3, "EchoNumber": 1})
    info = parse_sidecar(p)
    np.testing.assert_allclose(info.echo_times, [0.0052])
    assert info.field_strength == 3.0 and info.echo_number == 1 and info.b0_direction is None
    assert info.source == str(p)
    info = parse_sidecar({"EchoTime": [0.004, 0.008, 0.012], "MagneticFieldStrength": 7})
    np.testing.assert_allclose(info.echo_times, [0.004, 0.008, 0.012])
    assert info.field_strength == 7.0


def test_echo_time_in_ms_rejected(tmp_path):
    p = _write(tmp_path / "ms.json", {"EchoTime": [4.0, 8.0, 12.0], "MagneticFieldStrength": 3})
    with pytest.raises(ValueError, match="millisecond") as err:
        parse_sidecar(p)
    assert "ms.json" in str(err.value) and "EchoTime" in str(err.value)
    with pytest.raises(ValueError, match="millisecond"):
        parse_sidecar({"EchoTime1": 5.19, "EchoTime2": 7.65})


def test_echotime1_echotime2_style():
    info = parse_sidecar({"EchoTime2": 0.00765, "EchoTime1": 0.00519})
    np.testing.assert_allclose(info.echo_times, [0.00519, 0.00765])
    # EchoTime (this file's echo) wins over the pair that describes a phase difference
    info = parse_sidecar({"EchoTime": 0.00765, "EchoTime1": 0.00519, "EchoTime2": 0.00765})
    np.testing.assert_allclose(info.echo_times, [0.00765])


@pytest.mark.parametrize(
    "meta, match",
    [
        ({"MagneticFieldStrength": 3000}, "tesla"),
        ({"EchoTime": -0.01}, "positive"),
        ({"EchoTime": "short"}, "EchoTime"),
        ({"EchoNumber": 0}, "EchoNumber"),
        ({"EchoNumber": 1.5}, "EchoNumber"),
        ({"B0Direction": [0, 0]}, "B0Direction"),
        ({"PhaseUnits": 3}, "PhaseUnits"),
    ],
)
def test_bad_values_rejected(meta, match):
    with pytest.raises(ValueError, match=match):
        parse_sidecar(meta)


def test_b0_direction_and_phase_units():
    info = parse_sidecar({"B0Direction": [0, 3, 4], "PhaseUnits": "siemens"})
    np.testing.assert_allclose(info.b0_direction, [0, 0.6, 0.8])
    assert info.phase_units == "siemens"
    assert parse_sidecar({"Units": "rad"}).phase_units == "rad"
    assert parse_sidecar({"Units": "Hz"}).phase_units is None


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_sidecar(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{EchoTime: 3")
    with pytest.raises(ValueError, match="bad.json"):
        read_sidecar(bad)
    with pytest.raises(ValueError, match="JSON object"):
        read_sidecar(_write(tmp_path / "list.json", [1, 2]))


def test_sidecar_path_for():
    assert sidecar_path_for("/d/sub-01_echo-1_part-phase_MEGRE.nii.gz").name == "sub-01_echo-1_part-phase_MEGRE.json"
    assert sidecar_path_for("x.nii").name == "x.json"


def test_write_sidecar_round_trip(tmp_path):
    acq = Acquisition.from_affine(np.diag([1.0, 1.0, 1.0, 1.0]), (4, 4, 4), echo_times=[0.004, 0.008],
                                  field_strength=3, b0_direction=[0, 0.6, 0.8])
    p = write_sidecar(tmp_path / "out" / "s.json", acq, extra={"Manufacturer": "chimap-sim"})
    raw = read_sidecar(p)
    assert raw["EchoTime"] == [0.004, 0.008] and raw["MagneticFieldStrength"] == 3.0
    assert raw["B0Direction"] == pytest.approx([0, 0.6, 0.8]) and raw["Manufacturer"] == "chimap-sim"
    info = parse_sidecar(p)
    np.testing.assert_array_equal(info.echo_times, acq.echo_times)
    np.testing.assert_allclose(info.b0_direction, acq.b0_direction)

    p1 = write_sidecar(tmp_path / "e1.json", echo_times=0.005, echo_number=1, phase_units="rad")
    assert read_sidecar(p1) == {"EchoTime": 0.005, "EchoNumber": 1, "PhaseUnits": "rad"}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["e1.json", "out"]


def test_write_sidecar_refuses_milliseconds(tmp_path):
    with pytest.raises(ValueError, match="millisecond"):
        write_sidecar(tmp_path / "s.json", echo_times=[4, 8])
    with pytest.raises(ValueError, match="millisecond"):
        write_sidecar(tmp_path / "s.json", {"EchoTime": 20})
    assert list(tmp_path.iterdir()) == []
