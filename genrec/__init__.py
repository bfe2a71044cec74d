"""genrec: generative cross-platform recommendation with LLMs."""

__version__ = "0.1.0"
