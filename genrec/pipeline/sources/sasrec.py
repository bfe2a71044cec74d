"""SASRec (Kang & McAuley 2018) as configured in RecBole 1.2: causal self-attention over the last ``max_len``
items, item embeddings shared by the input and the output layer, cross-entropy over the whole item vocabulary.

Items of every platform share one vocabulary, so a cross-platform history is one sequence. Scores for a case are
the logits restricted to its target platform's catalog.

Every next-item target of every train sequence is trained once per epoch. RecBole builds one padded input per
target (its sequence augmentation); here a sequence is cut into windows of ``max_len`` inputs trained at all of
their new positions at once, which costs about ``max_len`` times less. By default windows do not overlap (as in
the original SASRec), so a target's context is the part of its window before it; ``window_stride < max_len``
overlaps windows so that every target keeps at least ``max_len - window_stride + 1`` items of context, and
``window_stride=1`` is exactly RecBole's scheme. Batches hold about ``batch_size`` targets: 512 by default
rather than RecBole's 2048, which on movielens-latest-small reaches the same validation NDCG@10 in far fewer
epochs (the cost of an epoch is about the same).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from genrec.evaluation.metrics import case_metrics
from genrec.pipeline.sources.base import CandidateSource, ItemVocabulary, rank_cases, regrown
from genrec.pipeline.types import Context, EvalCase, HistoryScope, Interaction, TrainData, scoped_history

PAD = 0


class _Layer(nn.Module):
    """A post-norm transformer layer laid out as RecBole's (no dropout inside the feed-forward block)."""

    def __init__(self, hidden: int, heads: int, inner: int, dropout: float, attn_dropout: float, eps: float):
        super().__init__()
        self.heads = heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden, eps=eps)
        self.ff_in = nn.Linear(hidden, inner)
        self.ff_out = nn.Linear(inner, hidden)
        self.norm2 = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Next states of ``x`` ``(B, L, H)``; with ``rows`` (a ``(B, L)`` boolean mask) only those query positions
        are computed, as ``(N, H)``: the last layer needs no state that no loss or score reads."""
        batch, length, hidden = x.shape
        width = hidden // self.heads
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, width).permute(2, 0, 3, 1, 4)
        p = self.attn_dropout if self.training else 0.0
        if rows is None:
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
            attended = attended.transpose(1, 2).reshape(batch, length, hidden)
            residual = x
        else:
            which, where = rows.nonzero(as_tuple=True)  # window and position of each computed query
            q = q[which, :, where].unsqueeze(2)  # (N, heads, 1, width) against the keys of its own window
            attended = F.scaled_dot_product_attention(q, k[which], v[which], attn_mask=mask[which, :, where, None],
                                                      dropout_p=p)
            attended = attended.reshape(len(which), hidden)
            residual = x[which, where]
        x = self.norm1(residual + self.dropout(self.proj(attended)))
        return self.norm2(x + self.dropout(self.ff_out(F.gelu(self.ff_in(x)))))


class _Network(nn.Module):
    """Item + position embeddings into a causal post-norm transformer; the item table is also the output layer."""

    def __init__(
        self,
        n_items: int,
        max_len: int,
        hidden: int,
        layers: int,
        heads: int,
        inner: int,
        dropout: float,
        attn_dropout: float,
        eps: float = 1e-12,
        init_std: float = 0.02,
    ):
        super().__init__()
        self.items = nn.Embedding(n_items + 1, hidden, padding_idx=PAD)
        self.positions = nn.Embedding(max_len, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(_Layer(hidden, heads, inner, dropout, attn_dropout, eps) for _ in range(layers))
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=init_std)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, seq: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states ``(B, L, H)`` of left-aligned, right-padded item sequences ``(B, L)``; with ``rows`` (a
        ``(B, L)`` boolean mask) only the states of those positions, ``(N, H)`` in row-major order."""
        length = seq.shape[1]
        x = self.items(seq) + self.positions(torch.arange(length, device=seq.device))
        x = self.dropout(self.norm(x))
        causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()
        mask = (causal & (seq != PAD)[:, None, :])[:, None]  # (B, 1, L, L): query row may see key column
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, rows if i == len(self.layers) - 1 else None)
        return x[rows] if rows is not None and not self.layers else x

    def logits(self, hidden: torch.Tensor, items: slice | None = None) -> torch.Tensor:
        """Scores of real items (vocabulary rows 1..n, or the given slice of them) for each hidden state."""
        table = self.items.weight[1:] if items is None else self.items.weight[items]
        return hidden @ table.T


class SASRec(CandidateSource):
    """Sequential recommender with self-attention; see the module docstring for the training scheme.

    With ``history_scope="target"`` the train sequences are split per platform and a case's input is its
    target-platform history only; with ``"cross"`` both are the merged cross-platform sequences.
    Early stopping keeps the weights of the epoch with the best validation NDCG@10 (full ranking, history
    excluded) and stops after ``patience`` epochs without improvement, or once ``time_budget_s`` is spent.
    ``torch.set_num_threads`` is left as the caller set it.
    """

    kind = "sasrec"
    OPTIONS = ("max_len", "hidden_size", "n_layers", "n_heads", "inner_size", "dropout", "attn_dropout", "lr",
               "batch_size", "max_epochs", "patience", "window_stride", "time_budget_s", "fine_tune_passes",
               "refresh_windows", "seed")

    def __init__(
        self,
        history_scope: HistoryScope = "cross",
        *,
        max_len: int = 50,
        hidden_size: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        inner_size: int = 256,
        dropout: float = 0.5,
        attn_dropout: float = 0.5,
        lr: float = 1e-3,
        batch_size: int = 512,
        max_epochs: int = 50,
        patience: int = 5,
        window_stride: int | None = None,
        time_budget_s: float | None = None,
        fine_tune_passes: int = 2,
        refresh_windows: str = "all",
        seed: int = 2020,
        progress: bool = True,
    ) -> None:
        window_stride = max_len if window_stride is None else window_stride
        if fine_tune_passes < 1:
            raise ValueError("fine_tune_passes must be at least 1")
        if refresh_windows not in ("new", "all"):
            raise ValueError(f"refresh_windows must be 'new' or 'all', got {refresh_windows!r}")
        if not 1 <= window_stride <= max_len:
            raise ValueError("window_stride must be in [1, max_len]")
        self.name = "SASRec"
        self.history_scope = history_scope
        self.max_len = max_len
        self.hidden_size = hidden_size
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.inner_size = inner_size
        self.dropout = dropout
        self.attn_dropout = attn_dropout
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.window_stride = window_stride
        self.time_budget_s = time_budget_s
        self.fine_tune_passes = fine_tune_passes  # a refresh's fine-tune sees its windows at most this often
        self.refresh_windows = refresh_windows  # what a refresh fine-tunes on: see ``refresh``
        self.seed = seed
        self.progress = progress
        self.log: list[dict[str, float]] = []  # per epoch: epoch, loss, fraction trained, valid_ndcg10, seconds
        self.info: dict = {}  # how the last fit went: epochs, why it stopped, seconds, best validation
        self._vocab: ItemVocabulary | None = None
        self._net: _Network | None = None

    # ------------------------------------------------------------------------------------------- training

    def fit(self, train: TrainData, valid_cases: Sequence[EvalCase] | None = None) -> None:
        self.catalogs = train.catalogs
        self._vocab = ItemVocabulary(train.catalogs, offset=1)
        inputs, targets = self._windows(train.sequences.values())
        if len(inputs) == 0:
            raise ValueError("SASRec needs at least one train sequence with two items")
        started = time.perf_counter()
        # training stops early enough to leave time for one more validation (the last one's duration)
        budget_end = None if self.time_budget_s is None else started + self.time_budget_s
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self._net = net = _Network(
                self._vocab.size - 1,
                self.max_len,
                self.hidden_size,
                self.n_layers,
                self.n_heads,
                self.inner_size,
                self.dropout,
                self.attn_dropout,
            )
            optimiser = torch.optim.Adam(net.parameters(), lr=self.lr)
            self.log, stopped, best, best_epoch = fit_epochs(
                net, lambda deadline: self._train_epoch(net, optimiser, inputs, targets, deadline),
                (lambda: self._validate(valid_cases, train.catalogs)) if valid_cases else None,
                name="SASRec", max_epochs=self.max_epochs, patience=self.patience, started=started,
                budget_end=budget_end, progress=self.progress)
        net.eval()
        self.info = {
            "epochs": round(sum(row["fraction"] for row in self.log), 3),
            "stopped": stopped,
            "train_seconds": round(time.perf_counter() - started, 1),
            "window_stride": self.window_stride,
            "train_windows": len(inputs),
        }
        if valid_cases:
            self.info.update(best_epoch=best_epoch, valid_ndcg10=best)

    def grow(self, catalogs: dict[str, list[str]]) -> bool:
        """New items get fresh embedding rows (initialised as at the start of training); known ones keep theirs."""
        if self._vocab is None or self._net is None:
            return False
        vocab, to, from_ = regrown(self._vocab, catalogs)
        if vocab.index != self._vocab.index:
            old = self._net.items.weight.data
            table = torch.empty(vocab.size, old.shape[1]).normal_(std=0.02, generator=torch.Generator().manual_seed(
                self.seed))
            table[PAD] = 0.0
            table[torch.from_numpy(to)] = old[torch.from_numpy(from_)]
            self._net.items = nn.Embedding.from_pretrained(table, freeze=False, padding_idx=PAD)
        self.catalogs, self._vocab = catalogs, vocab
        return True

    def refresh(self, train: TrainData, new: Mapping[str, Sequence[Interaction]], *, steps: int) -> str:
        """Fine-tune from the last weights for at most ``steps`` batches and ``fine_tune_passes`` passes.

        ``refresh_windows="all"`` (the default): over every user's windows, as a fit trains, warm-started from the
        last weights: a partial refit, closest to a refit. ``"new"``: over the windows that end at the newest
        interactions of users with new ones (so every new interaction is a target), mixed with as many windows of
        other users, a replay of what the model already knew so it does not drift towards the newest users: about
        ten times cheaper, further from a refit (``benchmarks/bench_refresh.py`` measures both)."""
        if not self.grow(train.catalogs):
            self.fit(train)
            return "refit"
        fresh = [u for u in new if new[u] and u in train.sequences]
        if not fresh or steps < 1:
            return "unchanged"
        if self.refresh_windows == "all":
            inputs, targets = self._windows(train.sequences.values())
        else:
            rng = np.random.default_rng(self.seed)
            others = [u for u in train.sequences if u not in new]
            replay = list(rng.choice(others, size=min(len(others), len(fresh)), replace=False)) if others else []
            inputs, targets = self._windows([train.sequences[user] for user in [*fresh, *replay]],
                                            last=self.max_len + 1)
        if len(inputs) == 0:
            return "unchanged"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            optimiser = torch.optim.Adam(self._net.parameters(), lr=self.lr)
            per_pass = max(1, -(-int((targets != PAD).sum()) // self.batch_size))  # about: batches hold ~batch_size
            for _ in range(min(self.fine_tune_passes, -(-steps // per_pass))):
                self._train_epoch(self._net, optimiser, inputs, targets, max_batches=steps)
                steps -= per_pass
        self._net.eval()
        return "fine-tuned"

    def _windows(self, sequences, last: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Training windows of ``sequences`` (each split by history scope; ``last``: only its last items)."""
        return windows([self._vocab.encode(part[-last:] if last else part) for seq in sequences
                        for part in train_parts(seq, self.history_scope)], self.max_len, self.window_stride)

    def _validate(self, cases: Sequence[EvalCase], catalogs: dict[str, list[str]]) -> float:
        """Mean NDCG@10 over ``cases`` (full ranking, history excluded)."""
        return float(case_metrics(rank_cases(self, cases, catalogs), ks=(10,))["NDCG@10"].mean())

    def _train_epoch(
        self,
        net: _Network,
        optimiser: torch.optim.Optimizer,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        deadline: float | None = None,
        max_batches: int | None = None,
    ) -> tuple[float, float]:
        """One pass over the windows in a seeded random order, in batches of about ``batch_size`` targets.

        Stops before a batch once ``time.perf_counter()`` passes ``deadline`` (an epoch can take far longer than
        a budget) or after ``max_batches``. Returns the mean loss and the share of the epoch's targets trained."""
        net.train()
        order = torch.randperm(len(inputs)).numpy()
        per_window = np.cumsum((targets[order] != PAD).sum(dim=1).numpy())
        cuts = np.searchsorted(per_window, np.arange(self.batch_size, per_window[-1], self.batch_size)) + 1
        total, count = 0.0, 0
        for batch in np.split(order, np.unique(cuts)):
            if len(batch) == 0:
                continue
            if deadline is not None and time.perf_counter() >= deadline:
                break
            if max_batches is not None and max_batches <= 0:
                break
            max_batches = None if max_batches is None else max_batches - 1
            width = int((inputs[batch] != PAD).sum(dim=1).max())  # drop all-padding columns
            seq, tgt = inputs[batch, :width], targets[batch, :width]
            keep = tgt != PAD
            hidden = net(seq, keep)
            loss = F.cross_entropy(net.logits(hidden), tgt[keep] - 1)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * int(keep.sum())
            count += int(keep.sum())
        return total / max(count, 1), count / int(per_window[-1])

    # -------------------------------------------------------------------------------------------- scoring

    @torch.no_grad()
    def score(self, cases: Sequence[Context], platform: str) -> np.ndarray:
        if self._vocab is None or self._net is None:
            raise RuntimeError("fit() first")
        block = self._vocab.block(platform)
        if not cases:
            return np.zeros((0, block.stop - block.start), dtype=np.float32)
        was_training = self._net.training
        self._net.eval()
        seqs = [self._vocab.encode(scoped_history(case, self.history_scope))[-self.max_len :] for case in cases]
        lengths = torch.tensor([max(len(s), 1) for s in seqs])
        width = int(lengths.max())
        batch = torch.tensor([s + [PAD] * (width - len(s)) for s in seqs], dtype=torch.long)
        last = torch.zeros_like(batch, dtype=torch.bool)
        last[torch.arange(len(seqs)), lengths - 1] = True
        hidden = self._net(batch, last)
        scores = self._net.logits(hidden, block).numpy()
        scores[[i for i, s in enumerate(seqs) if not s]] = 0.0  # no usable history: no preference
        self._net.train(was_training)
        return scores

    # ------------------------------------------------------------------------------------------ save / load

    def state(self) -> dict[str, Any]:
        if self._net is None:
            raise RuntimeError("fit() first")
        return {"vocab": self._vocab, "weights": {k: v.clone() for k, v in self._net.state_dict().items()},
                "log": self.log}

    def restore(self, state: dict[str, Any]) -> None:
        self._vocab, self.log = state["vocab"], state["log"]
        self._net = _Network(self._vocab.size - 1, self.max_len, self.hidden_size, self.n_layers, self.n_heads,
                             self.inner_size, self.dropout, self.attn_dropout)
        self._net.load_state_dict(state["weights"])
        self._net.eval()


def fit_epochs(net: nn.Module, train_epoch: Callable[[float | None], tuple[float, float]],
               validate: Callable[[], float] | None, *, name: str, max_epochs: int, patience: int, started: float,
               budget_end: float | None, progress: bool, after_epoch: Callable[[], None] | None = None,
               ) -> tuple[list[dict], str, float, int]:
    """Train epoch by epoch (``train_epoch(deadline) -> (loss, share of the epoch done)``), validating after each
    (``validate() -> NDCG@10``; None: no validation) and keeping the best weights, which are restored at the end.
    Stops after ``patience`` epochs without improvement, at ``max_epochs``, or once the time budget is spent:
    training stops early enough to leave time for one more validation (the last one's duration). Returns the
    per-epoch log, why it stopped, the best validation NDCG@10 and its epoch."""
    best, best_state, best_epoch, stale, validation_s = -1.0, copy.deepcopy(net.state_dict()), 0, 0, 0.0
    log, stopped = [], "max_epochs"
    epochs = tqdm(range(1, max_epochs + 1), desc=name, unit="epoch", disable=not progress)
    for epoch in epochs:
        deadline = None if budget_end is None else budget_end - validation_s
        loss, fraction = train_epoch(deadline)
        if after_epoch is not None:
            after_epoch()
        row = {"epoch": epoch, "loss": loss, "fraction": fraction, "seconds": time.perf_counter() - started}
        if validate is not None and fraction > 0:
            validating = time.perf_counter()
            row["valid_ndcg10"] = ndcg = validate()
            validation_s = time.perf_counter() - validating
            row["seconds"] = time.perf_counter() - started
            if ndcg > best:
                best, best_state, best_epoch, stale = ndcg, copy.deepcopy(net.state_dict()), epoch, 0
            else:
                stale += 1
        log.append(row)
        epochs.set_postfix({k: round(v, 4) for k, v in row.items() if k != "epoch"})
        if fraction < 1.0 or (budget_end is not None and time.perf_counter() >= budget_end - validation_s):
            stopped = "time_budget"
            break
        if stale >= patience:
            stopped = "patience"
            break
    if validate is not None:
        net.load_state_dict(best_state)
    return log, stopped, best, best_epoch


def train_parts(sequence: list[Interaction], history_scope: HistoryScope) -> list[list[Interaction]]:
    """The train sequences one user's time-ordered history gives: itself (``"cross"``), or one per platform in
    order of first appearance (``"target"``)."""
    if history_scope == "cross":
        return [sequence]
    platforms = dict.fromkeys(x.platform for x in sequence)
    return [[x for x in sequence if x.platform == p] for p in platforms]


def windows(sequences: list[list[int]], max_len: int, stride: int | None = None, *,
            untargeted_input: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Input windows ``(W, max_len)`` of item sequences and their next-item targets (``PAD`` where a position is not
    trained), every target trained once: windows start every ``stride`` items (default ``max_len``: no overlap),
    and a target an earlier window already trained is ``PAD``. With ``untargeted_input=False`` a sequence's last
    window ends at its last target's input, without the last item, which has no target (under the causal mask that
    item changes no trained position, but it widens batches and so the random draws made over them)."""
    stride = max_len if stride is None else stride
    inputs, targets = [], []
    for seq in sequences:
        start = 0
        trained_until = 0  # targets seq[1 .. trained_until] are already covered
        while trained_until < len(seq) - 1:
            window = seq[start : start + max_len]
            target = seq[start + 1 : start + max_len + 1]
            if not untargeted_input:
                window = window[: len(target)]
            fresh = [t if start + 1 + j > trained_until else PAD for j, t in enumerate(target)]
            inputs.append(window + [PAD] * (max_len - len(window)))
            targets.append(fresh + [PAD] * (max_len - len(fresh)))
            trained_until = start + len(target)
            start += stride
    return torch.tensor(inputs, dtype=torch.long), torch.tensor(targets, dtype=torch.long)
