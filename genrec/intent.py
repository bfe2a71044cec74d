"""What a chat message asks for: target platform, reference items, constraints, exclusions and follow-ups.

Two extractors, merged by ``IntentExtractor``:

- **rules** (``extract_rules``): regular patterns for references ("like X", "similar to X", "more like the second
  one"), exclusions ("not that one", "no pencils", "without horror"), ordinals ("the second one", "#2", "the last
  one"), platform mentions (platform names, their words, a few domain synonyms and verbs such as "watch"), and the
  remaining content words as constraints ("for sketching"). They never depend on the model.
- **the LLM** with a constrained prompt (``chat.j2``): a four-line form (platform / like / want / avoid). Its
  answer is treated as untrusted: a platform counts only if it names a known platform, and a text field only if
  it is a span of the user's own message, so a confused or injected model can neither invent a platform nor add
  words the user did not write. It only fills what the rules left empty.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from genrec.data.schema import Platform
from genrec.llm import LLM
from genrec.prompts import PromptTemplates

CHAT_TEMPLATE = "chat.j2"
FORM_FIELDS = ("platform", "like", "want", "avoid")
MAX_FORM_TOKENS = 48

FollowUp = Literal["none", "more", "more_like", "reject"]

ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
            "ninth": 9, "tenth": 10, "last": -1, "1st": 1, "2nd": 2, "3rd": 3}
_ORDINAL_WORD = r"(first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|last|\d{1,2}(?:st|nd|rd|th))"
_ORDINAL = re.compile(
    rf"\b(?:the\s+)?{_ORDINAL_WORD}(?:\s+(?:one|item|pick|suggestion|recommendation|title))?\b"
    r"|#\s?(\d{1,2})\b|\b(?:number|no\.|item|pick)\s?(\d{1,2})\b", re.I)
_DEICTIC = re.compile(r"\b(?:that|this)(?:\s+(?:one|item|pick|suggestion))?\b|\bit\b", re.I)
_STOP = r"(?=[,.;!?]|\s+but\b|\s+and\b|\s+for\b|\s+with\b|\s+on\b|$)"
_NEGATION = re.compile(
    r"\b(?:nothing\s+like|no\s+more|(?:i\s+)?(?:don't|do\s+not|didn't)\s+(?:want|like|need)|"
    r"not|no|without|except|exclude|avoid|skip)\s+(?P<what>.+?)" + _STOP, re.I)
_REFERENCE = re.compile(
    r"\b(?:similar\s+to|such\s+as|same\s+as|along\s+the\s+lines\s+of|reminds?\s+me\s+of|in\s+the\s+style\s+of|"
    r"related\s+to|close\s+to|akin\s+to|like)\s+(?P<what>.+?)" + _STOP, re.I)
# "I'd like", "would like", "I like": a wish, not a reference
_LIKE_AS_VERB = re.compile(r"\b(?:i|i'd|id|we|we'd|you|they|would|do|don't|didn't|really)\s+$", re.I)
_MORE = re.compile(r"\b(?:more|another|others|other\s+ones|again)\b", re.I)
_WORD = re.compile(r"[a-z0-9][a-z0-9'-]*")
_MARKUP = re.compile(r"<[^<>]{0,200}>")  # HTML-like tags carry no request
FILLER = frozenset("""a an the i i'm i'd me my mine we us our you your some something anything things stuff
    please pls recommend recommendation recommendations suggest suggestion suggestions show give find get want wants
    need needs would could can like love liked loved enjoy enjoyed looking look for to of on in at from with and or
    but that this these those one ones it its is are be been was were more other others another new good great
    nice what which who how any kind sort type bit just also too very really maybe again now then there here
    item items pick picks bought buy watched watch read listened listen used use got have had has do did done
    similar same thanks thank hi hello hey ok okay yes no not""".split())
# domain words that point to a platform when its name or verb uses them
SYNONYMS = {
    "movies": ("movie", "movies", "film", "films", "cinema", "watch"),
    "video": ("video", "videos", "watch"),
    "music": ("music", "song", "songs", "album", "albums", "listen", "track", "tracks"),
    "books": ("book", "books", "novel", "novels", "read", "reading"),
    "arts": ("art", "arts", "craft", "crafts", "crafting"),
    "office": ("office", "stationery"),
}
_VERB_WORDS = {"watched": "watch", "listened to": "listen", "read": "read"}


@dataclass(frozen=True)
class Intent:
    """A chat message's request. Positions are 1-based places in the previous answer (-1: the last one)."""

    platform: str | None = None
    references: tuple[str, ...] = ()
    reference_positions: tuple[int, ...] = ()
    constraints: tuple[str, ...] = ()
    exclusions: tuple[str, ...] = ()
    rejected_positions: tuple[int, ...] = ()
    rejects_current: bool = False  # "not that one": the item the conversation is about
    follow_up: FollowUp = "none"
    sources: dict[str, str] = field(default_factory=dict)  # field -> "rules" | "llm"

    def to_dict(self) -> dict:
        return {"platform": self.platform, "references": list(self.references),
                "reference_positions": list(self.reference_positions), "constraints": list(self.constraints),
                "exclusions": list(self.exclusions), "rejected_positions": list(self.rejected_positions),
                "rejects_current": self.rejects_current, "follow_up": self.follow_up, "sources": self.sources}


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in FILLER and len(w) > 1]


def stem(word: str) -> str:
    """A crude English stem for keyword matching ("pencils" -> "pencil", "sketching" -> "sketch")."""
    for suffix in ("ing", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _positions(text: str) -> list[int]:
    found = []
    for match in _ORDINAL.finditer(text):
        word, hashed, numbered = match.groups()
        if word:
            value = ORDINALS.get(word.lower()) or int(re.sub(r"\D", "", word))
        else:
            value = int(hashed or numbered)
        if value != 0:
            found.append(value)
    return found


class PlatformWords:
    """Which words name which platform: the name and its parts, domain synonyms, and the verb ("watch")."""

    def __init__(self, platforms: Iterable[Platform]) -> None:
        owners: dict[str, set[str]] = {}
        self.names = []
        for platform in platforms:
            self.names.append(platform.name)
            tokens = {platform.name.lower(), *re.split(r"[-_.\s]+", platform.name.lower())}
            for token in list(tokens):
                tokens.update(SYNONYMS.get(token, ()))
            if platform.verb in _VERB_WORDS:
                tokens.add(_VERB_WORDS[platform.verb])
            for token in tokens:
                if len(token) >= 3:
                    owners.setdefault(token, set()).add(platform.name)
                    owners.setdefault(stem(token), set()).add(platform.name)
        # a word shared by several platforms ("amazon") names none of them
        self.word_to_platform = {w: next(iter(p)) for w, p in owners.items() if len(p) == 1}

    def find(self, text: str) -> str | None:
        """The one platform ``text`` mentions, else ``None`` (no mention, or several)."""
        lowered = text.lower()
        exact = [name for name in self.names if re.search(rf"(?<![\w-]){re.escape(name.lower())}(?![\w-])", lowered)]
        if len(exact) == 1:
            return exact[0]
        found = {self.word_to_platform[w] for w in words(text) if w in self.word_to_platform} | {
            self.word_to_platform[stem(w)] for w in words(text) if stem(w) in self.word_to_platform}
        return found.pop() if len(found) == 1 else None

    def is_platform_word(self, word: str) -> bool:
        return word in self.word_to_platform or stem(word) in self.word_to_platform


def extract_rules(message: str, platforms: PlatformWords) -> Intent:
    """The intent found by patterns alone."""
    text = " ".join(_MARKUP.sub(" ", message).split())
    references: list[str] = []
    reference_positions: list[int] = []
    exclusions: list[str] = []
    rejected: list[int] = []
    rejects_current = False
    used: list[tuple[int, int]] = []
    for match in _NEGATION.finditer(text):
        what = match.group("what").strip()
        used.append(match.span())
        positions = _positions(what)
        if positions:
            rejected.extend(positions)
        elif _DEICTIC.match(what) and not content_words(what):
            rejects_current = True
        elif content_words(what):
            exclusions.append(what)
    for match in _REFERENCE.finditer(text):
        if any(start <= match.start() < end for start, end in used):
            continue
        if match.group(0).lower().startswith("like") and _LIKE_AS_VERB.search(text[: match.start()]):
            continue
        what = match.group("what").strip()
        used.append(match.span())
        positions = _positions(what)
        if positions:
            reference_positions.extend(positions)
        elif (_DEICTIC.match(what) and not content_words(what)) or what.lower() in {"these", "those", "them"}:
            reference_positions.append(0)  # 0: the item the conversation is about
        elif content_words(what):
            references.append(what)
    rest = text
    for start, end in sorted(used, reverse=True):
        rest = rest[:start] + " " + rest[end:]
    rest = _ORDINAL.sub(" ", rest)
    leftover = [w for w in content_words(rest) if not platforms.is_platform_word(w)]
    if rejected or rejects_current:
        follow_up: FollowUp = "reject"
    elif reference_positions:
        follow_up = "more_like"
    elif _MORE.search(text) and not references and not leftover:
        follow_up = "more"
    else:
        follow_up = "none"
    return Intent(platform=platforms.find(text), references=tuple(references),
                  reference_positions=tuple(reference_positions),
                  constraints=(" ".join(leftover),) if leftover else (), exclusions=tuple(exclusions),
                  rejected_positions=tuple(rejected), rejects_current=rejects_current, follow_up=follow_up)


@dataclass(frozen=True)
class FormAnswer:
    """The LLM's four-line form after validation (fields it got wrong are ``None``)."""

    platform: str | None = None
    like: str | None = None
    want: str | None = None
    avoid: str | None = None


def parse_form(text: str, message: str, platforms: PlatformWords) -> FormAnswer:
    """Read ``platform: / like: / want: / avoid:`` lines, keeping only values that are valid (see module doc)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"^\W*(platform|like|want|avoid)\s*[:=-]\s*(.*)$", line.strip(), re.I)
        if match and match.group(1).lower() not in values:
            values[match.group(1).lower()] = match.group(2).strip().strip("\"'“”.").strip()
    said = " ".join(words(message))

    def span(name: str) -> str | None:
        value = values.get(name, "")
        key = " ".join(words(value))
        if not key or key == "none" or not content_words(value) or f" {key} " not in f" {said} ":
            return None
        if len(key) >= 0.9 * len(said):  # the whole message copied back: no extraction
            return None
        return value

    platform = values.get("platform", "")
    return FormAnswer(platform=platforms.find(platform) if platform.lower() != "none" else None,
                      like=span("like"), want=span("want"), avoid=span("avoid"))


def merge(rules: Intent, form: FormAnswer) -> Intent:
    """Rules first; the validated LLM form only fills fields the rules left empty."""
    sources = {name: "rules" for name, value in (("platform", rules.platform), ("references", rules.references),
                                                  ("constraints", rules.constraints),
                                                  ("exclusions", rules.exclusions)) if value}
    intent = rules
    if intent.platform is None and form.platform is not None:
        intent, sources["platform"] = replace(intent, platform=form.platform), "llm"
    if not intent.references and not intent.reference_positions and form.like:
        intent, sources["references"] = replace(intent, references=(form.like,)), "llm"
    if not intent.constraints and form.want:
        intent, sources["constraints"] = replace(intent, constraints=(form.want,)), "llm"
    if not intent.exclusions and not intent.rejected_positions and form.avoid:
        intent, sources["exclusions"] = replace(intent, exclusions=(form.avoid,)), "llm"
    return replace(intent, sources=sources)


class IntentExtractor:
    """Rules plus (optionally) the LLM's constrained form; ``llm=None`` uses the rules alone."""

    def __init__(self, llm: LLM | None, templates: PromptTemplates | None = None) -> None:
        self.llm = llm
        self.templates = templates or PromptTemplates()

    def extract(self, message: str, platforms: Sequence[Platform]) -> Intent:
        words_ = PlatformWords(platforms)
        rules = extract_rules(message, words_)
        if self.llm is None:
            return merge(rules, FormAnswer())
        messages = self.templates.messages(CHAT_TEMPLATE, message=message, platforms=[p.name for p in platforms])
        output = self.llm.generate([self.llm.format_chat(messages)], max_new_tokens=MAX_FORM_TOKENS,
                                   stop_after_lines=len(FORM_FIELDS))[0][0]
        return merge(rules, parse_form(output, message, words_))


class CatalogVocabulary:
    """Which platform's catalog uses a message's words most: a fallback when nobody named a platform.

    Each content word of the message spreads one vote over the platforms in proportion to the share of each
    platform's titles that contain it (stemmed); a platform wins with a clear lead (``margin`` votes).
    """

    def __init__(self, titles: dict[str, Sequence[str]], margin: float = 0.5) -> None:
        self.margin = margin
        self._share: dict[str, dict[str, float]] = {}
        for platform, platform_titles in titles.items():
            counts: dict[str, int] = {}
            for title in platform_titles:
                for word in {stem(w) for w in words(title)}:
                    counts[word] = counts.get(word, 0) + 1
            total = max(1, len(platform_titles))
            self._share[platform] = {word: n / total for word, n in counts.items()}

    def vote(self, text: str) -> str | None:
        scores = dict.fromkeys(self._share, 0.0)
        for word in {stem(w) for w in content_words(text)}:
            shares = {platform: share.get(word, 0.0) for platform, share in self._share.items()}
            total = sum(shares.values())
            for platform, value in shares.items():
                scores[platform] += value / total if total else 0.0
        ranked = sorted(scores.items(), key=lambda kv: -kv[1])
        if not ranked or ranked[0][1] == 0 or (len(ranked) > 1 and ranked[0][1] - ranked[1][1] < self.margin):
            return None
        return ranked[0][0]
