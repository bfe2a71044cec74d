"""LLM engines: the backends that run the causal LM behind ``genrec.llm.LLM`` (see ``genrec.engines.base``)."""

from genrec.engines.base import Capabilities, EngineUnsupportedError, GenerationRequest, LLMBackend

__all__ = ["Capabilities", "EngineUnsupportedError", "GenerationRequest", "LLMBackend"]
