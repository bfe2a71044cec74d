"""The OpenAI-compatible engine's scoring against a real server: llama-cpp-python's own (``python -m
llama_cpp.server``, the extra ``llama-cpp-python[server]``) on 127.0.0.1, running the shipped GGUF file.

That server takes only text prompts, one per request (a token-id prompt is refused with HTTP 500, a list of prompts
fails), so the engine sends the decoded text and scores one line per request. Its echoed log-probabilities drop the
entries of the prompt's special tokens; the engine reads a line's values just before the generated token and checks
that their token texts spell the line. The server's sampler applies a repeat penalty of 1.1 by default, so its greedy
text is not the in-process engines'.
"""

from __future__ import annotations

import math
import sys

import pytest
from servers import free_port, running
from test_engines import ASKS, TITLES, ranking_agreement

from genrec.decoding import answer_tokens
from genrec.engines.base import lines_done
from genrec.llm import LLM, LLMConfig, default_gguf_path

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    """``python -m llama_cpp.server`` on a free port with the default GGUF model; its ``/v1`` base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("llamacpp-server") / "server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(default_gguf_path()), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", "2048", "--n_threads", "2", "--n_threads_batch", "2",
               "--logits_all", "true", "--verbose", "false"]
    url = f"http://127.0.0.1:{port}"
    with running(command, url, log, path="/v1/models", timeout_s=120):
        yield f"{url}/v1"


@pytest.fixture(scope="module")
def served(server: str) -> LLM:
    return LLM.load(LLMConfig(llm_url=server))


def _chats(llm: LLM) -> list[str]:
    return [llm.format_chat([{"role": "user", "content": text}]) for text in
            ("Name a famous painter.", "Recommend three books about the sea, one per line, numbered.")]


def test_generation(served: LLM) -> None:
    texts = served.generate(_chats(served), max_new_tokens=16, batch_size=2)
    assert all(row[0] and "<|im_end|>" not in row[0] and "<|im_start|>" not in row[0] for row in texts)
    stopped = served.generate(_chats(served)[1:], max_new_tokens=80, stop_after_lines=2)[0][0]
    assert lines_done(stopped + "\n", 2) and not lines_done(stopped.rsplit("\n", 1)[0] + "\n", 2)
    sampled = served.generate(_chats(served)[:1], max_new_tokens=8, do_sample=True, temperature=1.0,
                              num_return_sequences=2)
    assert sampled[0][0] != sampled[0][1]
    assert sampled == served.generate(_chats(served)[:1], max_new_tokens=8, do_sample=True, temperature=1.0,
                                      num_return_sequences=2)


def test_scores_rank_candidates_as_the_reference(served: LLM, llm: LLM) -> None:
    """20 answer lines after a recommendation prompt, one request each: finite values, one per token, ranked as
    transformers fp32 ranks them (the threshold of ``test_engines``: Spearman 0.9, 4 of the top 5; measured
    0.99 and 5 against the in-process llamacpp engine)."""
    prompt = llm.tokenizer(llm.format_chat([{"role": "user", "content": ASKS[1]}]),
                           add_special_tokens=False)["input_ids"]
    head, lines = answer_tokens(TITLES, llm.tokenizer)
    scored = served.continuation_logprobs(prompt + head, lines)
    assert [len(row) for row in scored] == [len(line) for line in lines]
    assert all(math.isfinite(value) and value <= 0 for row in scored for value in row)
    expected = [sum(row) for row in llm.continuation_logprobs(prompt + head, lines)]
    spearman, top5 = ranking_agreement(expected, [sum(row) for row in scored])
    assert spearman >= 0.9 and top5 >= 4, (spearman, top5)
