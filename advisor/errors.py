"""The failures the CLI turns into one line on stderr and a documented exit code."""

EXIT_OK = 0
EXIT_DOES_NOT_FIT = 1
EXIT_BAD_INPUT = 2
EXIT_DEVICE_UNAVAILABLE = 3
EXIT_PROBE_FAILED = 4
EXIT_INTERRUPTED = 130


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
