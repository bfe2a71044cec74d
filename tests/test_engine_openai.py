"""The OpenAI-compatible engine against a real server: ``transformers serve`` (transformers' own OpenAI-compatible
server) on 127.0.0.1, running the default model and a tuned copy of it, held to the reference engine's answers.

``transformers serve`` 5.25 takes only text prompts (the engine falls back from token ids), ignores ``n`` (the
engine asks again, reseeded) and ``echo``/``logprobs`` (so scoring raises ``EngineUnsupportedError`` there; vLLM
and llama-cpp-python's server return them: ``tests/test_engine_llamacpp_server.py``), and cannot load a PEFT
adapter folder: the tuned model is served as its merged weights under their own name, which is what
``LLMConfig.adapter`` selects, as a LoRA name does on vLLM.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path

import httpx
import pytest
import torch
from servers import free_port, running

from genrec.engines.base import EngineUnsupportedError, lines_done
from genrec.engines.openai_api import LLMServerError, OpenAIBackend
from genrec.llm import LLM, LLMConfig, default_model_dir

pytestmark = pytest.mark.integration

PROMPTS = ["Name a famous painter.", "Recommend three books about the sea, one per line, numbered."]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The served models: the default model (its generation config set to sample, as ``transformers serve`` only
    samples when the model's config says so; requests at temperature 0 stay greedy), a LoRA adapter of it and the
    adapter's merged weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("served")
    source = default_model_dir()
    base = root / "base"
    base.mkdir()
    for file in source.iterdir():
        if file.name != "generation_config.json":
            (base / file.name).symlink_to(file)
    generation = json.loads((source / "generation_config.json").read_text())
    (base / "generation_config.json").write_text(json.dumps({**generation, "do_sample": True}))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(source)
    tuned = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                                             init_lora_weights=False))
    tuned.save_pretrained(root / "adapter")
    merged = root / "tuned"
    tuned.merge_and_unload().save_pretrained(merged)
    AutoTokenizer.from_pretrained(source).save_pretrained(merged)
    shutil.copy(base / "generation_config.json", merged / "generation_config.json")
    return {"base": base, "adapter": root / "adapter", "tuned": merged}


@pytest.fixture(scope="module")
def server(models: dict[str, Path], tmp_path_factory) -> str:
    """``transformers serve`` on a free port with both models loaded; its ``/v1`` base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    command = [sys.executable, "-c", "from transformers.cli.transformers import main; main()", "serve",
               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32"]
    url = f"http://127.0.0.1:{port}"
    with running(command, url, log, path="/v1/models", timeout_s=120, env=env):
        for name in ("base", "tuned"):
            _load_model(url, str(models[name]))
        yield f"{url}/v1"


def _load_model(url: str, model: str) -> None:
    """Load ``model`` into the server (its ``/load_model`` stream) so that ``/v1/models`` lists it."""
    with httpx.stream("POST", f"{url}/load_model", json={"model": model}, timeout=300) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[len("data: "):])
                if event.get("status") == "error":
                    raise RuntimeError(f"transformers serve could not load {model}: {event}")
                if event.get("status") == "ready":
                    return
    raise RuntimeError(f"transformers serve did not report {model} ready")


@pytest.fixture(scope="module")
def served(server: str, models: dict[str, Path]) -> LLM:
    return LLM.load(LLMConfig(llm_url=server, served_model=str(models["base"])))


def _chats(llm: LLM) -> list[str]:
    return [llm.format_chat([{"role": "user", "content": text}]) for text in PROMPTS]


def test_selection_and_cache_identity() -> None:
    assert LLMConfig(llm_url="http://h:1/v1").engine == "openai"
    assert "llm_url" not in LLMConfig().identity() and "served_model" not in LLMConfig().identity()
    assert LLMConfig(llm_url="http://h:1/v1", served_model="m").identity()["served_model"] == "m"
    with pytest.raises(Exception, match="needs llm_url"):
        LLMConfig(engine="openai")
    with pytest.raises(Exception, match="need engine 'openai'"):
        LLMConfig(engine="openvino", llm_url="http://h:1/v1")


def test_greedy_text_equals_the_reference(served: LLM, llm: LLM) -> None:
    texts = served.generate(_chats(served), max_new_tokens=16, batch_size=2)
    assert texts == llm.generate(_chats(llm), max_new_tokens=16)
    assert all(row[0] and "<|im_end|>" not in row[0] for row in texts)
    assert served.generate([], max_new_tokens=4) == []


def test_line_stops_cut_the_same_text(served: LLM, llm: LLM) -> None:
    prompt = _chats(served)[1:]
    stopped = served.generate(prompt, max_new_tokens=80, stop_after_lines=2)[0][0]
    assert stopped == llm.generate(prompt, max_new_tokens=80, stop_after_lines=2)[0][0]
    assert lines_done(stopped + "\n", 2) and not lines_done(stopped.rsplit("\n", 1)[0] + "\n", 2)


def test_sampling_repeats_with_the_seed(served: LLM) -> None:
    prompt = _chats(served)[:1]
    first = served.generate(prompt, max_new_tokens=8, do_sample=True, temperature=1.0, num_return_sequences=2)
    assert len(first[0]) == 2 and first[0][0] != first[0][1]
    assert first == served.generate(prompt, max_new_tokens=8, do_sample=True, temperature=1.0,
                                    num_return_sequences=2)


def test_adapter_is_a_served_model_name(server: str, models: dict[str, Path], served: LLM, llm: LLM) -> None:
    tuned = LLM.load(LLMConfig(llm_url=server, served_model=str(models["base"]), adapter=str(models["tuned"])))
    assert tuned.backend.model_name == str(models["tuned"])
    reference = LLM.load(LLMConfig(adapter=str(models["adapter"])))
    prompts = _chats(tuned)[:1]
    tuned_texts, base_texts = tuned.generate(prompts, max_new_tokens=10), llm.generate(prompts, max_new_tokens=10)
    assert tuned_texts == reference.generate(prompts, max_new_tokens=10)
    assert tuned_texts != base_texts
    with tuned.without_adapter():
        assert tuned.backend.model_name == str(models["base"])
        assert tuned.generate(prompts, max_new_tokens=10) == base_texts
    assert tuned.backend.model_name == str(models["tuned"])


def test_scoring_says_the_server_cannot(served: LLM) -> None:
    with pytest.raises(EngineUnsupportedError, match=r"cannot score candidate lines.*no log-probabilities"):
        served.continuation_logprobs([1, 2, 3], [[4], [5, 6]])
    with pytest.raises(EngineUnsupportedError, match="beam search"):
        served.generate(_chats(served)[:1], max_new_tokens=4, num_beams=2)


def test_errors_name_the_url(server: str, llm: LLM) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(LLMServerError, match=f"cannot reach the LLM server at {dead}"):
        LLM.load(LLMConfig(llm_url=dead))
    with pytest.raises(LLMServerError, match=f"at {server} does not serve the adapter 'movies'.*--lora-modules"):
        OpenAIBackend(server, llm.tokenizer, adapter="movies")
    with pytest.raises(LLMServerError, match=f"at {server} serves .*: name the base model"):
        OpenAIBackend(server, llm.tokenizer)  # two models served, none named
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        with pytest.raises(LLMServerError, match=f"the LLM server at {url} timed out"):
            OpenAIBackend(url, llm.tokenizer, timeout_s=1, max_retries=0)
