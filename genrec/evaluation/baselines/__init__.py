"""Classic recommenders evaluated under the same protocol as genrec's generative methods."""

from genrec.evaluation.baselines.base import HistoryScope, ItemVocabulary, Method, rank_cases, scoped_history
from genrec.evaluation.baselines.content import ContentOnly, TextEncoder
from genrec.evaluation.baselines.itemknn import ItemKNN
from genrec.evaluation.baselines.popularity import MostPop
from genrec.evaluation.baselines.sasrec import SASRec

__all__ = [
    "ContentOnly",
    "HistoryScope",
    "ItemKNN",
    "ItemVocabulary",
    "Method",
    "MostPop",
    "SASRec",
    "TextEncoder",
    "rank_cases",
    "scoped_history",
]
