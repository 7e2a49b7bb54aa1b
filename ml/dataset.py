"""The torch Dataset over labelled Items (ml.data finds and splits them, without torch)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch.utils.data import Dataset

from ml.core import SUBTYPES, open_image
from ml.data import CLASS_NAMES, Item, subtype_of
from ml.heads import NO_SUBTYPE


class ImageDataset(Dataset):
    """Items -> (transform(image), class index, subtype target), with the item's weight
    before the subtype target when `return_weight=True`. The subtype target is 1 bacterial,
    0 viral, ml.heads.NO_SUBTYPE for normal or unknown (ml.data.subtype_of). Images decode
    as 8-bit gray."""

    def __init__(
        self,
        items: Sequence[Item],
        transform: Callable,
        *,
        class_names: Sequence[str] = CLASS_NAMES,
        decode_size: int | None = None,
        return_weight: bool = False,
    ) -> None:
        self.items = list(items)
        self.transform = transform
        self.class_to_index = {name: i for i, name in enumerate(class_names)}
        self.decode_size = decode_size  # lets large JPEGs decode at a reduced scale
        self.targets = [self.class_to_index[label] for _, label in self.items]
        self.weights = [float(getattr(item, "weight", 1.0)) for item in self.items]
        codes = {SUBTYPES[0]: 1, SUBTYPES[1]: 0, "": NO_SUBTYPE}
        self.subtypes = [codes[subtype_of(item)] for item in self.items]
        self.return_weight = return_weight

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple:
        path, _ = self.items[index]
        x = self.transform(open_image(path, size=self.decode_size))  # (3, S, S)
        if self.return_weight:
            return x, self.targets[index], self.weights[index], self.subtypes[index]
        return x, self.targets[index], self.subtypes[index]
