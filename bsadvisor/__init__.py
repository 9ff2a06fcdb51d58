"""`import bsadvisor`: the package's distribution name, for the same API as `import advisor`."""

import advisor

__version__ = advisor.__version__
__all__ = advisor.__all__


def __getattr__(name: str):
    return getattr(advisor, name)


def __dir__() -> list[str]:
    return dir(advisor)
