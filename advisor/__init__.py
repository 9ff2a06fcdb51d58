"""bsadvisor: which batch size, and which learning rate, measured rather than guessed."""

__version__ = "0.1.0"
