"""Recipes: loading with file:line:col errors, parameters, templates, order, applies_to."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcproc.errors import InputError, RecipeError
from hpcproc.recipes import (
    Recipe,
    StepSpec,
    find_recipe,
    list_recipes,
    load_recipe,
    load_recipe_text,
    recipe_dirs,
)
from hpcproc.scaninfo import DatasetInfo, ScanInfo

SHIPPED = Path(__file__).resolve().parents[1] / "recipes"
EXCALIBUR = "/entry/instrument/excalibur/data"

# A valid recipe to vary; every error test changes one thing.
GOOD = """\
name: t
parameters:
  npt: {type: int, default: 2000, minimum: 100, maximum: 20000}
  elements: {type: list, items: str, default: [Fe-Ka, Co-Ka]}
  sample: {type: str, required: true}
steps:
  - id: a
    uses: xrd_integrate
    with: {poni: /x.poni, npt: "{npt}"}
"""


def at(text: str, needle: str, nth: int = 0) -> tuple[int, int]:
    """1-based (line, col) of the nth occurrence of ``needle`` in ``text``."""
    index = -1
    for _ in range(nth + 1):
        index = text.index(needle, index + 1)
    line = text.count("\n", 0, index) + 1
    col = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, col


def error(text: str) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        load_recipe_text(text, "bad.yaml")
    return info.value


def assert_error(text: str, where: tuple[int, int], phrase: str) -> RecipeError:
    e = error(text)
    assert (e.line, e.col) == where, str(e)
    assert phrase in e.message, str(e)
    assert str(e).startswith(f"bad.yaml:{where[0]}:{where[1]}: ")
    return e


from hpcproc.dispatch.plan import with_roles  # noqa: E402
from hpcproc.steps.xrd_integrate import XrdIntegrate  # noqa: E402


def make_scan(**kw: object) -> ScanInfo:
    values: dict[str, object] = {
        "path": Path("/data/i18/cm1-1/i18-000042.nxs"),
        "scan_id": "i18-000042",
        "beamline": "i18",
        "visit": "cm1-1",
        "title": "map",
        "scan_command": "",
        "start_time": None,
        "end_time": None,
        "shape": (2, 3),
        "axes": ("y", "x"),
        "axis_values": {},
        "axis_units": {},
        "finished": False,
        "datasets": {EXCALIBUR: DatasetInfo(EXCALIBUR, (6, 8, 8), "uint16")},
        "nx_classes": frozenset({"NXentry", "NXdetector"}),
        "roles": {"frames": EXCALIBUR},
    }
    values.update(kw)
    return ScanInfo(**values)  # type: ignore[arg-type]


# ---- loading what is fine -------------------------------------------------------------------


def test_good_recipe_loads_with_typed_fields() -> None:
    r = load_recipe_text(GOOD, "good.yaml")
    assert r.name == "t" and r.version == "1" and r.source is None
    assert r.parameters["npt"].default == 2000
    assert r.parameters["sample"].required
    step = r.steps[0]
    assert isinstance(step, StepSpec)
    assert step.phase == "live" and step.needs == []
    assert step.with_ == {"poni": "/x.poni", "npt": "{npt}"}
    assert step.resources.cores == 1 and step.resources.retries == 0
    assert r.text == GOOD
    assert r.sha256 == __import__("hashlib").sha256(GOOD.encode()).hexdigest()


@pytest.mark.parametrize("name", ["xrd-map", "xrf-map"])
def test_shipped_recipes_load(name: str) -> None:
    r = load_recipe(SHIPPED / f"{name}.yaml")
    assert r.name == name
    assert len(r.description) > 80  # written for the scientist
    assert r.source == (SHIPPED / f"{name}.yaml").resolve()
    assert r.applies_to.beamlines == ["i18"]
    assert all(p.description for p in r.parameters.values())


def test_xrd_map_contents() -> None:
    r = find_recipe("xrd-map")
    assert list(r.parameters) == ["poni", "npt", "unit", "method", "cake", "flip", "frames", "mask"]
    assert r.parameters["npt"].minimum == 100 and r.parameters["npt"].maximum == 20000
    assert r.parameters["flip"].values == ["auto", "none", "ud", "lr", "udlr"]
    assert r.parameters["flip"].default == "auto"
    (step,) = r.steps
    assert (step.id, step.uses, step.phase, step.resources.retries) == (
        "integrate",
        "xrd_integrate",
        "live",
        1,
    )
    assert step.with_["frames"] == "{frames}"  # empty: the dataset the layout found
    assert r.applies_to.nexus.requires == ["frames"]


def test_xrf_map_contents() -> None:
    r = find_recipe("xrf-map")
    assert r.parameters["elements"].default == ["Fe-Ka", "Co-Ka", "Ni-Ka", "Cu-Ka", "Zn-Ka"]
    assert r.parameters["window_width"].default == 40
    assert r.steps[0].with_["mca"] == "{mca}"


def test_find_and_list_recipes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "own"
    own.mkdir()
    # A facility's own xrd-map shadows the shipped one; another name is added.
    (own / "xrd-map.yaml").write_text(GOOD.replace("name: t", "name: xrd-map"))
    (own / "other-file-name.yaml").write_text(GOOD.replace("name: t", "name: extra"))
    monkeypatch.setenv("HPCPROC_RECIPE_PATH", f"{own}{__import__('os').pathsep}{tmp_path / 'no'}")
    assert recipe_dirs()[0] == own and recipe_dirs()[-1] == SHIPPED
    assert find_recipe("xrd-map").source == (own / "xrd-map.yaml").resolve()
    assert find_recipe("extra").name == "extra"  # found by name, not file name
    names = [r.name for r in list_recipes()]
    shipped = sorted(p.stem for p in SHIPPED.glob("*.yaml"))
    assert sorted(names) == sorted(["extra", *shipped])
    assert next(r for r in list_recipes() if r.name == "xrd-map").source.parent == own
    with pytest.raises(InputError, match=r"no recipe named 'nope' \(known: extra, .*xrd-map"):
        find_recipe("nope")
    assert find_recipe(str(SHIPPED / "xrf-map.yaml")).name == "xrf-map"


def test_list_recipes_with_a_broken_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken.yaml").write_text("name: broken\nsteps:\n  - {id: a, uses: nope}\n")
    monkeypatch.setenv("HPCPROC_RECIPE_PATH", str(tmp_path))
    with pytest.raises(RecipeError, match=r"broken\.yaml:3:19: unknown step 'nope'"):
        list_recipes()
    errors: list[RecipeError] = []
    assert {r.name for r in list_recipes(errors)} == {p.stem for p in SHIPPED.glob("*.yaml")}
    assert [(e.line, e.col) for e in errors] == [(3, 19)]


def test_missing_file_is_a_recipe_error(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="no such recipe file") as info:
        load_recipe(tmp_path / "gone.yaml")
    assert info.value.file == str(tmp_path / "gone.yaml")


# ---- one test per kind of error -------------------------------------------------------------


def test_yaml_syntax_error() -> None:
    text = "name: t\nsteps: [a\nx: 1\n"
    assert_error(text, (3, 2), "invalid YAML: expected ',' or ']'")


def test_duplicate_yaml_key() -> None:
    assert_error("name: t\nname: u\n", (2, 1), 'duplicate key "name"')


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "a list"), ("", "empty"), ("x\n", "")])
def test_top_level_not_a_mapping(text: str, kind: str) -> None:
    assert_error(text, (1, 1), f"a recipe is a mapping (name:, steps:, ...), not {kind}")


def test_unknown_top_level_key() -> None:
    text = GOOD + "stpes: []\n"
    e = assert_error(text, at(text, "stpes"), "unknown key 'stpes'")
    allowed = "name, version, description, applies_to, needs_approval, parameters, steps"
    assert f"(allowed: {allowed})" in e.message


def test_unknown_key_in_a_parameter() -> None:
    text = GOOD.replace("minimum: 100", "minimun: 100")
    e = assert_error(text, at(text, "minimun"), "unknown key 'minimun'")
    assert "allowed: type, description, default, minimum, maximum" in e.message


def test_unknown_key_in_resources() -> None:
    text = GOOD + "    resources: {cpus: 4}\n"
    assert_error(text, at(text, "cpus"), "unknown key 'cpus' (allowed: cluster, cores, memory")


def test_internal_field_is_not_a_yaml_key() -> None:
    text = GOOD + "sha256: abc\n"
    assert_error(text, at(text, "sha256"), "unknown key 'sha256'")
    text = GOOD + "text: abc\n"
    assert_error(text, at(text, "text: abc"), "unknown key 'text'")


def test_missing_required_key_in_a_step() -> None:
    text = "name: t\nsteps:\n  - id: a\n    with: {}\n"
    assert_error(text, (3, 5), "missing required key 'uses'")


def test_missing_steps() -> None:
    assert_error("name: t\ndescription: x\n", (1, 1), "missing required key 'steps'")


def test_wrong_type_of_default() -> None:
    text = GOOD.replace("default: 2000", 'default: "many"')
    assert_error(text, at(text, '"many"'), "default 'many' is not a valid int")


def test_wrong_type_of_cores() -> None:
    text = GOOD + "    resources:\n      cores: two\n"
    e = assert_error(text, at(text, "two"), "invalid value 'two' for 'cores'")
    assert "valid integer" in e.message


def test_wrong_value_of_phase() -> None:
    text = GOOD + "    phase: later\n"
    assert_error(text, at(text, "later"), "input should be 'live' or 'downstream'")


def test_unknown_parameter_type() -> None:
    text = GOOD.replace("{type: str, required", "{type: string, required")
    assert_error(text, at(text, "string"), "unknown parameter type 'string' (allowed: int, float")


def test_unknown_step_lists_registered_steps() -> None:
    text = GOOD.replace("uses: xrd_integrate", "uses: xrd_integrat")
    e = assert_error(text, at(text, "xrd_integrat"), "unknown step 'xrd_integrat'")
    assert "registered steps: " in e.message
    assert "xrd_integrate, xrf_windows" in e.message  # sorted, all of them


def test_duplicate_step_id() -> None:
    text = GOOD + "  - id: a\n    uses: xrd_integrate\n    with: {poni: /y.poni}\n"
    line, col = at(text, "id: a", nth=1)
    assert_error(text, (line, col + 4), "duplicate step id 'a' (also step 1)")


def test_needs_unknown_step() -> None:
    text = GOOD + "    needs: [integrat]\n"
    line, col = at(text, "[integrat]")
    assert_error(text, (line, col + 1), "step 'a' needs unknown step 'integrat'")


CYCLE = """\
name: t
steps:
  - id: first
    uses: xrd_integrate
    with: {poni: /x.poni}
  - id: a
    uses: xrd_integrate
    with: {poni: /x.poni}
    needs: [first, b]
  - id: b
    uses: xrd_integrate
    with: {poni: /x.poni}
    needs: [c]
  - id: c
    uses: xrd_integrate
    with: {poni: /x.poni}
    needs: [a]
"""


def test_cycle_in_needs_is_named_and_located_at_its_first_step() -> None:
    # Located at the `needs` of the cycle's first step in the file (a), not of b or c.
    assert_error(CYCLE, at(CYCLE, "[first, b]"), "cycle in needs: a -> b -> c -> a")


def test_step_needing_itself() -> None:
    text = GOOD + "    needs: [a]\n"
    assert_error(text, at(text, "[a]"), "cycle in needs: a -> a")


def test_live_step_cannot_need_downstream_step() -> None:
    text = GOOD + (
        "    needs: [later]\n"
        "  - id: later\n"
        "    uses: xrd_integrate\n"
        "    phase: downstream\n"
        "    with: {poni: /x.poni}\n"
    )
    assert_error(text, at(text, "later"), "live step 'a' cannot need downstream step 'later'")


def test_downstream_step_may_need_live_step() -> None:
    text = GOOD + (
        "  - id: later\n"
        "    uses: xrd_integrate\n"
        "    phase: downstream\n"
        "    needs: [a]\n"
        "    with: {poni: /x.poni}\n"
    )
    assert [s.id for s in load_recipe_text(text).order()] == ["a", "later"]


def test_unknown_parameter_in_placeholder() -> None:
    text = GOOD.replace('npt: "{npt}"', 'npt: "{npts}"')
    e = assert_error(text, at(text, '"{npts}"'), "unknown parameter {npts}")
    assert "parameters: elements, npt, sample" in e.message


def test_unknown_placeholder_nested_in_a_list() -> None:
    text = GOOD.replace("uses: xrd_integrate", "uses: xrf_windows").replace(
        'with: {poni: /x.poni, npt: "{npt}"}', 'with: {elements: [Fe-Ka, "{element}"]}'
    )
    assert_error(text, at(text, '"{element}"'), "unknown parameter {element}")


def test_unknown_scan_field() -> None:
    text = GOOD.replace("poni: /x.poni", 'poni: "{scan.dirr}/x.poni"')
    e = assert_error(text, at(text, '"{scan.dirr}'), "unknown scan field {scan.dirr}")
    assert "file, dir, stem, id, beamline, visit, title" in e.message


def test_with_key_the_step_does_not_have() -> None:
    text = GOOD.replace('npt: "{npt}"', 'npts: "{npt}"')
    e = assert_error(text, at(text, "npts"), "step 'xrd_integrate' has no parameter 'npts'")
    assert "npt_azim" in e.message


def test_literal_with_value_fails_step_validation() -> None:
    text = GOOD.replace("/x.poni,", "/x.poni, unit: furlongs,")
    e = assert_error(text, at(text, "furlongs"), "invalid value 'furlongs' for 'unit'")
    assert "q_nm^-1" in e.message


def test_literal_with_value_out_of_the_step_range() -> None:
    text = GOOD.replace('npt: "{npt}"', "npt: 5")
    assert_error(text, at(text, "5}"), "greater than or equal to 10")


def test_literal_list_item_fails_step_validation() -> None:
    text = GOOD.replace("uses: xrd_integrate", "uses: xrf_windows").replace(
        'with: {poni: /x.poni, npt: "{npt}"}', "with:\n      elements: [Fe-Ka, 3]"
    )
    assert_error(text, at(text, "3]"), "invalid value 3 for 'elements'")


def test_literal_path_need_not_exist_when_loading() -> None:
    # Files are checked where the step runs, not when the recipe is loaded.
    assert load_recipe_text(GOOD).steps[0].with_["poni"] == "/x.poni"


def test_missing_required_step_parameter() -> None:
    text = GOOD.replace("poni: /x.poni, ", "")
    e = assert_error(text, at(text, "{npt"), "step 'xrd_integrate' needs 'poni'")
    assert "a value or a {parameter}" in e.message


def test_missing_required_step_parameter_without_with() -> None:
    text = "name: t\nsteps:\n  - id: a\n    uses: xrf_windows\n"
    assert_error(text, at(text, "xrf_windows"), "step 'xrf_windows' needs 'elements'")


def test_default_out_of_range() -> None:
    text = GOOD.replace("default: 2000", "default: 50")
    assert_error(text, at(text, "50"), "value out of range: default 50 is below minimum 100")
    text = GOOD.replace("default: 2000", "default: 30000")
    assert_error(text, at(text, "30000"), "default 30000 is above maximum 20000")


def test_enum_default_not_among_values() -> None:
    text = GOOD.replace(
        "  sample:", "  unit: {type: enum, values: [q_nm^-1, 2th_deg], default: q_A^-1}\n  sample:"
    )
    assert_error(text, at(text, "q_A^-1"), "default 'q_A^-1' is not one of q_nm^-1, 2th_deg")


def test_enum_without_values() -> None:
    text = GOOD.replace("  sample:", "  unit: {type: enum, default: x}\n  sample:")
    assert_error(text, at(text, "enum"), "an enum parameter needs 'values'")


def test_minimum_greater_than_maximum() -> None:
    text = GOOD.replace("maximum: 20000", "maximum: 10")
    assert_error(text, at(text, "100,"), "minimum 100 is greater than maximum 10")


def test_minimum_on_a_str_parameter() -> None:
    text = GOOD.replace("{type: str, required: true}", "{type: str, minimum: 1}")
    assert_error(text, at(text, "minimum: 1}"), "'minimum' is only for int and float")


def test_list_without_items() -> None:
    text = GOOD.replace("items: str, ", "")
    assert_error(text, at(text, "list"), "a list parameter needs 'items'")


def test_list_default_item_of_wrong_type() -> None:
    text = GOOD.replace("items: str", "items: int")
    assert_error(text, at(text, "[Fe-Ka"), "has an item 'Fe-Ka' that is not a valid int")


def test_default_placeholder_must_be_a_scan_field() -> None:
    text = GOOD.replace("  sample:", '  poni: {type: path, default: "{npt}.poni"}\n  sample:')
    assert_error(
        text, at(text, '"{npt}'), "a default can only use {scan.*} and {role.*} placeholders"
    )


def test_bad_memory_and_walltime() -> None:
    text = GOOD + "    resources: {memory: 4 gigs}\n"
    assert_error(text, at(text, "4 gigs"), "memory '4 gigs' is not a size like 4GB")
    text = GOOD + "    resources: {walltime: 30}\n"
    assert_error(text, at(text, "30}"), "walltime 30 is not HH:MM:SS")
    text = GOOD + "    resources: {retries: 11}\n"
    assert_error(text, at(text, "11"), "less than or equal to 10")
    good = GOOD + '    resources: {memory: 512MB, walltime: "00:30:00", cores: 4}\n'
    res = load_recipe_text(good).steps[0].resources
    assert (res.memory, res.walltime, res.cores) == ("512MB", "00:30:00", 4)


def test_bad_recipe_name() -> None:
    text = GOOD.replace("name: t", "name: XRD map")
    assert_error(text, (1, 7), "recipe name 'XRD map' must match")


def test_first_error_in_file_order_wins() -> None:
    text = GOOD.replace("default: 2000", "default: x") + "    resources: {cores: two}\n"
    e = error(text)
    assert e.line == 3


# ---- parameters -----------------------------------------------------------------------------


def test_resolve_parameters_coerces_cli_strings() -> None:
    r = find_recipe("xrd-map")
    p = r.resolve_parameters({"npt": "3000", "cake": "true", "unit": "2th_deg"})
    assert p["npt"] == 3000 and isinstance(p["npt"], int)
    assert p["cake"] is True
    assert p["unit"] == "2th_deg"
    assert p["method"] == "csr"  # default filled
    assert p["poni"] == "{scan.dir}/{scan.stem}.poni"  # no scan: left as it is
    assert r.resolve_parameters({"cake": "no"})["cake"] is False


def test_resolve_parameters_typed_values() -> None:
    r = find_recipe("xrd-map")
    assert r.resolve_parameters({"npt": 4000, "cake": True})["npt"] == 4000
    assert r.resolve_parameters({"npt": 4000.0})["npt"] == 4000


@pytest.mark.parametrize(
    "given", ["Fe-Ka,Co-Ka", "Fe-Ka Co-Ka", " Fe-Ka , Co-Ka ", ["Fe-Ka", "Co-Ka"]]
)
def test_resolve_list_parameter(given: object) -> None:
    r = find_recipe("xrf-map")
    assert r.resolve_parameters({"elements": given})["elements"] == ["Fe-Ka", "Co-Ka"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"npt": "50"}, "parameter npt=50 of recipe 'xrd-map' is below its minimum 100"),
        ({"npt": 30000}, "parameter npt=30000 of recipe 'xrd-map' is above its maximum 20000"),
        ({"npt": "many"}, "parameter npt='many' of recipe 'xrd-map' is not a valid int"),
        ({"npt": True}, "parameter npt=True of recipe 'xrd-map' is not a valid int"),
        ({"cake": "maybe"}, "parameter cake='maybe' of recipe 'xrd-map' is not a valid bool"),
        ({"unit": "nm"}, "parameter unit='nm' of recipe 'xrd-map' is not one of q_nm^-1"),
        ({"nope": 1}, "unknown parameter 'nope' for recipe 'xrd-map' (parameters: poni, npt"),
    ],
)
def test_resolve_parameters_errors(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(InputError) as info:
        find_recipe("xrd-map").resolve_parameters(overrides)
    assert message in str(info.value)


def test_required_and_optional_parameters() -> None:
    text = GOOD.replace("  sample:", "  centre: {type: float, default: null}\n  sample:")
    r = load_recipe_text(text)
    with pytest.raises(InputError, match="parameter sample of recipe 't' is required"):
        r.resolve_parameters({})
    p = r.resolve_parameters({"sample": "LaB6"})
    assert p == {"npt": 2000, "elements": ["Fe-Ka", "Co-Ka"], "centre": None, "sample": "LaB6"}
    assert r.resolve_parameters({"sample": "x", "centre": "12.5"})["centre"] == 12.5


def test_resolve_parameters_with_a_scan_fills_and_resolves_paths() -> None:
    r = find_recipe("xrd-map")
    scan = make_scan()
    assert r.resolve_parameters({}, scan)["poni"] == "/data/i18/cm1-1/i18-000042.poni"
    p = r.resolve_parameters({"poni": "calib/lab6.poni"}, scan)
    assert p["poni"] == "/data/i18/cm1-1/calib/lab6.poni"
    assert r.resolve_parameters({"poni": "/abs/x.poni"}, scan)["poni"] == "/abs/x.poni"


# ---- templates ------------------------------------------------------------------------------


def test_step_params_keep_types() -> None:
    r = find_recipe("xrd-map")
    scan = make_scan()
    step = r.steps[0]
    values = r.step_params(step, r.resolve_parameters({}, scan), scan)
    assert values["npt"] == 2000 and isinstance(values["npt"], int)
    assert values["cake"] is False
    assert values["frames"] is None  # not given: the plan takes the layout's (with_roles)
    assert with_roles(XrdIntegrate, values, scan)["frames"] == EXCALIBUR
    assert with_roles(XrdIntegrate, {"frames": "/x"}, scan)["frames"] == "/x"
    assert values["poni"] == "/data/i18/cm1-1/i18-000042.poni"
    x = find_recipe("xrf-map")
    values = x.step_params(x.steps[0], x.resolve_parameters({}, scan), scan)
    assert values["elements"] == ["Fe-Ka", "Co-Ka", "Ni-Ka", "Cu-Ka", "Zn-Ka"]
    assert values["window_width"] == 40


def test_step_params_text_nested_and_none() -> None:
    text = """\
name: t
parameters:
  elements: {type: list, items: str, default: [Fe-Ka, Co-Ka]}
  width: {type: int, default: 40}
  offset: {type: float}
steps:
  - id: w
    uses: xrf_windows
    with:
      elements: ["{elements}", "Zn-{{Ka}}"]
      mca: "{scan.stem}/{width}/{elements}"
      energy_offset: "{offset}"
      calibration: "{scan.beamline}-{{x}}"
"""
    r = load_recipe_text(text)
    scan = make_scan()
    values = r.step_params(r.steps[0], r.resolve_parameters({}, scan), scan)
    assert values["elements"] == [["Fe-Ka", "Co-Ka"], "Zn-{Ka}"]
    assert values["mca"] == "i18-000042/40/Fe-Ka Co-Ka"
    assert values["energy_offset"] is None
    assert values["calibration"] == "i18-{x}"


# ---- order, schema, applies_to --------------------------------------------------------------


def test_order_is_topological_and_stable() -> None:
    steps = []
    for sid, needs in [("d", "[b, c]"), ("c", "[]"), ("b", "[a]"), ("a", "[]"), ("e", "[]")]:
        steps.append(
            f"  - id: {sid}\n    uses: xrd_integrate\n    phase: downstream\n"
            f"    needs: {needs}\n    with: {{poni: /x}}\n"
        )
    r = load_recipe_text("name: t\nsteps:\n" + "".join(steps))
    assert [s.id for s in r.order()] == ["c", "a", "b", "d", "e"]


def test_parameters_schema_shape() -> None:
    s = find_recipe("xrd-map").parameters_schema()
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert s["type"] == "object" and s["additionalProperties"] is False
    props = s["properties"]
    assert props["poni"] == {
        "type": "string",
        "format": "path",
        "title": "poni",
        "description": props["poni"]["description"],
        "default": "{scan.dir}/{scan.stem}.poni",
    }
    assert props["npt"]["type"] == "integer"
    assert (props["npt"]["minimum"], props["npt"]["maximum"], props["npt"]["default"]) == (
        100,
        20000,
        2000,
    )
    assert props["unit"]["enum"] == ["q_nm^-1", "q_A^-1", "2th_deg"]
    assert props["cake"]["type"] == "boolean"
    assert s["required"] == []
    xs = find_recipe("xrf-map").parameters_schema()["properties"]["elements"]
    assert xs["type"] == "array" and xs["items"] == {"type": "string"}


def test_parameters_schema_required_and_optional() -> None:
    text = GOOD.replace("  sample:", "  centre: {type: float}\n  sample:")
    s = load_recipe_text(text).parameters_schema()
    assert s["required"] == ["sample"]
    assert s["properties"]["centre"]["type"] == ["number", "null"]


def test_parameters_schema_validates_with_jsonschema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    s = find_recipe("xrd-map").parameters_schema()
    jsonschema.Draft202012Validator.check_schema(s)
    validator = jsonschema.Draft202012Validator(s)
    assert validator.is_valid({"npt": 3000, "unit": "2th_deg", "cake": True})
    assert not validator.is_valid({"npt": 50})
    assert not validator.is_valid({"unit": "nm"})
    assert not validator.is_valid({"nope": 1})


def test_applies() -> None:
    r = find_recipe("xrd-map")
    assert r.applies(make_scan()) == (True, [])
    ok, why = r.applies(make_scan(beamline="i15-1", datasets={}, roles={}))
    assert not ok
    assert why == [
        "beamline 'i15-1' is not one of i18",
        "layout diamond found no frames in the scan file",
    ]
    # a role behind a link to a file that is not there: said, with the file
    linked = make_scan(datasets={}, missing_links={EXCALIBUR: "/data/x-excalibur.h5"})
    ok, why = r.applies(linked)
    assert not ok and why == [
        f"frames: {EXCALIBUR} is an external link to /data/x-excalibur.h5, which is not there"
    ]


def test_applies_classes_and_axes() -> None:
    text = GOOD + "applies_to: {nexus: {classes: [NXdetector, NXmonitor], scan_axes: [x, y]}}\n"
    r = load_recipe_text(text)
    assert r.applies_to.beamlines == []  # any beamline
    ok, why = r.applies(make_scan())  # axes (y, x): same set
    assert not ok and why == ["no NXmonitor group in the scan file"]
    ok, why = r.applies(
        make_scan(axes=("theta",), nx_classes=frozenset({"NXdetector", "NXmonitor"}))
    )
    assert not ok and why == ["scan axes (theta) differ from the recipe's (x, y)"]


def test_recipe_model_is_usable_from_python() -> None:
    r = Recipe.model_validate(
        {"name": "py", "steps": [{"id": "a", "uses": "xrd_integrate", "with": {"poni": "/p"}}]}
    )
    assert r.steps[0].with_ == {"poni": "/p"}
    assert r.sha256 and r.text == ""
