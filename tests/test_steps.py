"""The two shipped steps on their own (no Dask, no LIMS): physics against the simulator's truth."""

from __future__ import annotations

import numpy as np
import pytest

from hpcproc.errors import InputError, StepError
from hpcproc.formats import read_scan_info
from hpcproc.nexus.frames import FrameReader
from hpcproc.steps.registry import available_steps, get_step
from hpcproc.steps.xrd_integrate import XrdIntegrate
from hpcproc.steps.xrf_windows import XrfWindows, line_energy

MCA = "/entry/instrument/xspress3/data"


def test_registered_through_entry_points():
    steps = available_steps()
    assert steps["xrd_integrate"] is XrdIntegrate
    assert steps["xrf_windows"] is XrfWindows
    with pytest.raises(InputError, match=r"unknown step 'nope'.*xrd_integrate"):
        get_step("nope")


@pytest.mark.parametrize(
    ("line", "energy"),
    [
        ("Fe-Ka1", 6405.2),
        ("Co-Ka1", 6930.9),
        ("Ni-Ka1", 7480.3),
        ("Cu-Ka1", 8046.3),
        ("Zn-Ka1", 8637.2),
    ],
)
def test_line_energies_come_from_xraydb(line, energy):
    assert line_energy(line) == pytest.approx(energy, abs=0.5)
    # The family "Ka" is the intensity-weighted mean of Ka1 and Ka2: a little below Ka1.
    family = line_energy(line[:-1])
    assert energy - 15 < family < energy


@pytest.mark.parametrize("bad", ["Fe", "Xx-Ka", "Fe-Qz"])
def test_bad_line_names_say_what_is_wrong(bad):
    with pytest.raises(StepError, match=bad.split("-")[-1]):
        line_energy(bad)


def _maps(sim_scan, **params) -> dict[str, np.ndarray]:
    scan = read_scan_info(sim_scan.path)
    step = XrfWindows(XrfWindows.Params(**params), scan)
    with FrameReader(sim_scan.path, MCA) as reader:
        out = step.process(reader.read_batch(range(scan.n_points)))
    return {k.split("/")[1]: v.reshape(scan.shape) for k, v in out.items()}


def _corr(a: np.ndarray, b: list) -> float:
    return float(np.corrcoef(a.ravel(), np.asarray(b).ravel())[0, 1])


def test_calibration_from_scan_or_parameters(sim_scan, truth):
    fe = truth["xrf"]["elements"]["Fe"]["pattern"]
    from_scan = _maps(sim_scan, elements="Fe-Ka Zn-Ka")
    assert _corr(from_scan["Fe-Ka"], fe) > 0.9
    # A wrong gain given as a parameter overrides the scan's and moves the window off the line.
    wrong = _maps(sim_scan, elements=["Fe-Ka"], energy_offset=0.0, energy_gain=12.5)
    assert wrong["Fe-Ka"].sum() < 0.2 * from_scan["Fe-Ka"].sum()
    # The right one, as the simulator's mean calibration, gives the map back.
    gain = float(np.mean(truth["xrf"]["energy_gain_eV"]))
    offset = float(np.mean(truth["xrf"]["energy_offset_eV"]))
    given = _maps(sim_scan, elements=["Fe-Ka"], energy_offset=offset, energy_gain=gain)
    assert _corr(given["Fe-Ka"], fe) > 0.9


def test_window_sums_equal_a_direct_sum(sim_scan):
    """Summing over channels and a window equals numpy on the raw spectra, channel by channel."""
    scan = read_scan_info(sim_scan.path)
    step = XrfWindows(XrfWindows.Params(elements=["Cu-Ka"], window_width=7, channels=[0, 3]), scan)
    with FrameReader(sim_scan.path, MCA) as reader:
        spectra = reader.read_batch(range(5))
    expected = sum(spectra[:, c, lo:hi].sum(axis=1) for c, lo, hi in step.windows["Cu-Ka"])
    assert [hi - lo for _, lo, hi in step.windows["Cu-Ka"]] == [7, 7]
    np.testing.assert_array_equal(step.process(spectra)["maps/Cu-Ka"], expected)


def test_xrd_in_two_theta_matches_truth(sim_scan, truth):
    scan = read_scan_info(sim_scan.path)
    step = XrdIntegrate(
        XrdIntegrate.Params(poni=sim_scan.poni, npt=800, unit="2th_deg", method="histogram"), scan
    )
    (spec,) = step.output_specs()
    assert spec.axes[0].name == "two_theta" and spec.axes[0].units == "deg"
    with FrameReader(sim_scan.path, "/entry/instrument/excalibur/data") as reader:
        pattern = step.process(reader.read_batch(range(8)))["integrated/I"].mean(axis=0)
    tth = spec.axes[0].values
    strongest = max(
        (r for r in truth["rings"] if tth[0] < r["two_theta_deg"] < tth[-1]),
        key=lambda r: r["relative_intensity"],
    )
    window = np.abs(tth - strongest["two_theta_deg"]) < 0.5
    peak = tth[window][np.argmax(pattern[window])]
    assert abs(peak - strongest["two_theta_deg"]) < 2 * (tth[1] - tth[0])


def test_unreadable_poni_is_a_clear_error(sim_scan, tmp_path):
    bad = tmp_path / "empty.poni"
    bad.write_text("# nothing here\n")
    with pytest.raises(StepError, match=r"empty\.poni has no pixel size"):
        XrdIntegrate(XrdIntegrate.Params(poni=bad), read_scan_info(sim_scan.path))
