"""TextSeqRec: a text-aware sequential recommender shared by every platform (ideas from UniSRec, KDD 2022, and
LLM-ESR, NeurIPS 2024; written for genrec).

Item representation. Each item's text (its title; with ``item_text="title+details"`` followed by its category,
attributes and description where the catalog has them: ``TrainData.details``) goes through the frozen sentence
embedder once; the vectors of the fitted catalogs are centred and PCA-whitened to ``text_dim`` dimensions (fixed
at fit time), then a learned mixture-of-experts adaptor (``n_experts`` linear experts with their own bias,
softmax-gated by the text) maps them to the model's ``hidden_size``. Items seen in training also get an ID
embedding added to that; during training the ID part of each item is dropped with probability ``id_dropout`` so
that the text carries the signal on its own, and items never seen in training (new items, a zero-shot platform's
whole catalog) are represented by their text alone.

Sequence model. A causal post-norm transformer (SASRec's layers) over the user's history: every position adds the
item's representation, a position embedding, the embedding of the item's platform and the embedding of the
platform of the *next* item (the platform being predicted; at serving time the target platform). Platforms without
train interactions (and, with probability ``platform_dropout`` in training, any platform) use a shared "unknown
platform" embedding, which is how a platform never seen in training is served. With ``history_scope="cross"`` the
sequences are the merged cross-platform histories; with ``"target"`` they are split per platform.
``history_order="target_last"`` (cross scope only) reorders each cross-platform history as the other platforms'
items first, then the target platform's, each part in time order: at serving the target platform is the case's,
and in training every user sequence gives one sequence per platform P it holds (the other platforms' items, then
P's) whose trained targets are P's items only, so each item is trained once as a target (a platform's first item
too: the other platforms' items are its context).

Training and scoring. Each next-item target is trained with a softmax over its own platform's catalog (the ranking
space of the evaluation), sampled for speed on CPU: the batch's targets of that platform plus ``n_negatives`` of its
items drawn uniformly. Scores are dot products of the final hidden state with the item representations of the
target platform's full catalog. The
windows, the seeded batching, early stopping on validation NDCG@10 and the time budget are SASRec's
(``genrec.pipeline.sources.sasrec``); the budget counts training only, from after the catalogs' texts are embedded
(a cold embedding cache can take minutes), so a fit trains as long with a cold cache as with a warm one.
``add_platform`` makes a catalog embedded after fitting scorable at once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genrec.errors import GenrecError
from genrec.evaluation.metrics import case_metrics
from genrec.pipeline.sources.base import CandidateSource, ItemVocabulary, rank_cases
from genrec.pipeline.sources.content import TextEncoder
from genrec.pipeline.sources.sasrec import _Layer, fit_epochs, train_parts, windows
from genrec.pipeline.types import Context, EvalCase, HistoryScope, Interaction, TrainData, scoped_history

PAD = 0
UNKNOWN_PLATFORM = 0


class _Adaptor(nn.Module):
    """Mixture of linear experts over whitened text vectors (UniSRec's MoE adaptor)."""

    def __init__(self, text_dim: int, hidden: int, experts: int, dropout: float):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(experts, text_dim))
        self.experts = nn.Parameter(torch.randn(experts, text_dim, hidden) * 0.1 * text_dim ** -0.5)
        self.gate = nn.Linear(text_dim, experts, bias=False)
        nn.init.zeros_(self.gate.weight)
        self.dropout = nn.Dropout(dropout)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        text = self.dropout(text)
        gates = torch.softmax(self.gate(text), dim=-1)  # (N, E)
        projected = torch.einsum("ned,edh->neh", text[:, None, :] - self.bias[None], self.experts)
        return (gates[..., None] * projected).sum(dim=1)


class _Network(nn.Module):
    def __init__(self, n_items: int, n_platforms: int, text_dim: int, max_len: int, hidden: int, layers: int,
                 heads: int, inner: int, experts: int, dropout: float, attn_dropout: float, eps: float = 1e-12,
                 init_std: float = 0.02):
        super().__init__()
        self.ids = nn.Embedding(n_items + 1, hidden, padding_idx=PAD)
        self.positions = nn.Embedding(max_len, hidden)
        self.platforms = nn.Embedding(n_platforms + 1, hidden)
        self.next_platforms = nn.Embedding(n_platforms + 1, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(_Layer(hidden, heads, inner, dropout, attn_dropout, eps) for _ in range(layers))
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=init_std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        self.adaptor = _Adaptor(text_dim, hidden, experts, dropout=0.2)  # its own initialisation

    def items(self, text: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
        """Representations of items from their whitened text ``(N, D)`` plus, where ``ids`` is not ``PAD``, their ID
        embedding."""
        reps = self.adaptor(text)
        if ids is not None:
            reps = reps + self.ids(ids)
        return reps

    def forward(self, reps: torch.Tensor, seq: torch.Tensor, platform: torch.Tensor, next_platform: torch.Tensor,
                rows: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(N, H)`` at the ``rows`` positions of right-padded sequences; ``reps`` holds each
        position's item representation ``(B, L, H)``."""
        length = seq.shape[1]
        x = reps + self.positions(torch.arange(length)) + self.platforms(platform) + self.next_platforms(next_platform)
        x = self.dropout(self.norm(x))
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        mask = (causal & (seq != PAD)[:, None, :])[:, None]
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, rows if i == len(self.layers) - 1 else None)
        return x


class TextSeqRec(CandidateSource):
    """Text-aware sequential candidate source; see the module docstring.

    ``encoder`` embeds item texts (default: ``genrec.embedding.Embedder``, with its catalog-embedding cache); it is
    needed to fit and to ``add_platform``, not to score a loaded source's fitted catalogs.
    """

    kind = "textseq"
    adds_platforms = True
    OPTIONS = ("max_len", "hidden_size", "n_layers", "n_heads", "inner_size", "text_dim", "n_experts", "dropout",
               "attn_dropout", "id_dropout", "platform_dropout", "use_ids", "n_negatives", "lr", "weight_decay",
               "batch_size", "max_epochs", "patience", "time_budget_s", "seed", "history_order", "item_text")
    ORDERS = ("time", "target_last")
    TEXTS = ("title", "title+details")

    def __init__(
        self,
        encoder: TextEncoder | None = None,
        history_scope: HistoryScope = "cross",
        *,
        max_len: int = 50,
        hidden_size: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        inner_size: int = 256,
        text_dim: int = 128,
        n_experts: int = 4,
        dropout: float = 0.5,
        attn_dropout: float = 0.5,
        id_dropout: float = 0.5,
        platform_dropout: float = 0.1,
        use_ids: bool = True,
        n_negatives: int = 2048,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        batch_size: int = 1024,
        max_epochs: int = 50,
        patience: int = 3,
        time_budget_s: float | None = 780.0,
        seed: int = 2020,
        history_order: str = "time",
        item_text: str = "title",
        progress: bool = True,
    ) -> None:
        if history_order not in self.ORDERS:
            raise GenrecError(f"TextSeq: history_order must be one of {', '.join(self.ORDERS)}, got {history_order!r}")
        if item_text not in self.TEXTS:
            raise GenrecError(f"TextSeq: item_text must be one of {', '.join(self.TEXTS)}, got {item_text!r}")
        self.name = "TextSeq"
        self.history_order = history_order
        self.item_text = item_text
        self.history_scope = history_scope
        self._encoder = encoder
        self.max_len = max_len
        self.hidden_size = hidden_size
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.inner_size = inner_size
        self.text_dim = text_dim
        self.n_experts = n_experts
        self.dropout = dropout
        self.attn_dropout = attn_dropout
        self.id_dropout = id_dropout
        self.platform_dropout = platform_dropout
        self.use_ids = use_ids
        self.n_negatives = n_negatives
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.time_budget_s = time_budget_s
        self.seed = seed
        self.progress = progress
        self.log: list[dict[str, float]] = []
        self.info: dict = {}
        self._vocab: ItemVocabulary | None = None
        self._net: _Network | None = None
        self._text = torch.zeros(0, 0)  # whitened text of vocabulary rows (row 0: padding)
        self._seen = torch.zeros(0, dtype=torch.bool)  # vocabulary rows with an ID embedding
        self._item_platform = torch.zeros(0, dtype=torch.long)  # vocabulary row -> platform index (0: unknown)
        self._platforms: dict[str, int] = {}  # platforms with train interactions -> 1..P
        self._mean = np.zeros(0, dtype=np.float32)
        self._whiten = np.zeros((0, 0), dtype=np.float32)
        self._added: dict[str, tuple[list[str], torch.Tensor]] = {}  # platforms added after fitting
        self._cache: dict[str, torch.Tensor] = {}  # platform -> item representations (eval mode)

    @property
    def encoder(self) -> TextEncoder:
        if self._encoder is None:
            from genrec.embedding import Embedder

            self._encoder = Embedder()
        return self._encoder

    # ------------------------------------------------------------------------------------------------ text

    def _embed(self, platform: str, items: Sequence[str], titles: Mapping[tuple[str, str], str],
               details: Mapping[tuple[str, str], str] | None = None) -> np.ndarray:
        """Unit sentence embeddings of ``items``' texts: the title, and with ``item_text="title+details"`` the
        item's other text after it (through the catalog-embedding cache when the encoder is genrec's embedder); an
        item without a title is an error."""
        texts = [titles.get((platform, item)) or "" for item in items]
        missing = [item for item, text in zip(items, texts, strict=True) if not text.strip()]
        if missing:
            raise GenrecError(f"{self.name}: {len(missing)} item(s) of platform {platform!r} have no text (title) to "
                              f"represent them, e.g. {', '.join(map(repr, missing[:3]))}")
        if not items:
            return np.zeros((0, 0), dtype=np.float32)
        if self.item_text == "title+details" and details:
            texts = [f"{text}. {extra}" if (extra := details.get((platform, item))) else text
                     for item, text in zip(items, texts, strict=True)]
        encoder = self.encoder
        if hasattr(encoder, "fingerprint") and hasattr(encoder, "model"):
            from genrec.grounding import CatalogIndex

            vectors = CatalogIndex.build(platform, list(items), texts, encoder).vectors()
        else:
            vectors = encoder.encode(texts)
        vectors = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0)

    def _whitened(self, vectors: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((vectors - self._mean) @ self._whiten).astype(np.float32))

    # ------------------------------------------------------------------------------------------- training

    def fit(self, train: TrainData, valid_cases: Sequence[EvalCase] | None = None) -> None:
        started = time.perf_counter()
        if not train.catalogs:
            raise GenrecError(f"{self.name}: no catalog to fit on")
        vocab = ItemVocabulary(train.catalogs, offset=1)
        vectors = np.concatenate([self._embed(p, items, train.titles, train.details)
                                  for p, items in train.catalogs.items() if items])
        # PCA whitening of the fitted catalogs' text, fixed from here on (new platforms reuse it)
        self._mean = vectors.mean(axis=0)
        centred = vectors - self._mean
        _, singular, basis = np.linalg.svd(centred[:: max(1, len(centred) // 20000)], full_matrices=False)
        dim = min(self.text_dim, len(singular))
        scale = singular[:dim] / np.sqrt(max(len(centred[:: max(1, len(centred) // 20000)]) - 1, 1))
        self._whiten = (basis[:dim].T / np.maximum(scale, 1e-6)).astype(np.float32)
        text = torch.zeros(vocab.size, dim)
        text[1:] = self._whitened(vectors)
        embed_seconds = time.perf_counter() - started

        parts, trained = self._train_sequences(train.sequences.values(), vocab)
        counts = np.bincount([i for part in parts for i in part], minlength=vocab.size)
        platforms = [p for p in train.catalogs if counts[vocab.block(p)].sum() > 0]
        self._platforms = {p: i + 1 for i, p in enumerate(platforms)}
        item_platform = torch.zeros(vocab.size, dtype=torch.long)
        for p, index in self._platforms.items():
            item_platform[vocab.block(p)] = index
        self.catalogs, self._vocab, self._text = train.catalogs, vocab, text
        self._seen = torch.from_numpy(counts > 0) if self.use_ids else torch.zeros(vocab.size, dtype=torch.bool)
        self._seen[PAD] = False
        self._item_platform = item_platform
        self._added, self._cache = {}, {}
        inputs, targets = windows(parts, self.max_len, untargeted_input=False)
        if trained is not None:  # only the marked targets are trained; windows left with none are dropped
            _, marks = windows(trained, self.max_len, untargeted_input=False)
            targets = torch.where(marks == 1, targets, PAD)
            kept = (targets != PAD).any(dim=1)
            inputs, targets = inputs[kept], targets[kept]
        if len(inputs) == 0:
            raise GenrecError(f"{self.name} needs at least one train sequence with two items")

        budget_end = None if self.time_budget_s is None else time.perf_counter() + self.time_budget_s
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self._net = net = self._network(len(self._platforms), dim)
            optimiser = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            self.log, stopped, best, best_epoch = fit_epochs(
                net, lambda deadline: self._train_epoch(net, optimiser, inputs, targets, deadline),
                (lambda: self._validate(valid_cases)) if valid_cases else None, name=self.name,
                max_epochs=self.max_epochs, patience=self.patience, started=started, budget_end=budget_end,
                progress=self.progress, after_epoch=lambda: setattr(self, "_cache", {}))
        net.eval()
        self._cache = {}
        self.info = {"epochs": round(sum(row["fraction"] for row in self.log), 3), "stopped": stopped,
                     "train_seconds": round(time.perf_counter() - started, 1), "embed_seconds": round(embed_seconds, 1),
                     "train_windows": len(inputs), "items_with_id": int(self._seen.sum()), "text_dim": dim,
                     "platforms_trained": platforms}
        if valid_cases:
            self.info.update(best_epoch=best_epoch, valid_ndcg10=best)

    def _network(self, n_platforms: int, text_dim: int) -> _Network:
        return _Network(self._vocab.size - 1, n_platforms, text_dim, self.max_len, self.hidden_size, self.n_layers,
                        self.n_heads, self.inner_size, self.n_experts, self.dropout, self.attn_dropout)

    def _validate(self, cases: Sequence[EvalCase]) -> float:
        return float(case_metrics(rank_cases(self, cases, self.catalogs), ks=(10,))["NDCG@10"].mean())

    def _train_sequences(self, sequences, vocab: ItemVocabulary) -> tuple[list[list[int]], list[list[int]] | None]:
        """The encoded train sequences and, for ``history_order="target_last"``, a parallel mark per position: 1
        where its item is a trained target, 2 where it is context only (None: every target is trained)."""
        if self.history_order == "time" or self.history_scope != "cross":
            return [vocab.encode(part) for seq in sequences for part in train_parts(seq, self.history_scope)], None
        parts, marks = [], []
        for seq in sequences:
            for platform in dict.fromkeys(x.platform for x in seq):
                pairs = [(i, 1 if x.platform == platform else 2) for x in target_last(seq, platform)
                         if (i := vocab.get(x)) is not None]
                parts.append([i for i, _ in pairs])
                marks.append([m for _, m in pairs])
        return parts, marks

    def _history(self, case: Context) -> list[Interaction]:
        history = scoped_history(case, self.history_scope)
        if self.history_order == "target_last":
            history = target_last(history, case.platform)
        return list(history)

    def _train_epoch(self, net: _Network, optimiser: torch.optim.Optimizer, inputs: torch.Tensor,
                     targets: torch.Tensor, deadline: float | None) -> tuple[float, float]:
        """One pass over the windows in a seeded random order, in batches of about ``batch_size`` targets; stops
        before a batch once ``deadline`` has passed. Returns the mean loss and the share of targets trained."""
        net.train()
        order = torch.randperm(len(inputs)).numpy()
        per_window = np.cumsum((targets[order] != PAD).sum(dim=1).numpy())
        cuts = np.searchsorted(per_window, np.arange(self.batch_size, per_window[-1], self.batch_size)) + 1
        total, count = 0.0, 0
        blocks = {index: self._vocab.block(p) for p, index in self._platforms.items()}
        for batch in np.split(order, np.unique(cuts)):
            if len(batch) == 0:
                continue
            if deadline is not None and time.perf_counter() >= deadline:
                break
            width = int((inputs[batch] != PAD).sum(dim=1).max())
            seq, tgt = inputs[batch, :width], targets[batch, :width]
            keep = tgt != PAD
            wanted = tgt[keep]
            target_platform = self._item_platform[wanted]
            # the softmax of each target runs over its platform's catalog: the batch's targets of that platform
            # and ``n_negatives`` items of it drawn uniformly (all of it when the catalog is that small)
            candidates = {}
            for index, block in blocks.items():
                mine = target_platform == index
                if mine.any():
                    size = block.stop - block.start
                    drawn = (torch.arange(block.start, block.stop) if size <= self.n_negatives
                             else torch.randint(block.start, block.stop, (self.n_negatives,)))
                    candidates[index] = (mine, torch.unique(torch.cat([wanted[mine], drawn])))
            needed = torch.unique(torch.cat([seq.flatten(), *(c for _, c in candidates.values())]))
            where = torch.zeros(self._vocab.size, dtype=torch.long)
            where[needed] = torch.arange(len(needed))
            with_id = self._seen[needed]
            if self.id_dropout > 0:
                with_id &= torch.rand(len(needed)) >= self.id_dropout
            reps = net.items(self._text[needed], torch.where(with_id, needed, PAD))
            platform, next_platform = self._item_platform[seq], self._item_platform[tgt]
            if self.platform_dropout > 0:
                platform = platform.masked_fill(torch.rand(platform.shape) < self.platform_dropout, UNKNOWN_PLATFORM)
                next_platform = next_platform.masked_fill(torch.rand(next_platform.shape) < self.platform_dropout,
                                                          UNKNOWN_PLATFORM)
            hidden = net(reps[where[seq]], seq, platform, next_platform, keep)
            loss = torch.zeros(())
            for mine, items in candidates.values():
                logits = hidden[mine] @ reps[where[items]].T
                loss = loss + F.cross_entropy(logits, torch.searchsorted(items, wanted[mine]), reduction="sum")
            n = int(keep.sum())
            loss = loss / n
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * n
            count += n
        return total / max(count, 1), count / int(per_window[-1])

    # -------------------------------------------------------------------------------------------- scoring

    def add_platform(self, platform: str, items: Sequence[str], titles: Mapping[tuple[str, str], str],
                     details: Mapping[tuple[str, str], str] | None = None) -> None:
        """Make a catalog that was not fitted scorable (its items' text is all it needs): ``titles`` maps
        ``(platform, item_id)`` to the item's title, ``details`` to its other text (read with
        ``item_text="title+details"``)."""
        if self._net is None:
            raise RuntimeError("fit() first")
        if self._catalog_known(platform):
            raise GenrecError(f"{self.name}: platform {platform!r} is already known")
        if not items:
            raise GenrecError(f"{self.name}: platform {platform!r} has an empty catalog")
        text = self._whitened(self._embed(platform, items, titles, details))
        self._extend_catalogs(platform, items)
        self._added[platform] = (list(items), text)
        self._cache.pop(platform, None)

    def _catalog_known(self, platform: str) -> bool:
        return super()._catalog_known(platform) or platform in self._added

    def _catalog(self, platform: str) -> list[str]:
        if platform in self._added:
            return self._added[platform][0]
        return super()._catalog(platform)

    def no_preference(self, context: Context) -> str | None:
        """Every score is 0 when the history holds no item of the fitted catalogs that the scope reads."""
        if self._vocab is None or self._vocab.encode(scoped_history(context, self.history_scope)):
            return None
        if not context.history:
            return "the history is empty"
        if self.history_scope == "target" and not context.history_on(context.platform):
            return (f"the history has no {context.platform!r} item, and this source reads only the target "
                    "platform's (history_scope 'target')")
        return (f"none of the history's {len(context.history)} item(s) is in the catalogs it was fitted on "
                f"({', '.join(self._vocab.platforms)})")

    def _representations(self, platform: str) -> torch.Tensor:
        if platform not in self._cache:
            if platform in self._added:
                self._cache[platform] = self._net.items(self._added[platform][1], None)
            else:
                self._catalog(platform)  # a clear error for an unknown platform
                block = self._vocab.block(platform)
                ids = torch.arange(block.start, block.stop)
                self._cache[platform] = self._net.items(self._text[block], torch.where(self._seen[block], ids, PAD))
        return self._cache[platform]

    @torch.no_grad()
    def score(self, cases: Sequence[Context], platform: str) -> np.ndarray:
        if self._vocab is None or self._net is None:
            raise RuntimeError("fit() first")
        was_training = self._net.training
        self._net.eval()
        try:
            items = self._representations(platform)
            if not cases:
                return np.zeros((0, len(items)), dtype=np.float32)
            seqs = [self._vocab.encode(self._history(case))[-self.max_len :] for case in cases]
            lengths = torch.tensor([max(len(s), 1) for s in seqs])
            width = int(lengths.max())
            seq = torch.tensor([s + [PAD] * (width - len(s)) for s in seqs], dtype=torch.long)
            last = torch.zeros_like(seq, dtype=torch.bool)
            last[torch.arange(len(seqs)), lengths - 1] = True
            next_platform = torch.full_like(seq, self._platforms.get(platform, UNKNOWN_PLATFORM))
            reps = self._net.items(self._text[seq.flatten()], torch.where(self._seen[seq.flatten()], seq.flatten(),
                                                                           PAD)).view(*seq.shape, -1)
            hidden = self._net(reps, seq, self._item_platform[seq], next_platform, last)
            scores = (hidden @ items.T).numpy()
            scores[[i for i, s in enumerate(seqs) if not s]] = 0.0  # no usable history: no preference
            return scores
        finally:
            self._net.train(was_training)

    # ------------------------------------------------------------------------------------------ save / load

    def state(self) -> dict[str, Any]:
        if self._net is None:
            raise RuntimeError("fit() first")
        return {"vocab": self._vocab, "weights": {k: v.clone() for k, v in self._net.state_dict().items()},
                "text": self._text, "seen": self._seen, "item_platform": self._item_platform,
                "platforms": self._platforms, "mean": self._mean, "whiten": self._whiten, "added": self._added,
                "log": self.log, "info": self.info}

    def restore(self, state: dict[str, Any]) -> None:
        self._vocab, self._text, self._seen = state["vocab"], state["text"], state["seen"]
        self._item_platform, self._platforms = state["item_platform"], state["platforms"]
        self._mean, self._whiten, self._added = state["mean"], state["whiten"], state["added"]
        self.log, self.info, self._cache = state["log"], state["info"], {}
        self._net = self._network(len(self._platforms), self._text.shape[1])
        self._net.load_state_dict(state["weights"])
        self._net.eval()


def target_last(history: Sequence[Interaction], platform: str) -> list[Interaction]:
    """``history`` with the other platforms' items first and ``platform``'s last, each part in time order."""
    return [x for x in history if x.platform != platform] + [x for x in history if x.platform == platform]
