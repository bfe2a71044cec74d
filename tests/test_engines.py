"""LLM engines: the packing of candidate lines, engine selection, and the conformance every backend is held to
(the real default model on each engine; transformers fp32 is the reference)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from genrec.decoding import answer_tokens
from genrec.engines import hf
from genrec.engines.base import EngineUnsupportedError, lines_done
from genrec.engines.packing import PackedLines, group_by_tokens
from genrec.errors import GenrecError
from genrec.llm import LLM, LLMConfig, default_model_dir

# --- packing -----------------------------------------------------------------------------------------------------


def test_packing_shares_prefixes_and_masks_each_node_to_its_ancestors() -> None:
    packed = PackedLines.build([[5, 6, 7], [5, 6, 8], [9], [5, 6, 7]])
    assert packed.tokens == [5, 6, 7, 8, 9]
    assert packed.parents == [-1, 0, 1, 1, -1]
    assert packed.depths == [0, 1, 2, 2, 0]
    assert packed.paths == [[0, 1, 2], [0, 1, 3], [4], [0, 1, 2]]
    assert packed.inner_nodes() == [0, 1]
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 0, 1, 0], [0, 0, 0, 0, 1]])
    assert torch.equal(packed.tree_mask(), expected.bool())


def test_groups_respect_the_token_budget() -> None:
    lines = [[1] * 3, [1] * 3, [1] * 5, [1] * 1, [1] * 9]
    assert group_by_tokens(lines, 6) == [range(0, 2), range(2, 4), range(4, 5)]
    assert group_by_tokens([], 6) == []


def test_line_stop_rule() -> None:
    assert lines_done('1. "A"\n2. "B"\n', 2)
    assert not lines_done('1. "A"\n2. "B"', 2)  # the second line is not finished
    assert lines_done('1. "A"\n2. "A"\n', 5)  # a repeated title
    assert not lines_done("\n\n1. A\n", 2)


# --- selection -----------------------------------------------------------------------------------------------------


def test_engine_setting_is_checked_and_keys_caches_only_when_not_the_reference() -> None:
    with pytest.raises(GenrecError, match="engine must be one of"):
        LLMConfig(engine="vllm")  # type: ignore[arg-type]
    with pytest.raises(GenrecError, match="load_in_4bit"):
        LLMConfig(engine="openvino", load_in_4bit=True)
    assert "engine" not in LLMConfig().identity()
    assert LLMConfig(engine="openvino").identity()["engine"] == "openvino"


def test_llamacpp_missing_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as where it is not installed
    with pytest.raises(GenrecError, match=r"needs the package llama-cpp-python.*builds it from source"):
        LLM.load(LLMConfig(engine="llamacpp"))


# --- the transformers backend's scorer -------------------------------------------------------------------------


def _full_sequence_logprobs(llm: LLM, prompt: list[int], line: list[int]) -> list[float]:
    with torch.no_grad():
        logits = llm.model(input_ids=torch.tensor([prompt + line])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [float(logprobs[len(prompt) - 1 + i, token]) for i, token in enumerate(line)]


SCORED_TEXTS = ['Heat (1995)"\n', 'Heat (1995)"\n', 'Heat and Dust"\n', 'Up"\n', "H", 'The Matrix (1999)"\n']


@pytest.mark.integration
@pytest.mark.parametrize("pack_tokens", [1024, 7])  # one packed pass; several, each on a copy of the prompt cache
def test_packed_scores_equal_full_sequence_scores(llm: LLM, pack_tokens: int, monkeypatch) -> None:
    monkeypatch.setattr(hf, "PACK_TOKENS", pack_tokens)
    prompt = llm.tokenizer(llm.format_chat([{"role": "user", "content": "Name a movie."}]) + '1. "',
                           add_special_tokens=False)["input_ids"]
    lines = [llm.tokenizer(text, add_special_tokens=False)["input_ids"] for text in SCORED_TEXTS]
    scored = llm.continuation_logprobs(prompt, lines)
    assert [len(row) for row in scored] == [len(line) for line in lines]
    for line, row in zip(lines, scored, strict=True):
        assert row == pytest.approx(_full_sequence_logprobs(llm, prompt, line), abs=1e-4)
    assert scored[0] == scored[1]


@pytest.mark.integration
def test_packed_scores_follow_the_adapter(llm: LLM, tmp_path: Path) -> None:
    """With a LoRA that changes the model, packed scores are the tuned model's; with the adapter off, the base's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(default_model_dir())
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                                    init_lora_weights=False)).save_pretrained(tmp_path)
    tuned = LLM.load(LLMConfig(adapter=str(tmp_path)))
    prompt = llm.tokenizer(llm.format_chat([{"role": "user", "content": "Name a movie."}]) + '1. "',
                           add_special_tokens=False)["input_ids"]
    lines = [llm.tokenizer(text, add_special_tokens=False)["input_ids"] for text in SCORED_TEXTS[:4]]
    scored = tuned.continuation_logprobs(prompt, lines)
    for line, row in zip(lines, scored, strict=True):
        assert row == pytest.approx(_full_sequence_logprobs(tuned, prompt, line), abs=1e-4)
    base = llm.continuation_logprobs(prompt, lines)
    assert max(abs(a - b) for tuned_row, base_row in zip(scored, base, strict=True)
               for a, b in zip(tuned_row, base_row, strict=True)) > 1e-2
    with tuned.without_adapter():
        for off_row, base_row in zip(tuned.continuation_logprobs(prompt, lines), base, strict=True):
            assert off_row == pytest.approx(base_row, abs=1e-4)


# --- conformance: every engine ---------------------------------------------------------------------------------

ENGINES = ["transformers", "openvino", "llamacpp"]
PROMPTS = ["Name a famous painter.", "Recommend three books about the sea, one per line, numbered.",
           "What is the capital of France?"]


@pytest.fixture(scope="module")
def engines(llm: LLM) -> dict[str, LLM]:
    return {"transformers": llm, "openvino": LLM.load(LLMConfig(engine="openvino")),
            "llamacpp": LLM.load(LLMConfig(engine="llamacpp"))}


def _chats(llm: LLM) -> list[str]:
    return [llm.format_chat([{"role": "user", "content": text}]) for text in PROMPTS]


@pytest.mark.integration
@pytest.mark.parametrize("engine", ENGINES)
def test_greedy_generation_stops_at_end_of_turn(engines: dict[str, LLM], engine: str) -> None:
    llm = engines[engine]
    texts = llm.generate(_chats(llm), max_new_tokens=24, batch_size=3)
    assert len(texts) == len(PROMPTS) and all(len(row) == 1 for row in texts)
    assert all(row[0] and "<|im_end|>" not in row[0] and "<|im_start|>" not in row[0] for row in texts)
    assert llm.generate([], max_new_tokens=4) == []


@pytest.mark.integration
@pytest.mark.parametrize("engine", [
    "transformers",
    pytest.param("openvino", marks=pytest.mark.xfail(strict=True, reason=(
        "openvino-genai's continuous batching is not batch-invariant: a prompt's greedy text changes with the "
        "prompts batched beside it"))),
    "llamacpp",
])
def test_greedy_batches_equal_single_prompts(engines: dict[str, LLM], engine: str) -> None:
    llm = engines[engine]
    prompts = _chats(llm)
    batched = llm.generate(prompts, max_new_tokens=24, batch_size=3)
    assert batched == [llm.generate([prompt], max_new_tokens=24)[0] for prompt in prompts]


@pytest.mark.integration
@pytest.mark.parametrize("engine", ENGINES)
def test_line_stops_cut_the_same_text(engines: dict[str, LLM], engine: str) -> None:
    llm = engines[engine]
    prompt = _chats(llm)[1:2]
    full = llm.generate(prompt, max_new_tokens=80)[0][0]
    stopped = llm.generate(prompt, max_new_tokens=80, stop_after_lines=2)[0][0]
    assert full.startswith(stopped) and len(stopped) < len(full)
    assert lines_done(stopped + "\n", 2) and not lines_done(stopped.rsplit("\n", 1)[0] + "\n", 2)


@pytest.mark.integration
@pytest.mark.parametrize("engine", ENGINES)
def test_sampling_repeats_with_the_seed(engines: dict[str, LLM], engine: str) -> None:
    llm = engines[engine]
    prompt = _chats(llm)[:1]
    first = llm.generate(prompt, max_new_tokens=8, do_sample=True, temperature=1.0, num_return_sequences=2)
    assert first == llm.generate(prompt, max_new_tokens=8, do_sample=True, temperature=1.0, num_return_sequences=2)
    assert len(first[0]) == 2


@pytest.mark.integration
@pytest.mark.parametrize("engine", [
    "transformers",
    pytest.param("openvino", marks=pytest.mark.xfail(strict=True, reason=(
        "openvino-genai keeps the GGUF weights 4-bit where transformers dequantizes them to fp32: greedy texts "
        "differ (benchmarks/results/engines.md)"))),
    pytest.param("llamacpp", marks=[pytest.mark.xfail(strict=True, reason=(
        "llama.cpp keeps the GGUF weights 4-bit (and quantizes activations to 8 bits) where transformers "
        "dequantizes them to fp32: greedy texts differ"))]),
])
def test_greedy_text_equals_the_reference(engines: dict[str, LLM], engine: str) -> None:
    reference, llm = engines["transformers"], engines[engine]
    assert llm.generate(_chats(llm), max_new_tokens=24) == reference.generate(_chats(reference), max_new_tokens=24)


@pytest.mark.integration
@pytest.mark.parametrize("engine", ["openvino", "llamacpp"])
def test_an_engine_says_what_it_cannot_do(engines: dict[str, LLM], engine: str, tmp_path: Path) -> None:
    llm = engines[engine]
    prompt = _chats(llm)[:1]
    with pytest.raises(EngineUnsupportedError, match="constrained decoding"):
        llm.generate(prompt, max_new_tokens=4, allowed_tokens=lambda row, ids: [1])
    with pytest.raises(EngineUnsupportedError, match="beam search"):
        llm.generate(prompt, max_new_tokens=4, num_beams=2)
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(EngineUnsupportedError, match="adapter"):
        LLM.load(LLMConfig(engine=engine, adapter=str(tmp_path)))
    if engine == "openvino":  # llama.cpp scores (tested below)
        with pytest.raises(EngineUnsupportedError, match="cannot score"):
            llm.continuation_logprobs([1, 2, 3], [[4], [5, 6]])
    else:  # openvino also opens OpenVINO IR folders
        with pytest.raises(GenrecError, match="needs a .gguf file"):
            LLM.load(LLMConfig(engine=engine, model=str(tmp_path)))


# --- llamacpp: scoring against the reference ---------------------------------------------------------------------

TITLES = ["Toy Story (1995)", "Heat (1995)", "The Matrix (1999)", "Titanic (1997)", "Jurassic Park (1993)",
          "Fargo (1996)", "Casablanca (1942)", "Alien (1979)", "Up (2009)", "Inception (2010)", "The Godfather (1972)",
          "Pulp Fiction (1994)", "Forrest Gump (1994)", "Braveheart (1995)", "Amélie (2001)", "Spirited Away (2001)",
          "Se7en (1995)", "Gladiator (2000)", "Memento (2000)", "Shrek (2001)"]
ASKS = ["I loved Toy Story and Finding Nemo. Recommend one movie.",
        "I love crime thrillers like Heat. Recommend one movie.", "Recommend a classic black-and-white film."]


def ranking_agreement(reference: list[float], other: list[float]) -> tuple[float, int]:
    """Spearman's rank correlation of two score lists and how many of their top 5 they share."""
    from scipy.stats import spearmanr

    top = {index for index in sorted(range(len(reference)), key=lambda i: -reference[i])[:5]}
    return float(spearmanr(reference, other)[0]), len(top & set(sorted(range(len(other)), key=lambda i: -other[i])[:5]))


@pytest.mark.integration
@pytest.mark.parametrize("ask", ASKS)
def test_llamacpp_scores_rank_candidates_as_the_reference(engines: dict[str, LLM], ask: str) -> None:
    """20 answer lines after a recommendation prompt: the 4-bit GGUF on llama.cpp ranks them as transformers fp32
    does. Measured on these prompts: Spearman 0.96-0.995 and 4-5 of the top 5 shared (threshold 0.9 and 4); line
    log-probabilities differ by up to ~1.8 nats, token ones by up to ~0.7 between llama.cpp's own kernels for small
    and large batches (20 lines in one call against one by one). A line's scores do not depend on the other lines
    of its call: each is its own sequence on the prompt's cache."""
    reference, llm = engines["transformers"], engines["llamacpp"]
    prompt = reference.tokenizer(reference.format_chat([{"role": "user", "content": ask}]),
                                 add_special_tokens=False)["input_ids"]
    head, lines = answer_tokens(TITLES, reference.tokenizer)
    scored = llm.continuation_logprobs(prompt + head, lines)
    assert [len(row) for row in scored] == [len(line) for line in lines]
    expected = [sum(row) for row in reference.continuation_logprobs(prompt + head, lines)]
    for other in (scored, llm.continuation_logprobs(prompt + head, lines, batch_size=1)):
        spearman, top5 = ranking_agreement(expected, [sum(row) for row in other])
        assert spearman >= 0.9 and top5 >= 4, (spearman, top5)
    pairs = [llm.continuation_logprobs(prompt + head, [lines[0], lines[k]]) for k in (1, 2)]
    assert pairs[0][0] == pairs[1][0]
