"""The class vocabulary: names, ids, palette and synonyms shared by prompts, stores and mixing."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

IGNORE_INDEX = 255


@dataclass(frozen=True)
class ClassVocabulary:
    """Semantic classes with ids 0..N-1 (the mask values), one RGB colour each, and optional synonyms.

    ``background`` names the class that unprompted pixels get (None when every pixel must be
    a named class). 255 is reserved for ignore and is never a class id.
    """

    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    synonyms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    background: str | None = "background"

    def __post_init__(self) -> None:
        names = tuple(self.names)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "palette", tuple(tuple(int(v) for v in c) for c in self.palette))
        object.__setattr__(self, "synonyms", {k: tuple(v) for k, v in dict(self.synonyms).items()})
        if not names:
            raise ValueError("ClassVocabulary.names is empty: give at least one class name.")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"ClassVocabulary.names has duplicates {dup}: each class name must be unique.")
        if len(names) >= IGNORE_INDEX:
            raise ValueError(f"ClassVocabulary has {len(names)} classes; at most {IGNORE_INDEX} fit (255 is ignore).")
        if len(self.palette) != len(names):
            raise ValueError(
                f"ClassVocabulary.palette has {len(self.palette)} colours for {len(names)} names: give one RGB per class."
            )
        if self.background is not None and self.background not in names:
            raise ValueError(f"ClassVocabulary.background={self.background!r} is not in names {list(names)}.")
        unknown = sorted(set(self.synonyms) - set(names))
        if unknown:
            raise ValueError(f"ClassVocabulary.synonyms names unknown classes {unknown}; known: {list(names)}.")

    def __len__(self) -> int:
        return len(self.names)

    def id_of(self, name: str) -> int:
        """The class id of `name`; a ValueError lists the known names otherwise."""
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"unknown class {name!r}; this vocabulary has {list(self.names)}") from None

    @property
    def foreground_ids(self) -> tuple[int, ...]:
        return tuple(i for i, n in enumerate(self.names) if n != self.background)

    def words_for(self, name: str) -> tuple[str, ...]:
        """The class name followed by its synonyms: the words a prompt may use for it."""
        self.id_of(name)
        return (name, *self.synonyms.get(name, ()))

    def prompt_word(self, name: str) -> str:
        """The word prompts use for a class: its first synonym if it has one ('dining table'), else its name."""
        words = self.words_for(name)
        return words[1] if len(words) > 1 else words[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "palette": [list(c) for c in self.palette],
            "synonyms": {k: list(v) for k, v in self.synonyms.items()},
            "background": self.background,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassVocabulary:
        return cls(
            names=tuple(data["names"]),
            palette=tuple(tuple(c) for c in data["palette"]),
            synonyms={k: tuple(v) for k, v in data.get("synonyms", {}).items()},
            background=data.get("background", "background"),
        )

    def check_same(self, other: ClassVocabulary | Sequence[str], what: str = "the other dataset") -> None:
        """Raise ValueError, showing both lists, if `other` has different class names or order."""
        other_names = tuple(other.names) if isinstance(other, ClassVocabulary) else tuple(other)
        check_same_names(self.names, other_names, what)


def check_same_names(ours: Sequence[str], theirs: Sequence[str], what: str, ours_label: str = "this one") -> None:
    """Raise ValueError, showing both lists, if two class name lists differ in names or order."""
    if tuple(ours) != tuple(theirs):
        raise ValueError(
            "class vocabularies differ:\n"
            f"  {ours_label}:  {list(ours)}\n"
            f"  {what}: {list(theirs)}\n"
            "Use the same class names in the same order, or give an explicit class mapping."
        )


# ---------------------------------------------------------------------------------------------- matching


def normalize_class_name(name: str) -> str:
    """A class name as compared across datasets: lower case, no surrounding space, `_`/`-` as spaces."""
    return " ".join(str(name).replace("_", " ").replace("-", " ").lower().split())


def parse_class_map(entries: Sequence[str], key: str = "class_map") -> dict[str, str | None]:
    """Class map entries written as text ("store_name=dataset_name_or_id"; an empty right side = ignore) as a
    dict for match_classes; `key` is the setting the user wrote them in (named in the error)."""
    out: dict[str, str | None] = {}
    for entry in entries:
        if not isinstance(entry, str) or "=" not in entry:
            raise ValueError(
                f"{key} entry {entry!r}: write it as 'store_name=dataset_name' or "
                "'store_name=dataset_id', or 'store_name=' to ignore that class"
            )
        name, target = (p.strip() for p in entry.split("=", 1))
        out[name] = target or None
    return out


def match_classes(
    store: ClassVocabulary,
    dataset_classes: Sequence[str],
    class_map: Mapping[str, str | int | None] | None = None,
    *,
    key: str = "class_map",
    what: str = "the real dataset",
    strict: bool = True,
) -> np.ndarray:
    """A 256-entry lookup table from store class ids to the dataset's class ids (255 = ignore).

    Each store class takes the dataset class whose normalised name equals its own, unless
    `class_map` names it ({store name: dataset name, dataset id, or None for ignore}). A store
    background the dataset does not name is ignored (its pixels are unlabelled, not a class).
    Any other store class left without a dataset class fails here, with a diff and the fix,
    `key` being the config key the user sets (e.g. ``SYNTHAUG.CLASS_MAP``); with `strict` False it is
    ignored instead (for figures keyed by dataset classes, which need not cover the store's).
    """
    if isinstance(dataset_classes, str):
        raise ValueError(f"the classes of {what} are one string {dataset_classes!r:.80}: give a list of names")
    if len(dataset_classes) > IGNORE_INDEX:
        raise ValueError(
            f"{what} has {len(dataset_classes)} classes; synthetic labels are 8-bit with 255 = ignore, so at most "
            f"{IGNORE_INDEX} classes (ids 0..{IGNORE_INDEX - 1}) can be mixed"
        )
    theirs = [normalize_class_name(n) for n in dataset_classes]
    where: dict[str, list[int]] = {}
    for i, n in enumerate(theirs):
        where.setdefault(n, []).append(i)
    ours = _unique_normalised(store.names, "the store's class names", key)
    explicit: dict[int, int | None] = {}
    _unique_normalised(list(dict(class_map or {})), f"the keys of {key}", key)
    for name, target in dict(class_map or {}).items():
        sid = ours.get(normalize_class_name(name))
        if sid is None:
            raise ValueError(
                f"{key} names {name!r}, which is not a class of the store; the store has {list(store.names)}"
                + _nearest_hint(name, list(store.names))
            )
        explicit[sid] = _map_target(name, target, dataset_classes, where, key, what)
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    unmatched: list[int] = []
    for sid, name in enumerate(store.names):
        if sid in explicit:
            target = explicit[sid]
        else:
            hits = where.get(normalize_class_name(name), [])
            if len(hits) > 1:
                raise ValueError(
                    f"store class {name!r} matches several classes of {what} ({[dataset_classes[i] for i in hits]} "
                    f"at ids {hits}): set {key} to say which, e.g. {key}={{{name!r}: {hits[0]}}}"
                )
            target = hits[0] if hits else None
            if target is None and name != store.background:
                unmatched.append(sid)
        lut[sid] = IGNORE_INDEX if target is None else target
    if unmatched and strict:
        raise ValueError(_mismatch_message(store, dataset_classes, unmatched, key, what))
    return lut


def _unique_normalised(names, what: str, key: str) -> dict[str, int]:
    """{normalised name: index}; fails when two names differ only by case, surrounding space, '_' or '-'
    (one of them would silently take the other's mapping)."""
    out: dict[str, int] = {}
    for i, name in enumerate(names):
        norm = normalize_class_name(name)
        if norm in out:
            raise ValueError(
                f"{what} {names[out[norm]]!r} and {name!r} are the same name once case, surrounding space, '_' and "
                f"'-' are ignored, so {key} cannot tell them apart: rename one"
            )
        out[norm] = i
    return out


def _map_target(
    name: str, target: str | int | None, dataset_classes: Sequence[str], where: dict, key: str, what: str
) -> int | None:
    if target is None or (isinstance(target, str) and normalize_class_name(target) in ("", "ignore")):
        return None
    if isinstance(target, bool):
        raise ValueError(f"{key}[{name!r}]={target!r}: give a class name of {what}, its id, or None to ignore")
    if isinstance(target, int) or (isinstance(target, str) and target.strip().isdigit()):
        tid = int(target)
        if tid == IGNORE_INDEX:
            return None
        if not 0 <= tid < len(dataset_classes):
            raise ValueError(
                f"{key}[{name!r}]={target!r} is not a class id of {what} (0..{len(dataset_classes) - 1}, or 255/None "
                "to ignore)"
            )
        return tid
    hits = where.get(normalize_class_name(str(target)), [])
    if len(hits) != 1:
        found = "several classes" if hits else "no class"
        raise ValueError(
            f"{key}[{name!r}]={target!r} names {found} of {what}; give one of its class names or ids, or None to "
            f"ignore" + _nearest_hint(str(target), list(dataset_classes))
        )
    return hits[0]


def _nearest(name: str, candidates: Sequence[str], n: int = 3) -> list[str]:
    norm = {normalize_class_name(c): c for c in candidates}
    close = difflib.get_close_matches(normalize_class_name(name), list(norm), n=n, cutoff=0.5)
    return [norm[c] for c in close]


def _nearest_hint(name: str, candidates: Sequence[str]) -> str:
    near = _nearest(name, candidates)
    return f" (nearest: {', '.join(map(repr, near))})" if near else ""


def _mismatch_message(
    store: ClassVocabulary, dataset_classes: Sequence[str], unmatched: list[int], key: str, what: str
) -> str:
    rows = []
    example: dict[str, str | None] = {}
    for sid in unmatched:
        name = store.names[sid]
        at = repr(dataset_classes[sid]) if sid < len(dataset_classes) else "-"
        near = _nearest(name, dataset_classes)
        example[name] = near[0] if near else (dataset_classes[sid] if sid < len(dataset_classes) else None)
        rows.append(f"  {sid:>5}  {name!r:<24} {at:<24} {', '.join(map(repr, near)) or '-'}")
    shown = 6
    example_text = ", ".join(f"{k!r}: {v!r}" for k, v in list(example.items())[:shown])
    return (
        f"class vocabularies differ: {len(unmatched)} of the store's {len(store)} classes have no class of the same "
        f"name in {what} ({len(dataset_classes)} classes; names compared ignoring case, surrounding space, '_' and "
        f"'-'):\n  {'index':>5}  {'store name':<24} {'dataset name':<24} nearest dataset names\n"
        + "\n".join(rows)
        + f"\nSet {key} to map each of them to a dataset class name or id, or to None to ignore its pixels, e.g. "
        f"{key}={{{example_text}}}; or generate the store with {what}'s class names."
    )
