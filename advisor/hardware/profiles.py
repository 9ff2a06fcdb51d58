"""Hardware profiles: one JSON file per device, units in the key names.

Profiles are read with the standard library's `json` and checked field by field: never
pickled, never imported, never executed. Shipped datasheet profiles live in the top-level
`profiles/` folder, installed as the package data `advisor.shipped_profiles`; profiles that
`bsadvisor profile save` measures live in the user directory (`$BSADVISOR_HOME/profiles`
when that variable is set). A user profile overrides a shipped one of the same name.

Every failure is a `ProfileError` (exit code 2) whose message is one line naming the file or
origin, the field and what was expected.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from datetime import date, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from advisor.errors import BadInput
from advisor.units import Budget

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
SHIPPED_PACKAGE = "advisor.shipped_profiles"

SOURCES = ("datasheet", "measured")
DEVICE_TYPES = ("cuda", "cpu")

# A name becomes a file name (`<name>.json`): lowercase letters, digits, '.', '_' and '-',
# starting and ending with a letter or digit, at most 64 characters. No path can hide in it.
NAME_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$")
_COMPUTE_CAPABILITY = re.compile(r"^[0-9]+\.[0-9]+$")

# Keys that list_profiles() adds to say where a profile came from; never written by save().
RUNTIME_KEYS = ("location", "path")


class ProfileError(BadInput):
    """A hardware profile is missing, unreadable, malformed or fails the schema (exit 2)."""


# --------------------------------------------------------------------------- the schema

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and math.isfinite(value)
    )


def _is_iso_date(value: Any) -> bool:
    if not isinstance(value, str) or not value.isascii():
        return False
    for parse in (date.fromisoformat, datetime.fromisoformat):
        try:
            parse(value)
            return True
        except ValueError:
            continue
    return False


# field -> (check, what was expected). `None` is allowed only where the text says "or null".
_REQUIRED: dict[str, tuple[Any, str]] = {
    "schema_version": (_is_int, "an integer"),
    "name": (lambda v: isinstance(v, str) and NAME_PATTERN.match(v) is not None,
             "a slug of lowercase letters, digits, '.', '_' or '-' (at most 64), such as \"h100-sxm-80gb\""),
    "display_name": (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string"),
    "source": (lambda v: v in SOURCES, 'one of "datasheet", "measured"'),
    "device_type": (lambda v: v in DEVICE_TYPES, 'one of "cuda", "cpu"'),
    "total_memory_bytes": (lambda v: _is_int(v) and v > 0, "an integer > 0 (bytes)"),
    "reserved_memory_bytes": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (bytes)"),
    "context_overhead_bytes": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (bytes)"),
    "bf16_tflops": (lambda v: v is None or (_is_number(v) and v > 0), "a number > 0 (TFLOP/s) or null"),
    "fp32_tflops": (lambda v: v is None or (_is_number(v) and v > 0), "a number > 0 (TFLOP/s) or null"),
    "memory_bandwidth_gb_per_s": (lambda v: v is None or (_is_number(v) and v > 0), "a number > 0 (GB/s) or null"),
}


def _optional_str(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _optional_positive(v: Any) -> bool:
    return v is None or (_is_number(v) and v > 0)


_OPTIONAL: dict[str, tuple[Any, str]] = {
    "interconnect": (_optional_str, 'a string such as "nvlink", "pcie" or "none", or null'),
    "interconnect_bandwidth_gb_per_s": (_optional_positive, "a number > 0 (GB/s, per direction) or null"),
    "interconnect_latency_us": (lambda v: v is None or (_is_number(v) and v >= 0), "a number >= 0 (microseconds) or null"),
    "compute_capability": (lambda v: v is None or (isinstance(v, str) and _COMPUTE_CAPABILITY.match(v) is not None),
                           'a string "major.minor" such as "9.0", or null'),
    "driver_version": (_optional_str, "a string or null"),
    "cuda_version": (_optional_str, "a string or null"),
    "measured_at": (lambda v: v is None or _is_iso_date(v), 'an ISO 8601 date or time such as "2025-01-31", or null'),
    "host": (_optional_str, "a string or null"),
    "notes": (_optional_str, "a string or null"),
    "copy_bandwidth_gb_per_s": (_optional_positive, "a number > 0 (GB/s) or null"),
    "matmul_bf16_tflops_measured": (_optional_positive, "a number > 0 (TFLOP/s) or null"),
    "matmul_fp32_tflops_measured": (_optional_positive, "a number > 0 (TFLOP/s) or null"),
    "attention_backend": (lambda v: v is None or v in ("auto", "flash", "efficient", "math"),
                          'one of "auto", "flash", "efficient", "math", or null'),
    "cublas_workspace_bytes": (lambda v: v is None or (_is_int(v) and v >= 0), "an integer >= 0 (bytes) or null"),
    "nccl_buffer_bytes": (lambda v: v is None or (_is_int(v) and v >= 0), "an integer >= 0 (bytes) or null"),
    "nccl_channels": (lambda v: v is None or (_is_int(v) and 1 <= v <= 1024), "an integer from 1 to 1024 or null"),
}

REQUIRED_FIELDS = tuple(_REQUIRED)
OPTIONAL_FIELDS = tuple(_OPTIONAL)


def _one_line(text: str) -> str:
    """Any text made safe for a one-line message (no newlines, no unencodable characters)."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _show(value: Any, limit: int = 60) -> str:
    """A short repr of a value for an error message: JSON-ish names, one line."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate(data: dict, origin: str) -> dict:
    """Check `data` against the profile schema; return it unchanged, or raise ProfileError.

    `origin` (a file path, or words such as "measured profile") begins every message.
    Unknown extra keys are allowed, so that newer files stay readable.
    """
    where = _one_line(str(origin))
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: a profile must be a JSON object, found {_show(data)}")
    if "schema_version" not in data:
        raise ProfileError(f"{where}: missing required field 'schema_version' (expected {SCHEMA_VERSION})")
    version = data["schema_version"]
    if not _is_int(version) or version not in SUPPORTED_SCHEMA_VERSIONS:
        readable = ", ".join(str(v) for v in SUPPORTED_SCHEMA_VERSIONS)
        raise ProfileError(
            f"{where}: schema_version {_show(version)} is not supported: "
            f"this bsadvisor reads schema_version {readable}"
        )
    for field, (check, expected) in _REQUIRED.items():
        if field not in data:
            raise ProfileError(f"{where}: missing required field '{field}' (expected {expected})")
        if not check(data[field]):
            raise ProfileError(f"{where}: field '{field}' must be {expected}, got {_show(data[field])}")
    for field, (check, expected) in _OPTIONAL.items():
        if field in data and not check(data[field]):
            raise ProfileError(f"{where}: field '{field}' must be {expected}, got {_show(data[field])}")
    if usable_bytes(data) <= 0:
        raise ProfileError(
            f"{where}: reserved_memory_bytes + context_overhead_bytes must be less than "
            f"total_memory_bytes ({data['total_memory_bytes']}), got "
            f"{data['reserved_memory_bytes']} + {data['context_overhead_bytes']}"
        )
    return data


def compute_capability(profile: dict) -> tuple[int, int] | None:
    """The profile's compute capability as (major, minor), None where it states none."""
    text = profile.get("compute_capability")
    if not text:
        return None
    major, minor = text.split(".")
    return int(major), int(minor)


def usable_bytes(profile: dict) -> int:
    """Memory that tensors can use: total less the driver's reserve and the context overhead."""
    return int(profile["total_memory_bytes"]) - int(profile["reserved_memory_bytes"]) - int(
        profile["context_overhead_bytes"]
    )


def profile_budget(profile: dict) -> Budget:
    """The profiled device's usable memory as a budget, saying where it came from."""
    return Budget(usable_bytes(profile), f"profile {profile['name']} ({profile['source']}): "
                                         "total - reserved - context overhead")


def slugify(text: str) -> str:
    """A profile name from any text: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
    slug = slug[:64].strip("-")
    return slug or "device"


# --------------------------------------------------------------------------- where they live

def user_dir() -> Path:
    """Where saved profiles live: `$BSADVISOR_HOME/profiles`, else the per-user app dir."""
    home = os.environ.get("BSADVISOR_HOME")
    if home:
        return Path(home).expanduser() / "profiles"
    import typer  # only here: the rest of this module is standard library

    return Path(typer.get_app_dir("bsadvisor")) / "profiles"


def shipped_dir() -> Any:
    """The shipped datasheet profiles (a Path in normal installs; a Traversable in general)."""
    return resources.files(SHIPPED_PACKAGE)


def _shipped_files() -> list[Any]:
    try:
        entries = list(shipped_dir().iterdir())
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        return []
    return sorted((e for e in entries if e.name.endswith(".json") and e.is_file()), key=lambda e: e.name)


def _user_files() -> list[Path]:
    directory = user_dir()
    try:
        entries = list(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise ProfileError(f"cannot read the profile directory {_one_line(str(directory))}: {exc.strerror or exc}")
    return sorted((e for e in entries if e.suffix == ".json" and not e.name.startswith(".") and e.is_file()),
                  key=lambda e: e.name)


# --------------------------------------------------------------------------- reading

def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a number JSON allows")


def _parse(raw: bytes, origin: str) -> dict:
    """Bytes of a profile file -> a validated dict, or ProfileError."""
    where = _one_line(origin)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{where} is not valid JSON: not UTF-8 text (byte {exc.start})") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ProfileError(
            f"{where} is not valid JSON (line {exc.lineno} column {exc.colno}): {_one_line(exc.msg)}"
        ) from None
    except (ValueError, RecursionError) as exc:  # NaN/Infinity, huge integers, deep nesting
        raise ProfileError(f"{where} is not valid JSON: {_one_line(str(exc))}") from None
    return validate(data, where)


def _read_path(path: Path) -> dict:
    where = _one_line(str(path))
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ProfileError(f"profile file {where} does not exist") from None
    except IsADirectoryError:
        raise ProfileError(f"profile {where} is a directory, not a .json file") from None
    except OSError as exc:
        raise ProfileError(f"cannot read profile file {where}: {exc.strerror or exc}") from None
    return _parse(raw, str(path))


def _check_stem(profile: dict, stem: str, origin: str) -> dict:
    if profile["name"] != stem:
        raise ProfileError(
            f"{_one_line(origin)}: field 'name' is {_show(profile['name'])} but the file is {stem}.json: "
            f"the name must equal the file name"
        )
    return profile


def known_names() -> list[str]:
    """Every profile name this bsadvisor can load by name (user and shipped), sorted."""
    names = {p.name[: -len(".json")] for p in _shipped_files()}
    try:
        names.update(p.stem for p in _user_files())
    except ProfileError:
        pass
    return sorted(n for n in names if NAME_PATTERN.match(n))


def _looks_like_path(text: str) -> bool:
    return text.endswith(".json") or os.sep in text or (os.altsep is not None and os.altsep in text) \
        or Path(text).is_file()


def load(name_or_path: str) -> dict:
    """A profile by path (ends with .json, names an existing file, or holds a separator) or by name.

    By name, the user directory is searched first, then the shipped profiles. The returned
    dict holds the profile's fields only (see `list_profiles` for where each came from).
    """
    text = str(name_or_path)
    if _looks_like_path(text):
        path = Path(text).expanduser()
        try:
            return _read_path(path)
        except ProfileError as exc:
            stem = path.name[: -len(".json")] if path.name.endswith(".json") else ""
            if not path.exists() and stem in known_names():
                raise ProfileError(f"{exc}; to use the known profile, pass its name: {stem}") from None
            raise
    if NAME_PATTERN.match(text):
        candidate = user_dir() / f"{text}.json"
        if candidate.is_file():
            return _check_stem(_read_path(candidate), text, str(candidate))
        for entry in _shipped_files():
            if entry.name == f"{text}.json":
                return _check_stem(_parse(entry.read_bytes(), str(entry)), text, str(entry))
    known = known_names()
    listing = ", ".join(known) if known else "(none)"
    raise ProfileError(
        f"unknown profile {_show(text)}: known profiles are {listing}; or pass the path of a .json file"
    )


def list_profiles() -> tuple[list[dict], list[str]]:
    """(profiles, problems): every loadable profile, user ones overriding shipped ones by name.

    Each profile dict carries two extra keys, "location" ("user" or "shipped") and "path".
    A file that fails to load is left out and described, one line each, in `problems`.
    """
    found: dict[str, dict] = {}
    problems: list[str] = []

    def take(entries: Iterable[Any], location: str) -> None:
        for entry in entries:
            stem = entry.name[: -len(".json")]
            try:
                profile = _check_stem(_parse(entry.read_bytes(), str(entry)), stem, str(entry))
            except ProfileError as exc:
                problems.append(str(exc))
                continue
            except OSError as exc:
                problems.append(f"cannot read profile file {_one_line(str(entry))}: {exc.strerror or exc}")
                continue
            found[stem] = {**profile, "location": location, "path": str(entry)}

    take(_shipped_files(), "shipped")
    try:
        user_files = _user_files()
    except ProfileError as exc:  # an unreadable user directory: the shipped profiles still list
        problems.append(str(exc))
        user_files = []
    take(user_files, "user")  # later wins: a user profile overrides a shipped one
    return [found[name] for name in sorted(found)], problems


# --------------------------------------------------------------------------- writing

def save(profile: dict, directory: Path | None = None, force: bool = False) -> Path:
    """Validate `profile` and write it atomically to `<directory>/<name>.json`; return that path.

    `directory` defaults to `user_dir()`. An existing file is replaced only with `force`.
    The file is written to a temporary file in the same directory, flushed and fsynced, then
    renamed over the target, so a reader sees the old file or the new one, never a part; the
    temporary file is removed on any failure, KeyboardInterrupt included. The "location" and
    "path" keys that `list_profiles` adds are not written.
    """
    profile = {k: v for k, v in profile.items() if k not in RUNTIME_KEYS} if isinstance(profile, dict) else profile
    validate(profile, "profile to save")
    directory = Path(directory).expanduser() if directory is not None else user_dir()
    target = directory / f"{profile['name']}.json"
    where = _one_line(str(target))
    if target.is_dir():
        raise ProfileError(f"{where} is a directory: cannot write a profile there")
    if not force and (target.exists() or target.is_symlink()):
        raise ProfileError(f"{where} already exists: pass --force to overwrite it")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{profile['name']}.", suffix=".tmp")
    except OSError as exc:
        raise ProfileError(f"cannot write to the profile directory {_one_line(str(directory))}: "
                           f"{exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(profile, handle, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        if isinstance(exc, (TypeError, ValueError)):  # an extra key's value that JSON cannot hold
            raise ProfileError(f"profile to save cannot be written as JSON: {_one_line(str(exc))}") from None
        if isinstance(exc, OSError):
            raise ProfileError(f"cannot write {where}: {exc.strerror or exc}") from None
        raise
    _fsync_directory(directory)
    return target


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable where the platform allows it (POSIX); best effort elsewhere."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
