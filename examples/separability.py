"""Structure discovery: the separability tree of exp(sin x1 + x2^2) * x3 (KAN 2.0's Hessian tests).

Runs ``kl.separability`` on 200 points of [-1, 1]^3 (float64), prints the tree (``F(x1 + x2) * x3``:
x3 is a factor, and x1, x2 enter through a sum inside a function) and draws it into
``separability.png`` with ``kl.plot_separability``. Under a second.

    python examples/separability.py [--out separability.png]
"""

from __future__ import annotations

import argparse

import torch

import kanlab as kl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="separability.png")
    args = parser.parse_args()

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.exp(torch.sin(x[:, 0]) + x[:, 1] ** 2) * x[:, 2]

    x = torch.rand(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tree = kl.separability(f, x)
    print(tree)

    import matplotlib

    matplotlib.use("Agg")
    fig = kl.plot_separability(tree)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
