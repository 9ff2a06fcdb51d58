"""bsadvisor: which batch size, and which learning rate, measured rather than guessed."""

import warnings

__version__ = "0.1.0"

# torch installed without numpy warns as it loads; bsadvisor needs no numpy, so users needn't read it.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
