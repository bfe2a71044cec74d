"""genrec: generative cross-platform recommendation with LLMs."""

import os

# genrec runs offline: models come from local directories and packages, never from a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Idle OpenMP threads sleep instead of spinning: on a small shared CPU, spinning torch threads collapse generation
# speed whenever anything else runs (measured 1.1 vs 12.3 tokens/s under load on 2 cores). Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
