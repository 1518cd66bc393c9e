"""The example's own classifier: plain PyTorch, nothing from neuralcleanse.

It expects Fashion-MNIST pixels scaled to [0, 1] and then normalised with MEAN/STD, as many real models
do; neuralcleanse is told so with --mean/--std and stamps its triggers before that normalisation.
"""

from torch import nn

MEAN, STD = 0.2860, 0.3530


class FashionNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 256), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(256, classes)

    def forward(self, x):
        return self.head(self.body(x))
