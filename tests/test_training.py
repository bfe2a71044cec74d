"""SFT data and the LoRA trainer, on synthetic stores with a tiny random Llama (fast) and the real model (integration).

The tiny model uses a byte-level tokenizer with a ChatML template built in memory, so nothing is downloaded and the
prompts go through exactly the code path of real runs.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torch._dynamo.utils import counters

from genrec.data.importers import ImportBatch
from genrec.data.schema import Platform
from genrec.data.store import Store
from genrec.errors import GenrecError
from genrec.evaluation.protocol import Protocol, build
from genrec.llm import LLM, LLMConfig, read_adapter_metadata
from genrec.pipeline.types import history_items
from genrec.recommender import Recommender, RecommenderConfig, Request
from genrec.training import sft
from genrec.training.config import LoraSettings, load, parse
from genrec.training.model import load_for_training
from genrec.training.negatives import add_negatives, example_case
from genrec.training.trainer import Trainer, candidate_logprobs, compiled, ranking_loss, response_loss

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
PROMPT = {"n_generate": 2, "token_budget": 200, "max_items_per_platform": 4}


def _tokenizer():
    """A small byte-level BPE tokenizer trained on genrec's prompt templates, with ChatML tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from genrec.prompts import packaged_templates

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    corpus = [path.read_text() for path in sorted(packaged_templates().glob("*.j2"))]
    corpus += [f'- "{kind} thing {i}"\n{i}. "{kind} thing {i}"' for kind in ("arts", "office") for i in range(12)]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    core.train_from_iterator(corpus * 3, trainers.BpeTrainer(vocab_size=700, special_tokens=specials,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                             show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    return tokenizer


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-block Llama with the byte-level tokenizer, saved as a Hugging Face directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = _tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _batch(rows: list[tuple[str, str, str, int]], splits: list[tuple[str, str]]) -> ImportBatch:
    frame = pd.DataFrame(rows, columns=["user_id", "platform", "item_id", "timestamp"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="s").astype("datetime64[us]")
    frame["event"], frame["value"] = "x", None
    frame["_file"], frame["_line"] = "t", range(1, len(frame) + 1)
    n = 30  # items per platform; users touch the first 12
    items = pd.DataFrame({"platform": ["a"] * n + ["b"] * n,
                          "item_id": [f"a{i}" for i in range(n)] + [f"b{i}" for i in range(n)]})
    items["title"] = [f"arts thing {i}" for i in range(n)] + [f"office thing {i}" for i in range(n)]
    for col in ("description", "category", "attributes", "year"):
        items[col] = None
    items["_file"], items["_line"] = "t", range(1, len(items) + 1)
    return ImportBatch("t", platforms=[Platform("a", verb="bought"), Platform("b", verb="bought")], events=frame,
                       items=items, splits=pd.DataFrame(splits, columns=["user_id", "split"]))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """30 users over two platforms (a repeating pattern a model can learn), split 20 train / 5 valid / 5 test."""
    rng = random.Random(3)
    rows = []
    for u in range(30):
        start, t = rng.randrange(12), 0
        for step in range(rng.randint(6, 12)):
            t += rng.choice([1, 1, 2, 0]) if step else 1  # equal timestamps happen
            platform = "ab"[step % 3 == 2]
            rows.append((f"u{u}", platform, f"{platform}{(start + step) % 12}", t))
    splits = [(f"u{u}", "train" if u < 20 else "valid" if u < 25 else "test") for u in range(30)]
    with Store(tmp_path_factory.mktemp("store") / "s.duckdb") as s:
        s.ingest(_batch(rows, splits))
        yield s


def _recommender(store: Store, prompt: dict | None = None) -> Recommender:
    llm = LLM(None, _tokenizer(), LLMConfig())
    return Recommender(store, llm=llm, config=RecommenderConfig(**(prompt or PROMPT)))


# --------------------------------------------------------------------------------------------------- SFT data


@pytest.mark.parametrize("users", ["dataset", "all"])
def test_examples_come_from_train_data_only(store, users):
    data = build(store, Protocol(targets="final-timestamp", users=users), ["a", "b"])
    config = sft.SFTConfig(response_items=3, max_examples_per_user=50)
    examples = sft.build_examples(data.train, _recommender(store), config, seed=1).examples
    assert examples
    held_out = data.valid + data.test
    train_users = set(data.train.sequences)
    if users == "dataset":
        assert {e.user_id for e in examples} <= train_users
        assert not {e.user_id for e in examples} & {c.user_id for c in held_out}
    first_target = {}
    for case in held_out:
        first_target[case.user_id] = min(first_target.get(case.user_id, case.timestamp), case.timestamp)
    for example in examples:
        sequence = data.train.sequences[example.user_id]
        stamps = {(x.platform, x.item_id): x.timestamp for x in sequence}
        for target in example.targets:  # answers are real later events of the user's training sequence
            assert stamps[(example.platform, target)] >= example.cutoff
        assert example.cutoff < first_target.get(example.user_id, float("inf")), "a held-out target leaked"
        history = [x for x in sequence if x.timestamp < example.cutoff]
        shown = {x.item_id for x in history}
        assert not set(example.targets) & {x.item_id for x in history if x.platform == example.platform}
        for later in (x for x in sequence if x.timestamp >= example.cutoff and x.item_id not in shown):
            title = data.train.titles[(later.platform, later.item_id)]
            assert f'"{title}"' not in example.prompt, "a future event reached the prompt"


def test_prompts_are_the_inference_prompts(store, embedder_stub, tmp_path, monkeypatch):
    monkeypatch.setenv("GENREC_HOME", str(tmp_path))
    data = build(store, Protocol(targets="final-timestamp", users="dataset"), ["a", "b"])
    recommender = _recommender(store)
    recommender._embedder = embedder_stub  # inference builds the catalog index before the prompt
    example = sft.build_examples(data.train, recommender, sft.SFTConfig(), seed=0).examples[0]
    sequence = data.train.sequences[example.user_id]
    history = history_items(example.user_id, [x for x in sequence if x.timestamp < example.cutoff],
                            data.train.titles)
    request = Request(example.platform, history=history, k=5)
    assert recommender._prepare(request)[2] == example.prompt
    assert example.prompt.endswith("<|im_start|>assistant\n")


def test_responses_in_the_answer_format_with_grounded_rationales(store, embedder_stub, tmp_path, monkeypatch):
    from genrec.llm import parse_candidates

    monkeypatch.setenv("GENREC_HOME", str(tmp_path))  # the stub's catalog vectors stay out of the real cache
    data = build(store, Protocol(targets="final-timestamp", users="dataset"), ["a", "b"])
    recommender = _recommender(store)
    recommender._embedder = embedder_stub
    config = sft.SFTConfig(response_items=2, rationale_fraction=1.0)
    examples = sft.build_examples(data.train, recommender, config, seed=0).examples
    assert examples and all(e.rationale for e in examples)
    for example in examples:
        parsed = parse_candidates(example.response).candidates
        titles = [data.train.titles[(example.platform, t)] for t in example.targets]
        assert [c.title for c in parsed] == titles
        for candidate in parsed:
            cited = candidate.rationale.split('"')[1]
            assert f'- "{cited}"' in example.prompt, "a rationale cites an item the profile does not show"
        assert "reason" in example.prompt  # the prompt asked for reasons


def test_platform_filter_removes_a_platform_everywhere(store):
    data = build(store, Protocol(targets="final-timestamp", users="dataset"), ["a", "b"])
    config = sft.SFTConfig(max_examples_per_user=50, exclude_platforms=["b"])
    result = sft.build_examples(data.train, _recommender(store), config, seed=0)
    assert result.examples and result.stats["per_platform"].keys() == {"a"}
    assert not any('"b"' in e.prompt or "office" in e.prompt for e in result.examples)


def test_sampling_is_seeded_capped_and_deduplicated(store):
    data = build(store, Protocol(targets="final-timestamp", users="dataset"), ["a", "b"])
    config = sft.SFTConfig(max_examples_per_user=2, max_examples=15, stride=2)
    first = sft.build_examples(data.train, _recommender(store), config, seed=5)
    again = sft.build_examples(data.train, _recommender(store), config, seed=5)
    assert first.examples == again.examples
    assert len(first.examples) <= 15
    per_user = pd.Series([e.user_id for e in first.examples]).value_counts()
    assert per_user.max() <= 2
    assert len({(e.prompt, e.response) for e in first.examples}) == len(first.examples)


def test_labels_cover_the_response_only():
    tokenizer = _tokenizer()
    example = sft.SFTExample("u", "a", 1.0, ("a1",), "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
                             '1. "arts thing 1"')
    (short,), _ = sft.tokenize([example], tokenizer, 1024)
    (long,), _ = sft.tokenize([sft.SFTExample(**{**example.to_dict(), "prompt": example.prompt * 2})], tokenizer,
                              1024)
    batch = sft.collate([short, long], tokenizer.pad_token_id)
    for row, item in enumerate((short, long)):
        labels = batch["labels"][row]
        supervised = labels[labels != sft.IGNORE_INDEX].tolist()
        assert supervised == list(item.input_ids[item.prompt_length :])
        assert tokenizer.decode(supervised) == '1. "arts thing 1"<|im_end|>'
    assert batch["attention_mask"][0, : len(long) - len(short)].sum() == 0  # left padding
    assert batch["response_span"] == short.response_length
    _, dropped = sft.tokenize([example], tokenizer, 10)
    assert dropped == 1


def test_length_buckets_keep_padding_low():
    rng = random.Random(0)
    lengths = [rng.randint(180, 460) for _ in range(2000)]
    batches = sft.length_batches(lengths, batch_tokens=4096, max_batch_size=16, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(2000))
    assert all(len(b) * max(lengths[i] for i in b) <= 4096 and len(b) <= 16 for b in batches)
    assert sft.padding_waste(lengths, batches) < 0.02
    naive = [list(range(i, min(i + 8, 2000))) for i in range(0, 2000, 8)]
    assert sft.padding_waste(lengths, naive) > 0.15
    assert batches != sft.length_batches(lengths, batch_tokens=4096, max_batch_size=16, seed=1)


def test_hard_negatives_come_from_the_sources_top_items(store):
    from genrec.pipeline.sources.itemknn import ItemKNN
    from genrec.pipeline.sources.popularity import MostPop

    data = build(store, Protocol(targets="final-timestamp", users="dataset"), ["a", "b"])
    config = sft.SFTConfig(response_items=2, max_examples_per_user=4, negatives=3, negative_pool=4)
    examples = sft.build_examples(data.train, _recommender(store), config, seed=0)
    sources = [MostPop(history_scope="cross"), ItemKNN(history_scope="cross")]
    made = add_negatives(examples, data.train, sources, config, seed=0)
    assert made.examples and made.stats["negatives"] == 3
    assert made.stats["examples"] + made.stats["dropped_few_negatives"] == len(examples.examples)
    sequences = sft.filter_platforms(data.train, [])
    for example in made.examples:
        case = example_case(example, sequences)
        owned = {x.item_id for x in case.history_on(example.platform)}
        assert all(x.timestamp < example.cutoff for x in case.history)
        assert len(set(example.negatives)) == 3 and not set(example.negatives) & (owned | set(example.targets))
        catalog = data.train.catalogs[example.platform]
        top = set()
        for source in sources:
            row = source.score([case], example.platform)[0]
            ranked = [catalog[j] for j in (-row).argsort(kind="stable")]
            top |= set([item for item in ranked if item not in owned | set(example.targets)][:4])
        assert set(example.negatives) <= top
        titles = [data.train.titles[(example.platform, i)] for i in (example.targets[0], *example.negatives)]
        assert list(example.candidate_titles) == titles
    again = add_negatives(examples, data.train, sources, config, seed=0)
    assert [e.negatives for e in again.examples] == [e.negatives for e in made.examples]
    assert sft.SFTExample.from_dict(json.loads(json.dumps(made.examples[0].to_dict()))) == made.examples[0]


def test_ranking_batches_score_lines_as_inference_does(tiny_model_dir):
    """Left-padded prompts of two lengths, lines of several lengths: the trainer's line scores equal
    ``LLM.continuation_logprobs`` (what scored decoding ranks by), and the loss trains the true line up."""
    tokenizer = _tokenizer()
    llm = LLM.load(LLMConfig(model=str(tiny_model_dir), dtype="float32"))
    chat = "<|im_start|>user\nwhich {}<|im_end|>\n<|im_start|>assistant\n"
    examples = [sft.SFTExample("u", "a", 1.0, ("a1",), chat.format(prompt), "", candidate_titles=titles)
                for prompt, titles in (("thing", ("arts thing 1", "arts thing 10", "office thing 2")),
                                       ("arts thing please, the one you like", ("arts thing 3", "arts", "thing 7")))]
    tokens, _ = sft.tokenize(examples, tokenizer, 1024, score_tokens=4)
    assert all(len(line) <= 4 for item in tokens for line in item.candidates)
    assert all(item.offsets == () for item in tokens)
    with_priors = [replace(e, candidate_priors=(-1.0, -2.0, -4.0)) for e in examples]
    calibrated, _ = sft.tokenize(with_priors, tokenizer, 1024, score_tokens=4, rank_calibration=0.5)
    assert [item.offsets for item in calibrated] == [(-0.5, -1.0, -2.0)] * 2
    assert [item.candidates for item in calibrated] == [item.candidates for item in tokens]
    batch = sft.collate_ranking(tokens, tokenizer.pad_token_id)
    with torch.no_grad():
        logprobs, mask = candidate_logprobs(llm.model, batch)
    for row, item in enumerate(tokens):
        expected = llm.continuation_logprobs(item.input_ids, item.candidates)
        for j, line in enumerate(expected):
            got = logprobs[row * 3 + j, : len(line)]
            torch.testing.assert_close(got, torch.tensor(line), rtol=1e-4, atol=1e-4)
            assert mask[row * 3 + j].sum() == len(line)
    model, _ = load_for_training(tiny_model_dir, LoraSettings(r=4, alpha=8, dropout=0.0),
                                 device=torch.device("cpu"), dtype=torch.float32)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    margins = []
    for _ in range(8):
        with torch.no_grad():
            logprobs, _ = candidate_logprobs(model, batch)
        scores = logprobs.sum(dim=1).view(2, 3)
        margins.append(float((scores[:, 0] - scores[:, 1:].max(dim=1).values).mean()))
        optimizer.zero_grad()
        ranking_loss(model, batch, sft_weight=0.0).backward()
        optimizer.step()
    assert margins[-1] > margins[0] + 1.0
    # offsets (the calibration's share of each line's title prior) are taken off the scores before the softmax
    offsets = ((0.0, -5.0, 2.0), (1.0, 0.0, -3.0))
    shifted = sft.collate_ranking([sft.TokenizedExample(t.input_ids, t.prompt_length, t.candidates, o)
                                   for t, o in zip(tokens, offsets, strict=True)], tokenizer.pad_token_id)
    with torch.no_grad():
        logprobs, mask = candidate_logprobs(llm.model, shifted)
        scores = logprobs.sum(dim=1).view(2, 3) - torch.tensor(offsets)
        expected = torch.nn.functional.cross_entropy(scores, torch.zeros(2, dtype=torch.long))
        expected += 0.5 * -logprobs[::3].sum() / mask[::3].sum()
        torch.testing.assert_close(ranking_loss(llm.model, shifted, sft_weight=0.5), expected)
        # a temperature T: T x the cross-entropy of scores / T (a softer softmax, the same gradient scale)
        tempered = 8.0 * torch.nn.functional.cross_entropy(scores / 8.0, torch.zeros(2, dtype=torch.long))
        tempered += 0.5 * -logprobs[::3].sum() / mask[::3].sum()
        torch.testing.assert_close(ranking_loss(llm.model, shifted, sft_weight=0.5, temperature=8.0), tempered)
        assert not torch.isclose(tempered, expected)
    with pytest.raises(ValueError, match="same, non-zero number of candidates"):
        sft.collate_ranking([tokens[0], sft.TokenizedExample(tokens[1].input_ids, len(tokens[1].input_ids),
                                                             tokens[1].candidates[:2])], 0)


@pytest.mark.parametrize("adapter_dtype", ["float32", "bfloat16"])
def test_compiled_losses_equal_the_eager_ones(tiny_model_dir, adapter_dtype):
    """``train.compile``: both losses through ``torch.compile`` give the eager losses and gradients, with the
    adapter in float32 or in the base model's bf16 (``lora.dtype``), for batches of two shapes and response spans
    (dynamic shapes), each loss compiled once."""
    torch._dynamo.reset()  # no graph of another test (nor its recompile budget) carries over
    tokenizer = _tokenizer()
    model, _ = load_for_training(tiny_model_dir, LoraSettings(r=4, alpha=8, dropout=0.0, dtype=adapter_dtype),
                                 device=torch.device("cpu"), dtype=torch.bfloat16)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and {p.dtype for p in trainable} == {getattr(torch, adapter_dtype)}
    for p in trainable:  # LoRA B starts at zero: give the adapter a part in the forward pass
        torch.nn.init.normal_(p, std=0.05)
    chat = "<|im_start|>user\nwhich {}<|im_end|>\n<|im_start|>assistant\n"
    prompts = ["thing", "arts thing please, the one you like", "office things for a desk that is rather small"]
    titles = ("arts thing 1", "arts thing 10", "office thing 2")
    responses = ['1. "arts thing 1"', '1. "arts thing 1"', '1. "office thing 2"\n2. "arts thing 10"']
    examples = [sft.SFTExample("u", "a", 1.0, ("a1",), chat.format(p), r)
                for p, r in zip(prompts, responses, strict=True)]
    answers, _ = sft.tokenize(examples, tokenizer, 1024)
    lines, _ = sft.tokenize([replace(e, candidate_titles=titles) for e in examples], tokenizer, 1024, score_tokens=4)
    pad = tokenizer.pad_token_id
    # the second response batch has a longer response span than the first; the first ranking batch has as many
    # examples as candidates (3): one graph per loss must serve both of its batches
    batches = [(response_loss, sft.collate(answers[:2], pad), ()), (response_loss, sft.collate(answers, pad), ()),
               (ranking_loss, sft.collate_ranking(lines, pad), (0.25,)),
               (ranking_loss, sft.collate_ranking(lines[:2], pad), (0.25,))]
    fast = {response_loss: compiled(response_loss), ranking_loss: compiled(ranking_loss)}
    graphs = {}
    for loss, batch, args in batches:
        graphs.setdefault(loss, counters["stats"]["unique_graphs"])
        results = []
        for fn in (loss, fast[loss]):
            model.zero_grad()
            value = fn(model, batch, *args)
            value.backward()
            results.append((value.detach(), [p.grad.float().clone() for p in trainable]))
        (eager, eager_grads), (fused, fused_grads) = results
        torch.testing.assert_close(fused, eager, rtol=2e-2, atol=2e-2)
        for got, expected in zip(fused_grads, eager_grads, strict=True):
            torch.testing.assert_close(got, expected, rtol=5e-2, atol=5e-3)
        assert any(g.abs().sum() > 0 for g in fused_grads)
    # the compiler ran, once per loss for both batch shapes (dynamo's count of compiled graphs)
    assert counters["stats"]["unique_graphs"] - graphs[ranking_loss] == 1
    assert graphs[ranking_loss] - graphs[response_loss] == 1


def test_load_for_training_checkpoints_from_the_first_step(tiny_model_dir):
    """``from_pretrained`` returns a model in eval mode, where Hugging Face layers skip gradient checkpointing; the
    loader hands the trainer a model in train mode, so a checkpointed block runs twice in a step (forward, and again
    in backward), not only after a validation round has switched modes."""
    model, _ = load_for_training(tiny_model_dir, LoraSettings(r=4, alpha=8), device=torch.device("cpu"),
                                 dtype=torch.float32, gradient_checkpointing=True)
    assert all(module.training for module in model.modules())
    calls: list[int] = []
    model.get_base_model().model.layers[0].self_attn.register_forward_pre_hook(lambda *_: calls.append(1))
    ids = torch.randint(0, 100, (2, 7))
    model(input_ids=ids, labels=ids).loss.backward()
    assert len(calls) == 2


def test_the_lm_head_gets_a_contiguous_input_from_both_loaders(tiny_model_dir):
    """``logits_to_keep`` hands the head a strided slice of a batch's hidden states, which torch multiplies row by
    row with a copy of the head's weight per row; both loaders make that input contiguous (``contiguous_head_input``)
    and the kept logits stay those of the full pass."""
    training, _ = load_for_training(tiny_model_dir, LoraSettings(r=4, alpha=8), device=torch.device("cpu"),
                                    dtype=torch.float32)
    inference = LLM.load(LLMConfig(model=str(tiny_model_dir), dtype="float32")).model
    ids = torch.randint(0, 100, (3, 9))
    seen: list[bool] = []
    for model in (training, inference):
        hook = model.get_output_embeddings().register_forward_pre_hook(
            lambda _module, args: seen.append(args[0].is_contiguous()))
        with torch.no_grad():
            kept = model(input_ids=ids, logits_to_keep=4).logits
            full = model(input_ids=ids).logits
        hook.remove()
        torch.testing.assert_close(kept, full[:, -4:], rtol=1e-5, atol=1e-5)
    assert seen == [True] * 4


# --------------------------------------------------------------------------------------------------- trainer


def _config(tmp_path: Path, **train) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    eval_path = tmp_path / "eval.yaml"
    eval_path.write_text(yaml.safe_dump({"name": "synthetic", "dataset": "synthetic", "methods": ["mostpop"],
                                         "protocol": {"targets": "final-timestamp", "users": "dataset"}}))
    return {"name": "tiny", "eval_config": str(eval_path), "output_dir": str(tmp_path / "run"), "prompt": PROMPT,
            "sft": {"response_items": 2, "max_examples_per_user": 4},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
            "train": {"max_steps": 6, "batch_tokens": 1200, "threads": 1, "grad_accum": 2, "lr": 2e-2,
                      "warmup_ratio": 0.2, "log_every": 1, "checkpoint_every": 2, "device": "cpu", "dtype": "float32",
                      **train},
            "validation": {"cases": 0}}


def _train(store, raw: dict, model_dir: Path, resume: bool = False):
    config = parse({**raw, "model": str(model_dir)})
    data = build(store, Protocol(targets="final-timestamp", users="dataset"), ["a", "b"])
    return Trainer(config, store, data=data, progress=False, log=lambda _: None).run(resume=resume)


def _lora_weights(adapter: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(adapter / "adapter_model.safetensors")


def test_training_reduces_the_loss_and_writes_a_loadable_adapter(store, tiny_model_dir, tmp_path):
    result = _train(store, _config(tmp_path, max_steps=12), tiny_model_dir)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["event"] == "train"]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3
    assert result.state.step == 12 and result.padding_waste < 0.1
    metadata = read_adapter_metadata(result.adapter_dir)
    assert metadata["config_hash"] and metadata["train_examples"] == result.examples
    assert metadata["dataset"] == "synthetic" and metadata["protocol"]["users"] == "dataset"
    assert metadata["recommender"]["n_generate"] == PROMPT["n_generate"] and metadata["machine"]["cpus"]
    assert RecommenderConfig.for_adapter(str(result.adapter_dir)).token_budget == PROMPT["token_budget"]
    llm = LLM.load(LLMConfig(model=str(tiny_model_dir), adapter=str(result.adapter_dir), dtype="float32"))
    assert type(llm.model).__name__ == "PeftModelForCausalLM"
    trained = _lora_weights(result.adapter_dir)
    assert any(name.endswith("lora_B.weight") and t.abs().sum() > 0 for name, t in trained.items())


def test_compiled_training_of_a_bf16_adapter(store, tiny_model_dir, tmp_path):
    """``train.compile`` and ``lora.dtype: bfloat16`` in a run: the loss falls and the adapter is saved in bf16."""
    torch._dynamo.reset()
    raw = _config(tmp_path, max_steps=8, compile=True, dtype="bfloat16")
    frames = counters["stats"]["calls_captured"]
    result = _train(store, {**raw, "lora": {**raw["lora"], "dtype": "bfloat16"}}, tiny_model_dir)
    assert counters["stats"]["calls_captured"] > frames  # the steps ran through the compiler
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "train"]
    assert len(losses) == 8 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    trained = _lora_weights(result.adapter_dir)
    assert {t.dtype for t in trained.values()} == {torch.bfloat16}
    assert any(name.endswith("lora_B.weight") and t.abs().sum() > 0 for name, t in trained.items())
    with pytest.raises(GenrecError, match=r"lora.dtype = 'float16'; expected one of float32, bfloat16"):
        parse({**raw, "model": str(tiny_model_dir), "lora": {"dtype": "float16"}})


def test_resume_continues_at_the_same_step(store, tiny_model_dir, tmp_path, monkeypatch):
    from genrec.training import trainer

    straight = _train(store, _config(tmp_path / "straight"), tiny_model_dir)
    save = trainer._Run.save_checkpoint

    def save_then_crash(run):
        save(run)
        if run.state.step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer._Run, "save_checkpoint", save_then_crash)
    raw = _config(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        _train(store, raw, tiny_model_dir)
    monkeypatch.setattr(trainer._Run, "save_checkpoint", save)
    with pytest.raises(Exception, match="--resume"):
        _train(store, raw, tiny_model_dir)
    resumed = _train(store, raw, tiny_model_dir, resume=True)
    log = [json.loads(line) for line in (tmp_path / "resumed" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "resume"] == [4]
    assert [r["step"] for r in log if r["event"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert resumed.state.step == straight.state.step == 6
    expected, got = _lora_weights(straight.adapter_dir), _lora_weights(resumed.adapter_dir)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)


@pytest.mark.integration
def test_validation_through_the_harness_keeps_the_best_adapter(store, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GENREC_HOME", str(tmp_path / "home"))  # catalog vectors of the synthetic store
    raw = _config(tmp_path)
    raw["validation"] = {"cases": 4, "every": 2, "patience": 0}
    result = _train(store, raw, tiny_model_dir)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in log if r["event"] == "valid"]
    assert [r["step"] for r in rounds] == [0, 2, 4, 6]
    assert rounds[0]["baselines"]["MostPop"]["cases"] == 4 and "NDCG@10" in rounds[0]
    metrics = read_adapter_metadata(result.adapter_dir)["metrics"]
    assert metrics["validation_cases"] == 4 and metrics["zero_shot"]["cases"] == 4
    assert metrics["adapter"]["NDCG@10"] == result.state.best_metric
    assert result.state.best_step in (2, 4, 6) and len(result.state.validations) == 3
    # the kept adapter is the best round by NDCG@10, ties (frequent on few cases) broken by MRR
    best = max(result.state.validations, key=lambda v: (v["NDCG@10"], v["MRR"]))
    assert result.state.best_step == best["step"]


@pytest.mark.integration
def test_validation_without_the_start_round_still_records_the_baselines(store, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GENREC_HOME", str(tmp_path / "home"))
    raw = _config(tmp_path)
    raw["validation"] = {"cases": 4, "every": 3, "at_start": False}
    result = _train(store, raw, tiny_model_dir)
    rounds = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in rounds if r["event"] == "valid"]
    assert [r["step"] for r in rounds] == [3, 6] and result.state.zero_shot is None
    assert rounds[0]["baselines"]["MostPop"]["cases"] == 4 and "baselines" not in rounds[1]
    assert result.state.baselines["MostPop"]["cases"] == 4


@pytest.mark.integration
def test_training_with_hard_negatives_and_validation_by_reranking(store, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GENREC_HOME", str(tmp_path / "home"))
    raw = _config(tmp_path, max_steps=4, checkpoint_every=4, rank_calibration=0.5)
    raw["sft"] = {"response_items": 1, "max_examples_per_user": 4, "negatives": 3, "negative_pool": 5}
    raw["validation"] = {"cases": 4, "every": 2, "patience": 0, "mode": "rerank", "per_source": 3,
                         "calibration": [0.0, 0.5, 1.0]}
    result = _train(store, raw, tiny_model_dir)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in log if r["event"] == "start")
    assert start["examples"] == result.examples > 0
    header = json.loads((tmp_path / "run" / "sft_examples.jsonl").read_text().splitlines()[0])
    assert header["stats"]["negatives"] == 3 and header["stats"]["negative_sources"] == ["MostPop", "ItemKNN"]
    saved = [json.loads(line) for line in (tmp_path / "run" / "sft_examples.jsonl").read_text().splitlines()[1:]]
    assert all(len(e["negatives"]) == 3 for e in saved)
    # the calibrated loss's title priors (log-likelihoods of each candidate line) are saved with the examples
    assert all(len(e["candidate_priors"]) == 4 and all(p < 0 for p in e["candidate_priors"]) for e in saved)
    assert len({p for e in saved for p in e["candidate_priors"]}) > 4
    rounds = [r for r in log if r["event"] == "valid"]
    assert [r["step"] for r in rounds] == [0, 2, 4] and all(r["cases"] == 4 for r in rounds)
    assert "validity" not in rounds[0]  # re-ranking names catalog items only: nothing generated to validate
    for r in rounds:  # each round chooses its calibration on its cases: the best of the grid (ties: the smaller)
        grid = r["by_calibration"]
        assert sorted(grid) == ["0.0", "0.5", "1.0"] and r["NDCG@10"] == max(grid.values())
        assert r["calibration"] == min(float(a) for a, v in grid.items() if v == max(grid.values()))
    assert result.state.best_step in (2, 4)
    kept = next(r for r in rounds if r["step"] == result.state.best_step)
    assert kept["calibration"] != RecommenderConfig().calibration  # else the read-back below proves nothing
    # until an evaluation tunes it, scored decoding with the adapter uses the calibration its validation chose
    assert RecommenderConfig.for_adapter(str(result.adapter_dir)).calibration == kept["calibration"]
    end = next(r for r in log if r["event"] == "end")
    assert end["response_tokens"] > 0 and 0 <= end["padding_waste"] < 0.5
    with pytest.raises(Exception, match="validation.mode"):
        parse({**raw, "model": str(tiny_model_dir), "validation": {"mode": "rank"}})
    with pytest.raises(GenrecError, match="rank_temperature must be positive"):
        parse({**raw, "model": str(tiny_model_dir), "train": {**raw["train"], "rank_temperature": 0}})
    with pytest.raises(GenrecError, match="checkpoint_every and train.log_every must be positive"):
        parse({**raw, "model": str(tiny_model_dir), "train": {**raw["train"], "checkpoint_every": 0}})
    # a setting added after adapters were recorded leaves their recipes' digests unchanged at its default: this
    # recipe's adapter was recorded with digest 56d964ea91408b97 before rank_temperature existed
    recipe = load(Path(__file__).parents[1] / "training" / "configs" / "amazon-arts-office-rank-calibrated.yaml")
    assert recipe.train.rank_temperature == 1.0 and recipe.hash() == "56d964ea91408b97"
    assert replace(recipe, train=replace(recipe.train, rank_temperature=4.0)).hash() != recipe.hash()
    assert replace(recipe, lora=replace(recipe.lora, dtype="bfloat16")).hash() != recipe.hash()
    assert replace(recipe, train=replace(recipe.train, compile=True)).hash() == recipe.hash()  # the same losses
    for bad in ([], [0.5, 1.5], "high"):
        with pytest.raises(GenrecError, match=r"calibration in \[0, 1\].*got calibration = "):
            parse({**raw, "model": str(tiny_model_dir), "validation": {"mode": "rerank", "calibration": bad}})


def _grads_after_an_eval_pass(model, tokenizer) -> list[torch.Tensor]:
    """LoRA B gradients of one training step taken after a no-grad forward pass in eval mode."""
    ids = tokenizer(['<|im_start|>user\nwhich thing<|im_end|>\n<|im_start|>assistant\n1. "arts thing 3"'],
                    return_tensors="pt")["input_ids"]
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    model.train()
    model.zero_grad()
    batch = sft.collate([sft.TokenizedExample(tuple(ids[0].tolist()), ids.shape[1] - 6)], tokenizer.pad_token_id)
    response_loss(model, batch).backward()
    return [p.grad for name, p in model.named_parameters() if "lora_B" in name]


def test_four_bit_cpu_gradients_survive_an_eval_pass(tiny_model_dir):
    """The bitsandbytes CPU trap: after a no-grad pass, 4-bit layers must still pass gradients down to LoRA."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import has_avx512bf16

    model, tokenizer = load_for_training(tiny_model_dir, LoraSettings(r=4, alpha=8, dropout=0.0),
                                         device=torch.device("cpu"), dtype=torch.bfloat16, load_in_4bit=True)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(layer.support_avx512bf16_for_cpu for layer in layers)
    grads = _grads_after_an_eval_pass(model, tokenizer)
    assert len(grads) == len(layers) and all(g is not None and g.abs().sum() > 0 for g in grads)
    if has_avx512bf16():  # without the guard, the eval pass repacks the weights and lower layers get no gradient
        model, tokenizer = load_for_training(tiny_model_dir, LoraSettings(r=4, alpha=8, dropout=0.0),
                                             device=torch.device("cpu"), dtype=torch.bfloat16, load_in_4bit=True)
        for layer in (m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)):
            layer.support_avx512bf16_for_cpu = True
        grads = _grads_after_an_eval_pass(model, tokenizer)
        assert any(g is None or g.abs().sum() == 0 for g in grads)


@pytest.fixture
def embedder_stub():
    """A deterministic bag-of-characters embedder (rationales only need similarities)."""
    import numpy as np

    class Stub:
        dim = 64
        name = "stub"
        fingerprint = "stub"
        encoded_count = 0

        def encode(self, texts, **_):
            out = np.zeros((len(texts), self.dim), dtype=np.float32)
            for row, text in enumerate(texts):
                for ch in text:
                    out[row, ord(ch) % self.dim] += 1
            return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)

    return Stub()


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "training" / "configs").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_training_configs_parse(path):
    from genrec.evaluation import config as eval_config
    from genrec.training.config import load

    config = load(path)
    assert config.name and (Path(__file__).parents[1] / config.eval_config).is_file()
    eval_config.load(Path(__file__).parents[1] / config.eval_config)
    RecommenderConfig(**config.prompt)
