"""A network for tabular data: an embedding per column, then MLP or ResNet-style blocks,
alone or as an ensemble of `members` that share them.

Numerical features are normalized with the training statistics recorded in the feature spec
(buffers, so the ONNX export carries the preprocessing) and then either used as they are or
embedded, after "On Embeddings for Numerical Features in Tabular Deep Learning" (Gorishniy et
al., NeurIPS 2022): piecewise-linear encoding on the spec's training quantiles, or periodic
sin/cos features with learned frequencies. Every choice is a hyperparameter.

With `members` above 1 the network is TabM-mini ("TabM: Advancing Tabular Deep Learning with
Parameter-Efficient Ensembling", Gorishniy et al., ICLR 2025): k members share the embeddings
and the backbone, each multiplies the backbone's input by its own signs and has its own head;
in training each member's logit gets its own loss, and the model's prediction is the members'
mean probability.

With `clip_to_training`, each numerical value is first held to the range training saw, as a
tree does: the test months' `month` and `day_of_year` lie past every training value, and a
network left alone extrapolates whatever slope it learned there.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pipelines.spec import FeatureSpec
from training.config import ModelConfig


class PiecewiseLinear(nn.Module):
    """Each value -> how far it has filled each quantile bin (0..1), then a linear map."""

    def __init__(self, edges: list[list[float]], dim: int) -> None:
        super().__init__()
        bins = max(len(e) - 1 for e in edges)
        lo = torch.zeros(len(edges), bins)
        width = torch.ones(len(edges), bins)
        for j, column in enumerate(edges):
            for b in range(len(column) - 1):
                lo[j, b] = column[b]
                width[j, b] = max(column[b + 1] - column[b], 1e-9)
            for b in range(len(column) - 1, bins):  # padding bins of columns with fewer edges
                lo[j, b], width[j, b] = float("inf"), 1.0
        self.register_buffer("lo", lo)
        self.register_buffer("width", width)
        self.weight = nn.Parameter(torch.randn(len(edges), bins, dim) / math.sqrt(bins))
        self.bias = nn.Parameter(torch.zeros(len(edges), dim))

    def fill(self, raw: torch.Tensor) -> torch.Tensor:
        """[rows, features] -> [rows, features, bins], each bin's share filled by the value."""
        fill = ((raw.unsqueeze(-1) - self.lo) / self.width).clamp(0, 1)
        return torch.where(torch.isinf(self.lo), torch.zeros_like(fill), fill)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.einsum("nfb,fbd->nfd", self.fill(raw), self.weight) + self.bias)


class Periodic(nn.Module):
    """Each normalized value -> sin and cos of learned frequencies, then a linear map."""

    def __init__(self, features: int, frequencies: int, sigma: float, dim: int) -> None:
        super().__init__()
        self.frequencies = nn.Parameter(torch.randn(features, frequencies) * sigma)
        self.weight = nn.Parameter(
            torch.randn(features, 2 * frequencies, dim) / math.sqrt(2 * frequencies)
        )
        self.bias = nn.Parameter(torch.zeros(features, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angle = 2 * math.pi * self.frequencies * x.unsqueeze(-1)
        waves = torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)
        return torch.relu(torch.einsum("nfk,fkd->nfd", waves, self.weight) + self.bias)


class Dropout(nn.Dropout):
    """`nn.Dropout`, with the CPU's mask drawn four at a time: torch's CPU dropout draws a
    Bernoulli per element, which on this project's 2-core machines took longer than the
    layer's matmul (18 ms for a batch of 2,048 rows times 8 members times 128 units); here one
    64-bit random integer makes four 16-bit ones, each kept when at or above p's share of
    their range (5x faster). `p` is held to 1/65,536; the survivors are scaled by the exact
    inverse of their probability, so the expectation is the input's. CUDA keeps torch's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        dropped = round(self.p * 65_536)
        words = torch.randint(-(2**63), 2**63 - 1, ((x.numel() + 3) // 4,), dtype=torch.int64)
        draws = words.view(torch.int16)[: x.numel()].view(x.shape)
        return x * ((draws >= dropped - 32_768) * (65_536 / (65_536 - dropped)))


class ResidualBlock(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, 2 * width),
            nn.GELU(),
            Dropout(dropout),
            nn.Linear(2 * width, width),
            Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class TabularNet(nn.Module):
    """(category codes, raw numerical values) -> the logit of a delay."""

    def __init__(self, spec: FeatureSpec, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = nn.ModuleList(
            nn.Embedding(f.cardinality, config.categorical_width(f.cardinality))
            for f in spec.categorical
        )
        self.register_buffer("mean", torch.tensor([f.mean for f in spec.numerical]))
        self.register_buffer("std", torch.tensor([f.std for f in spec.numerical]))
        # the training range, for `clip_to_training` (a column never seen has min inf, max -inf)
        self.register_buffer("low", torch.tensor([min(f.min, f.max) for f in spec.numerical]))
        self.register_buffer("high", torch.tensor([max(f.min, f.max) for f in spec.numerical]))
        n_num = len(spec.numerical)
        if config.numeric_embedding == "ple":
            edges = [sorted(set(f.quantiles)) or [0.0, 1.0] for f in spec.numerical]
            self.numeric: nn.Module | None = PiecewiseLinear(edges, config.numeric_dim)
            numeric_width = n_num * config.numeric_dim
        elif config.numeric_embedding == "periodic":
            self.numeric = Periodic(
                n_num, config.periodic_frequencies, config.periodic_sigma, config.numeric_dim
            )
            numeric_width = n_num * config.numeric_dim
        else:
            self.numeric = None
            numeric_width = n_num
        inputs = sum(e.embedding_dim for e in self.embeddings) + numeric_width
        if config.backbone == "resnet":
            layers: list[nn.Module] = [nn.Linear(inputs, config.width)]
            layers += [ResidualBlock(config.width, config.dropout) for _ in range(config.depth)]
            layers += [nn.LayerNorm(config.width), nn.ReLU()]
        else:
            layers = []
            for i in range(config.depth):
                layers += [nn.Linear(inputs if i == 0 else config.width, config.width)]
                layers += [nn.ReLU(), Dropout(config.dropout)]
        self.backbone = nn.Sequential(*layers)
        if config.members == 1:
            self.head = nn.Linear(config.width, 1)
        else:  # every parameter takes part in the loss: DDP requires it
            # TabM-mini: each member scales the shared input by its own signs, then runs the
            # shared backbone and its own head (a weight row and a bias per member)
            signs = torch.randint(0, 2, (config.members, inputs)) * 2 - 1
            self.adapter = nn.Parameter(signs.float())
            self.member_head = nn.Parameter(
                torch.randn(config.members, config.width) / math.sqrt(config.width)
            )
            self.member_bias = nn.Parameter(torch.zeros(config.members))

    def forward(self, categorical: torch.Tensor, numerical: torch.Tensor) -> torch.Tensor:
        inputs = self.embed(categorical, numerical)
        if self.config.members == 1:
            return self.head(self.backbone(inputs)).squeeze(-1)
        # each member's input times the first layer: (x * r_k) W^T = x (W * r_k)^T, one matmul
        # for all members, without the members' [rows * members, inputs] copies of the input
        first, rest = self.backbone[0], self.backbone[1:]
        weights = (self.adapter.unsqueeze(1) * first.weight).flatten(0, 1)  # [members*width, in]
        hidden = nn.functional.linear(inputs, weights, first.bias.repeat(self.config.members))
        hidden = rest(hidden.unflatten(1, (self.config.members, -1)).flatten(0, 1))
        hidden = hidden.unflatten(0, (-1, self.config.members))  # [rows, members, width]
        logits = (hidden * self.member_head).sum(-1) + self.member_bias  # [rows, members]
        if self.training:
            return logits  # each member learns on its own loss (training/fit.py)
        return mean_probability_logit(logits)

    def embed(self, categorical: torch.Tensor, numerical: torch.Tensor) -> torch.Tensor:
        """The backbone's input: every column embedded (or normalized), side by side."""
        parts = [emb(categorical[:, j]) for j, emb in enumerate(self.embeddings)]
        if self.config.clip_to_training:
            numerical = torch.minimum(torch.maximum(numerical, self.low), self.high)
        normalized = (numerical - self.mean) / self.std
        if isinstance(self.numeric, PiecewiseLinear):
            parts.append(self.numeric(numerical).flatten(1))  # bins are in raw units
        elif self.numeric is not None:
            parts.append(self.numeric(normalized).flatten(1))
        else:
            parts.append(normalized)
        return torch.cat(parts, dim=1)


def mean_probability_logit(logits: torch.Tensor) -> torch.Tensor:
    """[rows, members] logits -> the logit of the members' mean probability, computed in log
    space: log(mean p) - log(mean (1 - p)), the members' count cancelling."""
    log_p = nn.functional.logsigmoid(logits)
    log_q = nn.functional.logsigmoid(-logits)
    return torch.logsumexp(log_p, dim=1) - torch.logsumexp(log_q, dim=1)
