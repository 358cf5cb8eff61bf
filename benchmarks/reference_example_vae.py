"""A standalone VAE script that works the way pytorch/examples' vae/main.py does, as the reference
that ``benchmarks/bench_whole_process.py`` times whole processes against. It imports nothing from
vae_utils.

    VAE_DATA_DIR=/path/to/data python benchmarks/reference_example_vae.py            # 10 epochs
    VAE_DATA_DIR=/path/to/data python benchmarks/reference_example_vae.py --epochs 1 --out results

What it does, as the example: torchvision's MNIST (read from ``$VAE_DATA_DIR/MNIST/raw``, never
downloaded) with ``ToTensor``, ``DataLoader(batch_size=128)`` shuffled for training and in order for
the test set; a 784-400-20 VAE with ReLU hidden units and sigmoid outputs; the loss is
``F.binary_cross_entropy(reduction="sum")`` plus the analytic KL divergence (Kingma & Welling,
appendix B); Adam with step size 1e-3; ``loss.item()`` after every step, a progress line every
``--log-interval`` batches. After every epoch: the average test loss, and two PNG files written with
``torchvision.utils.save_image`` into ``--out`` (8 test images above their reconstructions from the
first test batch, and 64 decoded draws from the prior). Without ``--out`` the images go to a
temporary folder that is removed at the end. Like the example, it runs on the accelerator when
torch sees one (``--no-accel``: the CPU).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms
from torchvision.utils import save_image

IMAGE_SIZE = 28 * 28
HIDDEN = 400
LATENT = 20


class ExampleVAE(nn.Module):
    """The example's network: fc1 784->400, fc21/fc22 400->20 (mean, log variance), fc3 20->400,
    fc4 400->784 with a sigmoid on the output."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(IMAGE_SIZE, HIDDEN)
        self.fc21 = nn.Linear(HIDDEN, LATENT)
        self.fc22 = nn.Linear(HIDDEN, LATENT)
        self.fc3 = nn.Linear(LATENT, HIDDEN)
        self.fc4 = nn.Linear(HIDDEN, IMAGE_SIZE)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = F.relu(self.fc1(x))
        return self.fc21(hidden), self.fc22(hidden)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x.view(-1, IMAGE_SIZE))
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # the reparameterisation trick
        return self.decode(z), mu, logvar


def negative_elbo(
    recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> torch.Tensor:
    """The minibatch's summed cross-entropy plus KL(q(z|x) || N(0, I)) in closed form."""
    cross_entropy = F.binary_cross_entropy(recon, x.view(-1, IMAGE_SIZE), reduction="sum")
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return cross_entropy + kl


def pick_device(no_accel: bool) -> torch.device:
    if not no_accel and torch.accelerator.is_available():
        accelerator = torch.accelerator.current_accelerator()
        assert accelerator is not None
        return accelerator
    return torch.device("cpu")


def train_one_epoch(
    model: ExampleVAE,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    device: torch.device,
    epoch: int,
    log_interval: int,
) -> None:
    model.train()
    total = 0.0
    n_data = len(loader.dataset)
    for step, (x, _) in enumerate(loader):
        x = x.to(device)
        optimizer.zero_grad()
        recon, mu, logvar = model(x)
        loss = negative_elbo(recon, x, mu, logvar)
        loss.backward()
        total += loss.item()
        optimizer.step()
        if step % log_interval == 0:
            print(
                f"Train Epoch: {epoch} [{step * len(x)}/{n_data} ({100.0 * step / len(loader):.0f}%)]"
                f"\tLoss: {loss.item() / len(x):.6f}"
            )
    print(f"====> Epoch: {epoch} Average loss: {total / n_data:.4f}")


def test_and_save(model: ExampleVAE, loader: DataLoader, device: torch.device, epoch: int, out: Path) -> None:
    """The average test loss; the first batch's reconstructions and 64 prior samples as PNG files."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i, (x, _) in enumerate(loader):
            x = x.to(device)
            recon, mu, logvar = model(x)
            total += negative_elbo(recon, x, mu, logvar).item()
            if i == 0:
                n = min(len(x), 8)
                pairs = torch.cat([x[:n], recon.view(-1, 1, 28, 28)[:n]])
                save_image(pairs.cpu(), out / f"reconstruction_{epoch}.png", nrow=n)
        print(f"====> Test set loss: {total / len(loader.dataset):.4f}")
        prior = model.decode(torch.randn(64, LATENT).to(device)).cpu()
        save_image(prior.view(64, 1, 28, 28), out / f"sample_{epoch}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-interval", type=int, default=10, help="batches between progress lines")
    parser.add_argument("--no-accel", action="store_true", help="stay on the CPU")
    parser.add_argument("--out", type=Path, default=None, help="the images' folder (default: temporary)")
    args = parser.parse_args()

    root = os.environ.get("VAE_DATA_DIR")
    if not root:
        sys.exit("set VAE_DATA_DIR to the folder that holds MNIST/raw/ (torchvision's layout)")

    torch.manual_seed(args.seed)
    device = pick_device(args.no_accel)
    print(f"Using device: {device}")
    loader_options = {"num_workers": 1, "pin_memory": True} if device.type != "cpu" else {}
    to_tensor = transforms.ToTensor()
    train_loader = DataLoader(
        datasets.MNIST(root, train=True, download=False, transform=to_tensor),
        batch_size=args.batch_size,
        shuffle=True,
        **loader_options,
    )
    test_loader = DataLoader(
        datasets.MNIST(root, train=False, download=False, transform=to_tensor),
        batch_size=args.batch_size,
        shuffle=False,
        **loader_options,
    )
    model = ExampleVAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    out = args.out if args.out is not None else Path(tempfile.mkdtemp(prefix="reference_vae_"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        for epoch in range(1, args.epochs + 1):
            train_one_epoch(model, optimizer, train_loader, device, epoch, args.log_interval)
            test_and_save(model, test_loader, device, epoch, out)
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
