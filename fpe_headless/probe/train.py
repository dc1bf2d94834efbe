"""The probe of paper §3.3: a two-layer MLP per attention layer that classifies the maps by the word that
made them; per-layer, per-class test accuracy (Tables 1-3, 6-9). Plain torch + numpy; no ComfyUI.

The paper says only "a two-layer MLP"; everything else is ours, fixed in ``ProbeSettings`` and recorded
with every result. Why each default (hidden 128, Adam 1e-3, batch 64, 30 epochs, 20 % stratified test
split, seed 0, per-feature standardisation) is said at ``ProbeSettings``.

Two experiments:

* in distribution (``probe(data)``): one dataset, split per class into train and test;
* out of distribution (``probe(data, test=other)``): train on all of ``data``, test on all of ``other``
  (same classes, same layer shapes), the supplement's "train on 'a <color> car', test on
  'a <color> <object>'" (Table 6, bottom).

``shuffled_labels`` is the control: the labels are permuted before the split, so whatever accuracy is left
is what the probe finds without any relation between maps and words, i.e. chance.
"""

from __future__ import annotations

import gc
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .store import ProbeData

EVAL_CHUNK = 1024  # test rows per forward pass: bounds memory on 65536-wide self-attention layers


@dataclass
class ProbeSettings:
    """How a probe is trained. Every field is recorded with the results.

    * ``hidden`` 128: the MLP is Linear(D, hidden) -> ReLU -> Linear(hidden, C). The paper gives no size;
      128 is far wider than the 10 classes (no bottleneck) and small enough that the largest layers
      (D = 65536 for 256x256 self-attention maps: 8.4 M weights) still train in tens of seconds on a CPU.
    * inputs standardised per feature with the *train* split's mean and std (a feature constant on the
      train split gets std 1): map values differ by orders of magnitude between layers and kinds (a
      cross map's entries are up to ~1, a resized self map's ~1/4096), so one learning rate suits every
      layer only after scaling; using train statistics alone keeps the test split unseen.
    * Adam, ``lr`` 1e-3 (Adam's own default, the usual choice for small probes), ``weight_decay`` 0 (the
      paper mentions no regularisation), ``batch_size`` 64.
    * ``epochs`` 30: with the paper's 2,000 samples (1,600 to train) that is 25 steps an epoch, 750 Adam
      steps in all. On the planted maps of the tests (800 to train) the test accuracy is 0.48, 0.80, 0.91,
      0.96, 0.99 after 1, 2, 3, 5, 10 epochs and 0.98 after 30: 30 leaves a wide margin for harder real
      maps without letting the largest layers take minutes each. A fixed count rather than early stopping: the paper
      describes no validation split, stopping on test accuracy would leak the test set into the result,
      and one budget for every layer keeps layers comparable.
    * ``test_fraction`` 0.2, split per class (stratified): all 320 per-layer values of the paper's
      self-attention Table 8 (Table 2 is part of it) are multiples of 1/40 at two decimals (0.38 ~ 15/40,
      0.53 ~ 21/40, 0.03 ~ 1/40), i.e. 40 test maps per class of 200 = 20 %. (Its cross-attention tables
      show other denominators, e.g. 0.89 and 0.96 in Table 1, and Table 3's "car" rows steps of 1/12 and
      1/8: an unstratified split with uneven class counts. Stratifying gives every class the same test
      count, so per-class accuracies are comparable and their mean is the overall accuracy.)
    * ``seed`` 0: the label shuffle and the split draw from one ``torch.Generator`` seeded with it, each
      layer's initialisation and batch order from a fresh one (never the global RNG), so results repeat
      and a layer's result does not depend on which layers were trained before it.
    * ``device``: "cpu" or a torch device string such as "cuda" / "cuda:1".
    * ``shuffled_labels``: the control experiment (see the module doc).
    """

    hidden: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    epochs: int = 30
    test_fraction: float = 0.2
    seed: int = 0
    device: str = "cpu"
    shuffled_labels: bool = False

    def __post_init__(self):
        if self.hidden < 1 or self.batch_size < 1 or self.epochs < 1:
            raise ValueError("hidden, batch_size and epochs must be >= 1")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")

    @classmethod
    def from_dict(cls, values: dict) -> ProbeSettings:
        """From a recorded dict; keys this version does not know are dropped."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


@dataclass
class LayerResult:
    accuracy: float  # fraction of all test samples classified right
    per_class: np.ndarray  # [C] fraction right among each class's test samples (NaN: class not in the test)
    confusion: np.ndarray  # [C, C] int counts, row = true class, column = predicted class


@dataclass
class ProbeResult:
    classes: list[str]
    layers: list[str]  # the UNet layer names, forward order (Layer 1 = layers[0])
    per_class: np.ndarray  # [L, C]
    accuracy: np.ndarray  # [L]
    confusion: np.ndarray  # [L, C, C]
    settings: ProbeSettings
    n_train: int
    n_test: int
    test_per_class: list[int]  # [C] test samples of each class
    ood: bool  # trained on one dataset, tested on another
    dataset: dict = field(default_factory=dict)  # the training set's probe.json
    test_dataset: dict | None = None  # the test set's probe.json (out of distribution only)

    @property
    def chance(self) -> float:
        return 1.0 / len(self.classes)

    def to_json(self) -> str:
        def floats(array):  # NaN (a class absent from the test) as null: strict JSON
            return [None if math.isnan(v) else float(v) for v in np.asarray(array, dtype=float).ravel()]

        n_layers, n_classes = len(self.layers), len(self.classes)
        per_class = floats(self.per_class)
        return json.dumps({
            "classes": self.classes,
            "layers": self.layers,
            "per_class": [per_class[k * n_classes:(k + 1) * n_classes] for k in range(n_layers)],
            "accuracy": floats(self.accuracy),
            "confusion": np.asarray(self.confusion, dtype=np.int64).tolist(),
            "settings": asdict(self.settings),
            "n_train": self.n_train,
            "n_test": self.n_test,
            "test_per_class": list(self.test_per_class),
            "ood": self.ood,
            "dataset": self.dataset,
            "test_dataset": self.test_dataset,
        }, indent=1)

    @classmethod
    def from_json(cls, text: str) -> ProbeResult:
        raw = json.loads(text)
        n_classes = len(raw["classes"])
        return cls(
            classes=list(raw["classes"]),
            layers=list(raw["layers"]),
            # dtype=float reads null back as NaN
            per_class=np.array(raw["per_class"], dtype=float).reshape(len(raw["layers"]), n_classes),
            accuracy=np.array(raw["accuracy"], dtype=float),
            confusion=np.array(raw["confusion"], dtype=np.int64).reshape(len(raw["layers"]), n_classes, n_classes),
            settings=ProbeSettings.from_dict(raw["settings"]),
            n_train=int(raw["n_train"]),
            n_test=int(raw["n_test"]),
            test_per_class=[int(n) for n in raw["test_per_class"]],
            ood=bool(raw["ood"]),
            dataset=raw.get("dataset") or {},
            test_dataset=raw.get("test_dataset"),
        )

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> ProbeResult:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def stratified_split(labels: torch.Tensor, test_fraction: float, generator: torch.Generator,
                     n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample positions for train and test: per class, round(n_c * test_fraction) random ones to test.

    A class with at least two samples keeps at least one on each side; a single sample goes to train.
    """
    train, test = [], []
    for c in range(n_classes):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_test = math.floor(len(members) * test_fraction + 0.5)
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        else:
            n_test = 0
        test.append(members[:n_test])
        train.append(members[n_test:])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(test)).values


def _linear(n_in: int, n_out: int, generator: torch.Generator) -> nn.Linear:
    # torch's own default init (uniform +-1/sqrt(fan_in) for weight and bias), drawn from our generator.
    layer = nn.Linear(n_in, n_out)
    bound = 1.0 / math.sqrt(n_in)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(n_out, n_in, generator=generator) * (2 * bound) - bound)
        layer.bias.copy_(torch.rand(n_out, generator=generator) * (2 * bound) - bound)
    return layer


def mlp(n_in: int, hidden: int, n_classes: int, generator: torch.Generator) -> nn.Sequential:
    """The probe: Linear(D, hidden) -> ReLU -> Linear(hidden, C)."""
    return nn.Sequential(_linear(n_in, hidden, generator), nn.ReLU(), _linear(hidden, n_classes, generator))


def train_layer(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                n_classes: int, settings: ProbeSettings | None = None) -> LayerResult:
    """Train one probe on [N, D] features and score it on the test rows."""
    settings = settings or ProbeSettings()
    if len(x_train) == 0 or len(x_test) == 0:
        raise ValueError(f"a probe needs train and test samples (got {len(x_train)} and {len(x_test)})")
    device = torch.device(settings.device)
    x_train = x_train.float()
    mean = x_train.mean(dim=0)
    std = x_train.std(dim=0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    inputs = ((x_train - mean) / std).to(device)
    targets = y_train.long().to(device)

    generator = torch.Generator().manual_seed(settings.seed)
    model = mlp(inputs.shape[1], settings.hidden, n_classes, generator).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    model.train()
    for _ in range(settings.epochs):
        order = torch.randperm(len(inputs), generator=generator).to(device)
        for start in range(0, len(order), settings.batch_size):
            batch = order[start:start + settings.batch_size]
            loss = F.cross_entropy(model(inputs[batch]), targets[batch])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    del inputs, targets

    model.eval()
    predicted = []
    with torch.no_grad():
        mean, std = mean.to(device), std.to(device)
        for start in range(0, len(x_test), EVAL_CHUNK):
            chunk = (x_test[start:start + EVAL_CHUNK].float().to(device) - mean) / std
            predicted.append(model(chunk).argmax(dim=1).cpu())
    predicted = torch.cat(predicted)
    truth = y_test.long().cpu()
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.int64)
    confusion.index_put_((truth, predicted), torch.ones_like(truth), accumulate=True)
    right = confusion.diagonal().double()
    counts = confusion.sum(dim=1).double()
    per_class = torch.where(counts > 0, right / counts.clamp_min(1), torch.full_like(right, math.nan))
    return LayerResult(accuracy=float(right.sum() / len(truth)), per_class=per_class.numpy(),
                       confusion=confusion.numpy())


def _layer_indexes(data: ProbeData, layers: Sequence[int | str] | None) -> list[int]:
    if layers is None:
        return list(range(len(data.layers)))
    chosen = []
    for layer in layers:
        if isinstance(layer, str):
            if layer not in data.layers:
                raise ValueError(f"no layer {layer!r} in {data.folder} (it has {', '.join(data.layers)})")
            chosen.append(data.layers.index(layer))
        elif 0 <= int(layer) < len(data.layers):
            chosen.append(int(layer))
        else:
            raise ValueError(f"layer index {layer} is outside 0..{len(data.layers) - 1}")
    return chosen


def _check_compatible(train: ProbeData, test: ProbeData) -> None:
    if train.classes != test.classes:
        raise ValueError(f"the test set's classes {test.classes} differ from the training set's {train.classes}")
    if train.shapes != test.shapes:
        raise ValueError(f"the test set's layer shapes {test.shapes} differ from the training set's {train.shapes}")


def probe(data: ProbeData, settings: ProbeSettings | None = None, test: ProbeData | None = None,
          layers: Sequence[int | str] | None = None,
          progress: Callable[[int, int, str], None] | None = None) -> ProbeResult:
    """Train and score one probe per layer (all, or ``layers`` by index or name, kept in the order given).

    With ``test`` it is the out-of-distribution experiment: train on all of ``data``, test on all of
    ``test``. One layer's maps are loaded at a time and freed before the next. ``progress(done, total,
    layer_name)`` is called after each layer.
    """
    settings = settings or ProbeSettings()
    chosen = _layer_indexes(data, layers)
    n_classes = len(data.classes)
    generator = torch.Generator().manual_seed(settings.seed)
    labels = data.labels.clone()
    if settings.shuffled_labels:
        labels = labels[torch.randperm(len(labels), generator=generator)]
    if test is None:
        train_rows, test_rows = stratified_split(labels, settings.test_fraction, generator, n_classes)
        y_train, y_test = labels[train_rows], labels[test_rows]
    else:
        _check_compatible(data, test)
        y_train, y_test = labels, test.labels
    if len(y_train) == 0 or len(y_test) == 0:
        raise ValueError(f"{data.folder}: too few samples to probe ({len(y_train)} to train, {len(y_test)} to test)")

    per_class, accuracy, confusion = [], [], []
    for done, j in enumerate(chosen, start=1):
        maps = data.layer(j)
        if test is None:
            x_train, x_test = maps[train_rows], maps[test_rows]
        else:
            x_train, x_test = maps, test.layer(j)
        del maps
        result = train_layer(x_train, y_train, x_test, y_test, n_classes, settings)
        del x_train, x_test
        gc.collect()  # the next layer's maps may be as large again
        per_class.append(result.per_class)
        accuracy.append(result.accuracy)
        confusion.append(result.confusion)
        if progress is not None:
            progress(done, len(chosen), data.layers[j])

    return ProbeResult(
        classes=list(data.classes),
        layers=[data.layers[j] for j in chosen],
        per_class=np.stack(per_class) if per_class else np.zeros((0, n_classes)),
        accuracy=np.array(accuracy, dtype=float),
        confusion=np.stack(confusion) if confusion else np.zeros((0, n_classes, n_classes), dtype=np.int64),
        settings=settings,
        n_train=len(y_train),
        n_test=len(y_test),
        test_per_class=torch.bincount(y_test, minlength=n_classes).tolist(),
        ood=test is not None,
        dataset=dict(data.meta),
        test_dataset=dict(test.meta) if test is not None else None,
    )
