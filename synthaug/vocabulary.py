"""The class vocabulary: names, ids, palette and synonyms shared by prompts, stores and mixing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
