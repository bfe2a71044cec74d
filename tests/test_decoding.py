"""Catalog-constrained beam search: the title trie (with the real default tokenizer) and real constrained generation."""

from __future__ import annotations

import pytest

from genrec.decoding import TitleTrie, _encode, beams_as_answer
from genrec.llm import end_of_turn_id, parse_candidates
from genrec.prompts import quote

TITLES = ["Alien (1979)", "Aliens (1986)", "Alien³ (1992)", "Heat (1995)", "'burbs, The (1989)",
          '"Great" Expectations (1998)', "Heat (1995)"]


@pytest.fixture(scope="module")
def trie(llm) -> TitleTrie:
    return TitleTrie(TITLES, llm.tokenizer)


def _walk(trie: TitleTrie, tokens: list[int], ban=None) -> None:
    for position, token in enumerate(tokens):
        assert token in trie.allowed(tokens[:position], ban), f"token {position} of the line is allowed"


def _line(trie: TitleTrie, llm, title: str) -> list[int]:
    """The tokens after the stem of the trie's line for ``title``."""
    return _encode([title], llm.tokenizer)[0][len(trie.stem):]


def test_trie_holds_each_distinct_title_once_behind_one_stem(trie, llm) -> None:
    assert trie.size == len(set(TITLES))
    assert trie.stem_text() == '1. "' and trie.end_id == end_of_turn_id(llm.tokenizer)
    for title in set(TITLES):  # titles that start with punctuation or quotes share the stem too
        tokens = _line(trie, llm, title)
        _walk(trie, tokens)
        assert trie.allowed(tokens) == [trie.end_id], "a complete line may only end"
        assert llm.tokenizer.decode(trie.stem + tokens).strip() == f"1. {quote(title)}"


def test_off_tree_and_finished_sequences_may_only_end(trie, llm) -> None:
    stray = llm.tokenizer("Zebra", add_special_tokens=False)["input_ids"]
    assert trie.allowed(stray) == [trie.end_id]
    done = _line(trie, llm, "Heat (1995)") + [trie.end_id]
    assert trie.allowed(done) == [trie.end_id]
    first = trie.allowed([])
    assert trie.end_id not in first and len(first) >= 3  # Alien..., Heat, 'burbs, "Great"...


def test_ban_closes_only_the_banned_lines(trie, llm) -> None:
    alien, aliens = _line(trie, llm, "Alien (1979)"), _line(trie, llm, "Aliens (1986)")
    ban = trie.ban(["Alien (1979)", "Not in the catalog"])
    assert len(ban.lines) == 1
    blocked = [i for i in range(len(alien)) if alien[i] not in trie.allowed(alien[:i], ban)]
    assert blocked and blocked[0] > 0, "the banned line cannot be completed, but its shared prefix stays open"
    _walk(trie, alien + [trie.end_id])  # without the ban it can
    _walk(trie, aliens + [trie.end_id], ban)  # its sibling under the same prefix still can
    every_heat = trie.ban(["Heat (1995)"])
    assert _line(trie, llm, "Heat (1995)")[0] not in trie.allowed([], every_heat), "a fully banned branch closes"
    everything = trie.ban(set(TITLES))
    assert trie.allowed([], everything) == [trie.end_id]


def test_empty_catalog_is_an_error(llm) -> None:
    with pytest.raises(ValueError, match="non-empty catalog"):
        TitleTrie(["", None], llm.tokenizer)


def test_beams_as_answer_renumbers_and_drops_repeats() -> None:
    answer = beams_as_answer(['Alien (1979)"', 'Heat (1995)"', 'Alien (1979)"', ""], stem='1. "')
    assert answer == '1. "Alien (1979)"\n2. "Heat (1995)"'
    assert [c.title for c in parse_candidates(answer).candidates] == ["Alien (1979)", "Heat (1995)"]


def test_constrained_beam_search_writes_only_catalog_titles(trie, llm) -> None:
    """The real model, forced through the trie: every beam is a distinct catalog title, banned ones never come."""
    prompt = llm.format_chat([{"role": "user", "content": "Name a science-fiction film."}]) + trie.stem_text()
    bans = [trie.ban(["Alien (1979)"])]
    texts = llm.generate([prompt], max_new_tokens=trie.depth + 2, num_beams=4, num_return_sequences=4,
                         allowed_tokens=lambda row, generated: trie.allowed(generated, bans[row]))[0]
    titles = [c.title for c in parse_candidates(beams_as_answer(texts, trie.stem_text())).candidates]
    assert titles and len(titles) == len(set(titles))
    written = {parse_candidates(f"1. {quote(title)}").candidates[0].title for title in TITLES}  # NFKC: Alien3
    assert set(titles) <= written - {"Alien (1979)"}
