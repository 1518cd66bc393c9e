from __future__ import annotations

import pytest
import torch

from neuralcleanse import DataError, DatasetSplits, ImageDataset, SettingsError


def test_embedded_sample_is_real_balanced_mnist(mnist_sample: DatasetSplits) -> None:
    assert mnist_sample.input_shape == (1, 28, 28) and mnist_sample.num_classes == 10
    assert len(mnist_sample.train) == 4000 and len(mnist_sample.test) == 1000
    # stratified split: a split by the CSV's (class-sorted) row order would leave classes out
    assert mnist_sample.train.class_counts() == [400] * 10
    assert mnist_sample.test.class_counts() == [100] * 10
    x = mnist_sample.train.images
    assert x.dtype == torch.float32 and float(x.min()) == 0.0 and float(x.max()) == 1.0
    # MNIST digits: dark background, borders empty, roughly 19% of pixels inked
    assert float(x[:, :, :, 0].mean()) < 0.01
    assert 0.08 < float((x > 0.5).float().mean()) < 0.3
    # the label column is the last one: class means differ (digit 1 has the least ink)
    ink = torch.stack([x[mnist_sample.train.labels == c].mean() for c in range(10)])
    assert int(ink.argmin()) == 1


def test_stratified_seeded_sample(mnist_sample: DatasetSplits) -> None:
    a = mnist_sample.test.sample(50, seed=1)
    b = mnist_sample.test.sample(50, seed=1)
    c = mnist_sample.test.sample(50, seed=2)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
    assert a.class_counts() == [5] * 10
    only = mnist_sample.test.sample(30, seed=0, classes=[3])
    assert only.class_counts()[3] == 30 and len(only) == 30
    assert len(mnist_sample.test.sample(5000, seed=0)) == 1000


def test_sample_rejects_bad_sizes(mnist_sample: DatasetSplits) -> None:
    with pytest.raises(SettingsError):
        mnist_sample.test.sample(0, seed=0)
    with pytest.raises(SettingsError, match="outside"):
        mnist_sample.test.sample(10, seed=0, classes=[12])


def test_dataset_validates_its_arrays() -> None:
    with pytest.raises(DataError, match="labels outside"):
        ImageDataset(torch.zeros(2, 1, 4, 4), torch.tensor([0, 5]), 3, ("a", "b", "c"), "t")
    with pytest.raises(DataError, match=r"\(N, C, H, W\)"):
        ImageDataset(torch.zeros(2, 4, 4), torch.tensor([0, 1]), 2, ("a", "b"), "t")
    with pytest.raises(DataError, match="labels of shape"):
        ImageDataset(torch.zeros(2, 1, 4, 4), torch.tensor([0]), 2, ("a", "b"), "t")
