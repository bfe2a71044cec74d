"""Server settings: a YAML config file, the ``GENREC_API_KEYS`` environment variable and command-line overrides.

API keys come from both the config file (``api_keys: [...]``) and ``GENREC_API_KEYS`` (comma-separated), each as
``KEY`` (read and write) or ``KEY:scope+scope`` (``read``, ``write``, ``admin``; see ``genrec.server.security``).
With no key configured, the endpoints that need one are refused. CORS is off unless ``cors_origins`` lists
origins.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from genrec.config import read_yaml
from genrec.errors import GenrecError
from genrec.llm import Device, DType
from genrec.server.security import parse_keys

API_KEYS_ENV = "GENREC_API_KEYS"
SALT_ENV = "GENREC_SALT"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | float, what: str = "duration") -> float:
    """Seconds of a duration like ``90s``, ``30m``, ``6h``, ``1d`` (a bare number is seconds); a ``GenrecError``
    naming ``what`` unless it is a positive duration."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text))
        if match is None:
            raise GenrecError(f"{what}: expected a duration like 90s, 30m, 6h or 1d, got {text!r}")
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if not 0 < seconds < float("inf"):
        raise GenrecError(f"{what}: must be a positive duration, got {text!r}")
    return seconds


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    db: Path | None = None
    api_keys: list[str] = Field(default_factory=list)
    cors_origins: list[str] = Field(default_factory=list)
    # model work: one worker thread, a bounded queue, micro-batches of up to max_batch jobs
    max_batch: int = Field(8, ge=1, le=64)
    batch_wait_ms: float = Field(5.0, ge=0, le=1000)
    max_queue: int = Field(64, ge=1)
    request_timeout_s: float = Field(120.0, gt=0)
    warm_up: bool = True
    # limits
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_upload_bytes: int = Field(64_000_000, ge=1024)  # an upload as sent (compressed or not)
    max_catalog_bytes: int = Field(256_000_000, ge=1024)  # an uploaded catalog once decompressed
    max_catalog_rows: int = Field(2_000_000, ge=1)
    max_history: int = Field(500, ge=1)
    max_events: int = Field(10_000, ge=1)
    max_k: int = Field(50, ge=1)
    # chat and reports
    chat_llm: bool = True
    conversation_ttl_s: float = Field(1800.0, gt=0)
    max_conversations: int = Field(1000, ge=1)
    report_k: int = Field(5, ge=1)
    # models
    model: str | None = None
    adapter: str | None = None
    adapter_scale: float = Field(1.0, ge=0.0)  # LLMConfig.adapter_scale
    dtype: DType = "auto"
    device: Device = "auto"
    load_in_4bit: bool = False
    decoding: Literal["free", "catalog", "scored"] | None = None  # None: the adapter's setting, else free generation
    calibration: float | None = Field(None, ge=0.0, le=1.0)  # scored decoding; None: the adapter's, else 0
    templates: Path | None = None
    # the recommender: a fitted pipeline folder (`genrec fit`) for its platforms, and for the platforms of a
    # registered data set its default pipeline (fitted on first use, cached by the store's content); every other
    # platform (onboarded ones) gets the generate-then-ground recommender above
    pipeline: Path | None = None
    default_pipelines: bool = True
    # refresh the served registry (`pipeline`) on a timer, in seconds (or "30m", "6h"; None: only on request)
    refresh_every: float | None = None
    # privacy: hash every user id the API receives (events, paths, requests) like `--hash-user-ids`
    hash_user_ids: bool = False
    salt: str | None = None  # default: $GENREC_SALT

    @model_validator(mode="after")
    def _hashing_needs_a_salt(self) -> ServerSettings:
        self.salt = self.salt or os.environ.get(SALT_ENV) or None
        if self.hash_user_ids and not self.salt:
            raise ValueError(f"hash_user_ids needs a salt: set salt in the server config or {SALT_ENV}")
        return self

    @field_validator("refresh_every", mode="before")
    @classmethod
    def _a_duration(cls, value: Any) -> float | None:
        if value is None:
            return None
        try:
            return parse_duration(value)
        except GenrecError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _refresh_needs_a_registry(self) -> ServerSettings:
        from genrec.pipeline.registry import is_registry

        if self.refresh_every is not None and (self.pipeline is None or not is_registry(self.pipeline)):
            raise ValueError("a scheduled refresh (refresh_every, --refresh-every) needs a registry to refresh: "
                             "serve one with --pipeline REGISTRY_FOLDER (a folder made by `genrec fit --registry`)"
                             + (f"; {self.pipeline} is not one" if self.pipeline is not None else ""))
        return self

    @model_validator(mode="after")
    def _keys_have_known_scopes(self) -> ServerSettings:
        parse_keys(self.api_keys)
        return self

    @model_validator(mode="after")
    def _scale_needs_an_adapter(self) -> ServerSettings:
        if self.adapter_scale != 1.0 and self.adapter is None:
            raise ValueError("adapter_scale needs an adapter to scale")
        return self

    @classmethod
    def load(cls, config: Path | None = None, **overrides: Any) -> ServerSettings:
        """Settings from ``config`` (YAML; a ``server:`` section or the whole file), ``GENREC_API_KEYS`` and
        ``overrides`` (``None`` values are ignored)."""
        data: dict[str, Any] = {}
        if config is not None:
            loaded = read_yaml(config, "server config") or {}
            if not isinstance(loaded, dict):
                raise GenrecError(f"{config}: expected a mapping of settings")
            data = dict(loaded.get("server", loaded))
        data.update({key: value for key, value in overrides.items() if value is not None})
        env_keys = [key.strip() for key in os.environ.get(API_KEYS_ENV, "").split(",") if key.strip()]
        data["api_keys"] = list(dict.fromkeys([*(data.get("api_keys") or []), *env_keys]))
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(": ".join(filter(None, (".".join(map(str, e["loc"])),
                                                          e["msg"].removeprefix("Value error, "))))
                                 for e in exc.errors())
            raise GenrecError(f"invalid server settings{f' in {config}' if config else ''}: {problems}") from exc
