"""Hardware profiles: the shipped files, the schema, loading, listing and atomic saving."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advisor.errors import EXIT_BAD_INPUT, BadInput
from advisor.hardware import profiles
from advisor.hardware.profiles import (
    OPTIONAL_FIELDS,
    REQUIRED_FIELDS,
    ProfileError,
    list_profiles,
    load,
    save,
    usable_bytes,
    user_dir,
    validate,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_FOLDER = ROOT / "profiles"
SHIPPED_FILES = sorted(SHIPPED_FOLDER.glob("*.json"))


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """Every test gets its own BSADVISOR_HOME: the real user directory is never read or written."""
    monkeypatch.setenv("BSADVISOR_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def valid_profile(**changes) -> dict:
    profile = {
        "schema_version": 1,
        "name": "test-gpu",
        "display_name": "Test GPU 16GB",
        "source": "measured",
        "device_type": "cuda",
        "total_memory_bytes": 16 * 1024**3,
        "reserved_memory_bytes": 300 * 1024**2,
        "context_overhead_bytes": 500 * 1024**2,
        "bf16_tflops": 100.0,
        "fp32_tflops": 20,
        "memory_bandwidth_gb_per_s": 900.5,
        "compute_capability": "8.6",
        "measured_at": "2025-01-31T12:00:00+00:00",
    }
    profile.update(changes)
    return profile


def assert_one_line(exc: ProfileError, *needles: str) -> None:
    message = str(exc)
    assert isinstance(exc, BadInput)
    assert exc.exit_code == EXIT_BAD_INPUT == 2
    assert message and "\n" not in message and "\r" not in message
    for needle in needles:
        assert needle in message, (needle, message)


# --------------------------------------------------------------------------- shipped files

def test_there_are_shipped_profiles():
    assert len(SHIPPED_FILES) >= 11


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=[p.stem for p in SHIPPED_FILES])
def test_shipped_profile_validates(path):
    data = load(str(path))
    assert data["name"] == path.stem
    assert data["source"] == "datasheet"
    assert data["device_type"] == "cuda"
    assert usable_bytes(data) > 0
    assert "estimate" in data["notes"]  # the reserve and the context overhead at least are estimates
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"


def test_shipped_names_are_unique_and_equal_their_file_stems():
    names = [json.loads(p.read_text(encoding="utf-8"))["name"] for p in SHIPPED_FILES]
    assert names == [p.stem for p in SHIPPED_FILES]
    assert len(set(names)) == len(names)


def test_installed_package_finds_every_shipped_profile():
    found, problems = list_profiles()
    assert problems == []
    assert {p["name"] for p in found} == {p.stem for p in SHIPPED_FILES}
    assert {p["location"] for p in found} == {"shipped"}
    shipped = {e.name for e in profiles.shipped_dir().iterdir() if e.name.endswith(".json")}
    assert shipped == {p.name for p in SHIPPED_FILES}


def test_h100_total_is_what_nvml_reports():
    h100 = load("h100-sxm-80gb")
    assert h100["total_memory_bytes"] == 81559 * 1024**2 == 85520809984
    assert usable_bytes(h100) == h100["total_memory_bytes"] - h100["reserved_memory_bytes"] - h100[
        "context_overhead_bytes"]


def test_pyproject_lists_every_subpackage():
    """pyproject lists packages by hand (to map profiles/): a forgotten subpackage would be left out of wheels."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {
        ".".join(d.relative_to(ROOT).parts)
        for d in [ROOT / "advisor", *(ROOT / "advisor").rglob("*")]
        if d.is_dir() and "__pycache__" not in d.parts and any(d.glob("*.py"))
    }
    assert on_disk - listed == set()
    assert config["package-dir"]["advisor.shipped_profiles"] == "profiles"


# --------------------------------------------------------------------------- validate

def test_valid_profile_is_returned_unchanged():
    data = valid_profile(extra_field={"anything": [1, 2]})
    assert validate(data, "x.json") is data


def test_nulls_allowed_where_the_schema_says_so():
    validate(valid_profile(bf16_tflops=None, fp32_tflops=None, memory_bandwidth_gb_per_s=None,
                           interconnect=None, notes=None), "x")


@pytest.mark.parametrize("field", REQUIRED_FIELDS)
def test_missing_required_field(field):
    data = valid_profile()
    del data[field]
    with pytest.raises(ProfileError) as info:
        validate(data, "gpu.json")
    assert_one_line(info.value, "gpu.json", field, "missing")


BAD_VALUES = [
    ("name", "H100 SXM"), ("name", "../evil"), ("name", ""), ("name", "a" * 65), ("name", 7),
    ("display_name", ""), ("display_name", None),
    ("source", "guess"), ("source", None),
    ("device_type", "tpu"),
    ("total_memory_bytes", "80GB"), ("total_memory_bytes", 1.5e10), ("total_memory_bytes", True),
    ("total_memory_bytes", 0), ("total_memory_bytes", -1),
    ("reserved_memory_bytes", -1), ("reserved_memory_bytes", None), ("reserved_memory_bytes", 1.0),
    ("context_overhead_bytes", -5), ("context_overhead_bytes", "500MiB"),
    ("bf16_tflops", "fast"), ("bf16_tflops", -1), ("bf16_tflops", 0), ("bf16_tflops", float("nan")),
    ("fp32_tflops", float("inf")), ("fp32_tflops", False), ("fp32_tflops", [1]),
    ("memory_bandwidth_gb_per_s", {"gb": 1}),
    ("interconnect", 5), ("interconnect_bandwidth_gb_per_s", 0), ("interconnect_latency_us", -1),
    ("compute_capability", 9.0), ("compute_capability", "nine"),
    ("measured_at", "yesterday"), ("measured_at", 20250131),
    ("driver_version", 550), ("host", ["a"]), ("notes", 1),
    ("copy_bandwidth_gb_per_s", -3), ("matmul_fp32_tflops_measured", "1"),
]


@pytest.mark.parametrize("field,value", BAD_VALUES, ids=[f"{f}={v!r}"[:40] for f, v in BAD_VALUES])
def test_bad_field_value(field, value):
    with pytest.raises(ProfileError) as info:
        validate(valid_profile(**{field: value}), "/some/dir/gpu.json")
    assert_one_line(info.value, "/some/dir/gpu.json", f"'{field}'", "must be")


@pytest.mark.parametrize("version", [0, 2, 99, "1", 1.0, None, True])
def test_wrong_schema_version_says_which_versions_are_read(version):
    with pytest.raises(ProfileError) as info:
        validate(valid_profile(schema_version=version), "old.json")
    assert_one_line(info.value, "old.json", "schema_version", "reads schema_version 1")


def test_missing_schema_version():
    data = valid_profile()
    del data["schema_version"]
    with pytest.raises(ProfileError) as info:
        validate(data, "x.json")
    assert_one_line(info.value, "x.json", "schema_version")


@pytest.mark.parametrize("data", [[1, 2], "profile", 3, None, 1.5])
def test_not_an_object(data):
    with pytest.raises(ProfileError) as info:
        validate(data, "x.json")
    assert_one_line(info.value, "x.json", "JSON object")


def test_reserve_and_context_must_leave_usable_memory():
    with pytest.raises(ProfileError) as info:
        validate(valid_profile(total_memory_bytes=1000, reserved_memory_bytes=600, context_overhead_bytes=400), "x")
    assert_one_line(info.value, "total_memory_bytes", "reserved_memory_bytes")


def test_origin_with_newline_stays_one_line():
    with pytest.raises(ProfileError) as info:
        validate(valid_profile(source="x\ny"), "a\nb.json")
    assert_one_line(info.value, "source")


# --------------------------------------------------------------------------- load

def write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content, indent=2), encoding="utf-8")
    return path


def test_load_by_name():
    assert load("a100-sxm-80gb")["display_name"].startswith("NVIDIA A100")


def test_load_by_path(tmp_path):
    path = write(tmp_path / "mine.json", valid_profile())
    assert load(str(path)) == valid_profile()


def test_load_by_path_without_json_suffix(tmp_path):
    path = write(tmp_path / "mine.profile", valid_profile())
    assert load(str(path))["name"] == "test-gpu"


def test_user_dir_overrides_shipped(home):
    shipped = load("h100-sxm-80gb")
    mine = dict(shipped, source="measured", display_name="my H100", context_overhead_bytes=123)
    write(home / "profiles" / "h100-sxm-80gb.json", mine)
    assert load("h100-sxm-80gb")["display_name"] == "my H100"
    listed = {p["name"]: p for p in list_profiles()[0]}
    assert listed["h100-sxm-80gb"]["location"] == "user"
    assert listed["h100-sxm-80gb"]["path"] == str(home / "profiles" / "h100-sxm-80gb.json")
    assert listed["a100-sxm-40gb"]["location"] == "shipped"


def test_unknown_name_lists_known_names(home):
    write(home / "profiles" / "test-gpu.json", valid_profile())
    with pytest.raises(ProfileError) as info:
        load("h900-imaginary")
    assert_one_line(info.value, "h900-imaginary", "h100-sxm-80gb", "t4-16gb", "test-gpu")


def test_names_never_escape_the_profile_directories(home, monkeypatch):
    write(home / "secret.json", valid_profile(name="secret"))  # user_dir()/../secret.json
    (home / "profiles").mkdir()
    monkeypatch.chdir(home.parent)  # "../secret" from here is not home/secret.json
    with pytest.raises(ProfileError) as info:
        load("../secret")
    assert_one_line(info.value, "does not exist")
    for name in ("Secret", "..secret", "sec ret", "h100-sxm-80gb/"):
        with pytest.raises(ProfileError) as info:
            load(name)
        assert "unknown profile" in str(info.value) or "does not exist" in str(info.value)


def test_missing_json_path():
    with pytest.raises(ProfileError) as info:
        load("/nonexistent/dir/gpu.json")
    assert_one_line(info.value, "/nonexistent/dir/gpu.json", "does not exist")


def test_missing_json_path_named_like_a_known_profile_hints_at_the_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProfileError) as info:
        load("t4-16gb.json")
    assert_one_line(info.value, "does not exist", "pass its name: t4-16gb")


def test_directory_path(tmp_path):
    (tmp_path / "d.json").mkdir()
    with pytest.raises(ProfileError) as info:
        load(str(tmp_path / "d.json"))
    assert_one_line(info.value, "directory")


def test_truncated_json(tmp_path):
    text = json.dumps(valid_profile(), indent=2)
    path = write(tmp_path / "cut.json", text[: len(text) // 2])
    with pytest.raises(ProfileError) as info:
        load(str(path))
    assert_one_line(info.value, str(path), "is not valid JSON")
    assert re.search(r"\(line \d+ column \d+\)", str(info.value))


@pytest.mark.parametrize("text", ['{"schema_version": 1,}', "{'a': 1}", "", "   ", "{]", '{"a": 1} extra'])
def test_malformed_json(tmp_path, text):
    path = write(tmp_path / "bad.json", text)
    with pytest.raises(ProfileError) as info:
        load(str(path))
    assert_one_line(info.value, str(path), "is not valid JSON (line ")


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b'{"x": NaN}', b'{"x": -Infinity}',
                                     b"[" * 100_000, b"1" * 5000])
def test_unreadable_json(tmp_path, content):
    path = write(tmp_path / "odd.json", content)
    with pytest.raises(ProfileError) as info:
        load(str(path))
    assert_one_line(info.value, str(path), "not valid JSON")


@pytest.mark.parametrize("content", ["[1, 2, 3]", '"h100"', "null", "42"])
def test_json_that_is_not_an_object(tmp_path, content):
    path = write(tmp_path / "list.json", content)
    with pytest.raises(ProfileError) as info:
        load(str(path))
    assert_one_line(info.value, str(path), "JSON object")


def test_utf8_bom_is_accepted(tmp_path):
    path = write(tmp_path / "bom.json", b"\xef\xbb\xbf" + json.dumps(valid_profile()).encode())
    assert load(str(path))["name"] == "test-gpu"


def test_user_file_whose_name_differs_from_its_file_name(home):
    write(home / "profiles" / "other.json", valid_profile())
    with pytest.raises(ProfileError) as info:
        load("other")
    assert_one_line(info.value, "other.json", "'name'")


def test_list_skips_broken_user_files_and_says_why(home):
    write(home / "profiles" / "test-gpu.json", valid_profile())
    write(home / "profiles" / "broken.json", '{"schema_version": 1,')
    write(home / "profiles" / "wrong.json", valid_profile(name="wrong", total_memory_bytes=-1))
    write(home / "profiles" / "notes.txt", "not a profile")
    found, problems = list_profiles()
    names = {p["name"] for p in found}
    assert "test-gpu" in names and "broken" not in names and "wrong" not in names
    assert len(problems) == 2
    assert any("broken.json" in p and "not valid JSON" in p for p in problems)
    assert any("wrong.json" in p and "total_memory_bytes" in p for p in problems)
    assert all("\n" not in p for p in problems)


def test_list_profiles_with_no_user_dir(home):
    assert not home.exists()
    found, problems = list_profiles()
    assert found and problems == []


# --------------------------------------------------------------------------- user_dir

def test_user_dir_follows_bsadvisor_home(home):
    assert user_dir() == home / "profiles"


def test_user_dir_default(monkeypatch):
    import typer

    monkeypatch.delenv("BSADVISOR_HOME", raising=False)
    assert user_dir() == Path(typer.get_app_dir("bsadvisor")) / "profiles"


# --------------------------------------------------------------------------- save

def test_save_writes_pretty_sorted_json(home):
    path = save(valid_profile(extra="kept"))
    assert path == home / "profiles" / "test-gpu.json"
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert text == json.dumps(valid_profile(extra="kept"), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert load("test-gpu") == valid_profile(extra="kept")
    if os.name == "posix":
        assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["test-gpu.json"]


def test_save_to_a_directory(tmp_path):
    target = tmp_path / "new" / "dir"
    path = save(valid_profile(), directory=target)
    assert path == target / "test-gpu.json" and path.is_file()


def test_save_refuses_to_overwrite_without_force(tmp_path):
    first = save(valid_profile(), directory=tmp_path)
    before = first.read_bytes()
    with pytest.raises(ProfileError) as info:
        save(valid_profile(display_name="second"), directory=tmp_path)
    assert_one_line(info.value, "already exists", "--force", str(first))
    assert first.read_bytes() == before
    save(valid_profile(display_name="second"), directory=tmp_path, force=True)
    assert load(str(first))["display_name"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test-gpu.json"]


def test_save_validates_first(tmp_path):
    with pytest.raises(ProfileError) as info:
        save(valid_profile(total_memory_bytes=-1), directory=tmp_path)
    assert_one_line(info.value, "total_memory_bytes")
    assert list(tmp_path.iterdir()) == []


def test_save_leaves_out_list_annotations(tmp_path):
    listed = {p["name"]: p for p in list_profiles()[0]}["t4-16gb"]
    path = save(listed, directory=tmp_path)
    written = json.loads(path.read_text(encoding="utf-8"))
    assert "location" not in written and "path" not in written
    assert written == load("t4-16gb")


def test_save_of_unserialisable_extra_is_a_profile_error(tmp_path):
    with pytest.raises(ProfileError):
        save(valid_profile(extra={1, 2}), directory=tmp_path)
    with pytest.raises(ProfileError):
        save(valid_profile(extra=float("nan")), directory=tmp_path)
    assert list(tmp_path.iterdir()) == []


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_interrupted_replace_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    path = save(valid_profile(), directory=tmp_path)
    before = path.read_bytes()
    monkeypatch.setattr(profiles.os, "replace", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        save(valid_profile(display_name="new"), directory=tmp_path, force=True)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test-gpu.json"]


def test_interrupted_mid_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    path = save(valid_profile(), directory=tmp_path)
    before = path.read_bytes()
    real_dump = json.dump

    def half_then_interrupt(obj, fp, **kwargs):
        text = json.dumps(obj, **kwargs)
        fp.write(text[: len(text) // 2])
        fp.flush()
        raise KeyboardInterrupt

    monkeypatch.setattr(profiles.json, "dump", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        save(valid_profile(display_name="new"), directory=tmp_path, force=True)
    monkeypatch.setattr(profiles.json, "dump", real_dump)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test-gpu.json"]


def test_failed_fsync_is_a_profile_error_and_leaves_no_temp(tmp_path, monkeypatch):
    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(profiles.os, "fsync", no_space)
    with pytest.raises(ProfileError) as info:
        save(valid_profile(), directory=tmp_path)
    assert_one_line(info.value, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_save_into_unwritable_place_is_a_profile_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ProfileError) as info:
        save(valid_profile(), directory=blocker / "sub")
    assert_one_line(info.value, "profile directory")


# --------------------------------------------------------------------------- fuzzing

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
ALL_FIELDS = list(REQUIRED_FIELDS) + list(OPTIONAL_FIELDS) + ["unknown_extra"]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(ALL_FIELDS) | st.text(max_size=12), json_values, max_size=20))
def test_validate_arbitrary_dicts_returns_or_raises_profile_error(data):
    try:
        assert validate(data, "fuzz.json") is data
    except ProfileError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("fuzz.json")


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(ALL_FIELDS), json_values, max_size=4), st.sets(st.sampled_from(ALL_FIELDS)))
def test_validate_near_valid_profiles(changes, removed):
    data = valid_profile(**changes)
    for field in removed:
        data.pop(field, None)
    try:
        validate(data, "fuzz.json")
    except ProfileError as exc:
        assert "\n" not in str(exc)
    else:
        assert usable_bytes(data) > 0


def _valid_text() -> str:
    return json.dumps(valid_profile(), indent=2)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.binary(max_size=300)
    | st.integers(0, len(_valid_text())).map(lambda n: _valid_text()[:n].encode())
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.tuples(st.integers(0, len(_valid_text()) - 1), st.binary(min_size=1, max_size=3)).map(
        lambda t: (_valid_text()[: t[0]].encode() + t[1] + _valid_text()[t[0] + 1:].encode()))
)
def test_load_arbitrary_bytes_only_raises_profile_error(content):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "fuzz.json"
        path.write_bytes(content)
        try:
            data = load(str(path))
        except ProfileError as exc:
            assert "\n" not in str(exc)
        else:
            assert isinstance(data, dict) and usable_bytes(data) > 0
