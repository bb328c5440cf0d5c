"""What a data source lists before anything is decoded: samples, splits and the problems found."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sample:
    """One image: where it is, whether it is anomalous, and where its mask is (None: no mask)."""

    path: str
    label: int  # 0 normal, 1 anomalous
    defect_type: str = "good"
    mask_path: str | None = None


@dataclass(frozen=True)
class Problem:
    """Something wrong with one file or folder of a dataset."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class Listing:
    """Train normals, test images, an official validation split if the source has one, and problems."""

    train: list[Sample]
    test: list[Sample]
    val: list[Sample] | None = None  # None: the datamodule holds out data.val_fraction of train
    problems: list[Problem] = field(default_factory=list)

    def splits(self) -> dict[str, list[Sample]]:
        """{"train": ..., "val": ... (only when official), "test": ...}."""
        named = {"train": self.train, "val": self.val, "test": self.test}
        return {name: samples for name, samples in named.items() if samples is not None}

    def samples(self) -> list[Sample]:
        """Every sample, train then val then test."""
        return [s for samples in self.splits().values() for s in samples]

    def overlap_problems(self) -> list[Problem]:
        """A file in two splits: a test or validation image must never also be trained on."""
        seen: dict[str, str] = {}
        problems = []
        for split, samples in self.splits().items():
            for sample in samples:
                if sample.path in seen and seen[sample.path] != split:
                    message = f"is in both {seen[sample.path]} and {split}: a file may be in one split only"
                    problems.append(Problem(sample.path, message))
                seen.setdefault(sample.path, split)
        return problems
