"""Hard negatives for the ranking objective: what the re-ranker will have to tell the true next item apart from.

At inference a pipeline's LLM stage ranks the pooled top items of classic sources (``genrec.pipeline``).
Next-item SFT only raises the likelihood of the true item; it never shows the model the popular or co-consumed
items it must rank below it. For each SFT example this module asks the same harness methods, fitted on the same
training data, for their top ``negative_pool`` items of the target platform given the example's history, and draws
``negatives`` of them (seeded), leaving out the example's answer items and the user's own items on that platform.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from tqdm.auto import tqdm

from genrec.pipeline.pool import candidate_pool
from genrec.pipeline.sources.base import Method
from genrec.pipeline.types import EvalCase, TrainData
from genrec.training.sft import SFTConfig, SFTData, SFTExample, filter_platforms


def example_case(example: SFTExample, sequences: dict) -> EvalCase:
    """The harness case an example stands for: its user's events before the cut-off, its first answer item."""
    history = tuple(x for x in sequences[example.user_id] if x.timestamp < example.cutoff)
    return EvalCase(user_id=example.user_id, platform=example.platform, history=history, target=example.targets[0],
                    split="train", timestamp=example.cutoff)


def add_negatives(data: SFTData, train: TrainData, sources: Sequence[Method], config: SFTConfig, *, seed: int = 0,
                  progress: bool = False, batch_size: int = 256) -> SFTData:
    """``data`` with ``config.negatives`` hard negatives per example (``sources`` are fitted here on ``train``);
    examples whose pool holds fewer candidates are dropped (counted in the stats)."""
    if config.negatives < 1:
        return data
    if not sources:
        raise ValueError("hard negatives need at least one negative source")
    for source in sources:
        source.fit(train)
    sequences = filter_platforms(train, config.exclude_platforms)
    rng = random.Random(seed)
    chosen: dict[int, tuple[str, ...]] = {}
    by_platform: dict[str, list[int]] = {}
    for i, example in enumerate(data.examples):
        by_platform.setdefault(example.platform, []).append(i)
    bar = tqdm(total=len(data.examples), desc="hard negatives", unit="example", disable=not progress)
    for platform in sorted(by_platform):
        catalog = train.catalogs[platform]
        rows = by_platform[platform]
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            cases = [example_case(data.examples[i], sequences) for i in chunk]
            scores = [source.score(cases, platform) for source in sources]
            for row, (i, case) in enumerate(zip(chunk, cases, strict=True)):
                pool = _pool(case, data.examples[i], [s[row] for s in scores], catalog, train, config.negative_pool)
                if len(pool) >= config.negatives:
                    chosen[i] = tuple(rng.sample(pool, config.negatives))
            bar.update(len(chunk))
    bar.close()
    examples = []
    for i, example in enumerate(data.examples):
        if i in chosen:
            titles = [train.titles[(example.platform, item)] for item in (example.targets[0], *chosen[i])]
            examples.append(replace(example, negatives=chosen[i], candidate_titles=tuple(titles)))
    stats = {**data.stats, "examples": len(examples), "negatives": config.negatives,
             "negative_sources": [s.name for s in sources], "negative_pool": config.negative_pool,
             "dropped_few_negatives": len(data.examples) - len(examples)}
    return SFTData(examples, stats)


def _pool(case: EvalCase, example: SFTExample, rows: Sequence[np.ndarray], catalog: Sequence[str],
          train: TrainData, size: int) -> list[str]:
    """The union of every source's top ``size`` titled items, without the answer (nor an item sharing its title)
    and the user's own items."""
    skip = case.owned() | set(example.targets)
    titles = {title for item in example.targets if (title := train.titles.get((case.platform, item)))}

    def keep(item: str) -> bool:
        title = train.titles.get((case.platform, item))
        return bool(title) and title not in titles

    return candidate_pool(dict(enumerate(rows)), catalog, skip, size, keep=keep).items
