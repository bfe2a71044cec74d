"""genrec: generative cross-platform recommendation with LLMs."""

import logging
import os

# genrec runs offline: models come from local directories and packages, never from a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Idle OpenMP threads sleep instead of spinning: on a small shared CPU, spinning torch threads collapse generation
# speed whenever anything else runs (measured 1.1 vs 12.3 tokens/s under load on 2 cores). Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Model loading is quick (a cached local copy): no per-weight progress bars from the Hugging Face libraries.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# bitsandbytes warns at import that an optional CPU kernel package from the hub is missing; genrec never uses it.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# Caches of the libraries genrec drives (matplotlib's font cache, torch.compile's and Triton's kernels) live under
# GENREC_HOME with genrec's own, unless the user points them elsewhere.
from genrec.config import library_caches  # noqa: E402

for _variable, _path in library_caches().items():
    os.environ.setdefault(_variable, str(_path))

__version__ = "0.1.0"
