"""The generated sign task with a chosen number of classes (the many-label benchmark's data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neuralcleanse import DataError
from neuralcleanse.data.signs import SIGN_CLASSES, generate_signs, load_traffic_signs, sign_classes


def test_class_tables_extend_the_43_signs_without_repeats() -> None:
    assert sign_classes(43) == SIGN_CLASSES and sign_classes(10) == SIGN_CLASSES[:10]
    table = sign_classes(200)
    assert len(table) == 200 and table[:43] == SIGN_CLASSES
    assert len({c[1:] for c in table}) == 200 and len({c[0] for c in table}) == 200
    for bad in (1, 1001):
        with pytest.raises(DataError):
            sign_classes(bad)


def test_shapes_labels_and_determinism() -> None:
    (x, y), (xt, yt) = generate_signs(train_per_class=1, test_per_class=1, seed=3, classes=60)
    assert x.shape == (60, 32, 32, 3) and x.dtype == np.uint8 and xt.shape == (60, 32, 32, 3)
    assert y.tolist() == list(range(60)) == yt.tolist()
    (x2, _), _ = generate_signs(train_per_class=1, test_per_class=1, seed=3, classes=60)
    (x43, _), _ = generate_signs(train_per_class=1, test_per_class=1, seed=3)
    assert np.array_equal(x, x2) and np.array_equal(x[:43], x43)  # the first 43 classes are the signs
    (x4, _), _ = generate_signs(train_per_class=1, test_per_class=1, seed=4, classes=60)
    assert not np.array_equal(x, x4)


def test_cached_many_label_set_in_gtsrb_format(tmp_path: Path) -> None:
    data = load_traffic_signs(tmp_path, train_per_class=2, test_per_class=1, classes=50)
    assert data.name == "traffic-signs-50" and data.train.num_classes == 50 and len(data.test) == 50
    assert tuple(data.train.images.shape[1:]) == (3, 32, 32)
    assert data.train.class_names[49] == sign_classes(50)[49][0]
    assert any(p.name.endswith("-c50") for p in tmp_path.iterdir())
    again = load_traffic_signs(tmp_path, train_per_class=2, test_per_class=1, classes=50)  # from the cache
    assert bool((again.test.images == data.test.images).all())
