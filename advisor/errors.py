"""The failures the CLI turns into one line on stderr and a documented exit code."""

EXIT_OK = 0
EXIT_DOES_NOT_FIT = 1
EXIT_BAD_INPUT = 2
EXIT_DEVICE_UNAVAILABLE = 3
EXIT_PROBE_FAILED = 4
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process SIGTERM ended


class AdvisorError(Exception):
    """An expected failure with a message fit to show the user as it is."""

    exit_code = EXIT_BAD_INPUT


class BadInput(AdvisorError):
    """Usage, model file, profile or flag problems (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class DeviceUnavailable(AdvisorError):
    """A device was asked for that this machine cannot give (exit 3)."""

    exit_code = EXIT_DEVICE_UNAVAILABLE


class ProbeFailed(AdvisorError):
    """A probe could not produce a trustworthy measurement (exit 4)."""

    exit_code = EXIT_PROBE_FAILED


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by the CLI's handler: unwinds like Ctrl-C (children stopped,
    temporary files removed) and ends with exit 143."""


def one_line(exc: BaseException | str, limit: int | None = 300) -> str:
    """An exception's message (or any text) as one line: whitespace and newlines collapsed, cut at `limit`
    characters; a message that cannot even be shown (its __str__ raises) says so instead of raising."""
    try:
        text = exc if isinstance(exc, str) else str(exc)
    except BaseException as inner:  # noqa: BLE001 -- the user's __str__, whatever it raises
        if isinstance(inner, KeyboardInterrupt):
            raise
        text = f"(its message cannot be shown: str() raised {type(inner).__name__})"
    text = " ".join(text.split()) or "(no message)"
    if limit is None or len(text) <= limit:
        return text
    return text[:limit] + "..."


def raised(exc: BaseException) -> str:
    """How a call into the user's code ended, for a one-line message: `raised Type: message`, or the sys.exit."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({one_line(repr(exc.code), 80)})"
    return f"raised {type(exc).__name__}: {one_line(exc)}"
