"""A run's logs: loss.csv (+ loss.png), val.csv and TensorBoard event files under RUN/tb/.

TensorBoard scalars: train/loss, train/loss_t<k> (per time bucket: t in [k/4, (k+1)/4)),
train/grad_norm, train/tokens_per_s, train/lr, train/token_efficiency, val/loss, val/loss_ema.
On resume, the CSV files are cut to the resume step and TensorBoard is told to purge later
events (`purge_step`), so a resumed run reads as one run.
"""

from __future__ import annotations

import csv
from pathlib import Path

T_BUCKETS = 4


class RunLog:
    FIELDS = ("step", "loss", "lr", "grad_norm", "tokens", "token_efficiency", "tokens_per_s", "elapsed_s")
    VAL_FIELDS = ("step", "val_loss", "val_loss_ema")

    def __init__(self, out: Path, start_step: int, tensorboard: bool = True):
        self.path, self.val_path = out / "loss.csv", out / "val.csv"
        for path, fields in ((self.path, self.FIELDS), (self.val_path, self.VAL_FIELDS)):
            rows = []
            if path.is_file():
                with path.open() as f:
                    rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
            with path.open("w", newline="") as f:
                w = csv.DictWriter(f, fields, extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # the `models` extra installs it; training does not need it
                print(
                    "[train] tensorboard is not installed: no event files (pip install tensorboard)",
                    flush=True,
                )
            else:
                self.tb = SummaryWriter(str(out / "tb"), purge_step=start_step + 1)

    def write(
        self,
        step: int,
        loss: float,
        lr: float,
        gnorm: float,
        tokens: int,
        efficiency: float,
        tokens_per_s: float,
        elapsed: float,
        bucket_losses: list[float | None],
    ) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow(
                [
                    step,
                    f"{loss:.6g}",
                    f"{lr:.3g}",
                    f"{gnorm:.4g}",
                    tokens,
                    f"{efficiency:.4f}",
                    f"{tokens_per_s:.1f}",
                    f"{elapsed:.2f}",
                ]
            )
        if self.tb is not None:
            for name, v in (
                ("loss", loss),
                ("lr", lr),
                ("grad_norm", gnorm),
                ("tokens_per_s", tokens_per_s),
                ("token_efficiency", efficiency),
            ):
                self.tb.add_scalar(f"train/{name}", v, step)
            for k, v in enumerate(bucket_losses):
                if v is not None:
                    self.tb.add_scalar(f"train/loss_t{k}", v, step)

    def write_val(self, step: int, loss: float, loss_ema: float) -> None:
        with self.val_path.open("a", newline="") as f:
            csv.writer(f).writerow([step, f"{loss:.6g}", f"{loss_ema:.6g}"])
        if self.tb is not None:
            self.tb.add_scalar("val/loss", loss, step)
            self.tb.add_scalar("val/loss_ema", loss_ema, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

    def plot(self, png: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with self.path.open() as f:
            rows = list(csv.DictReader(f))
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], label="train")
        with self.val_path.open() as f:
            val = list(csv.DictReader(f))
        if val:
            ax.plot([int(r["step"]) for r in val], [float(r["val_loss"]) for r in val], "o-", label="val")
            ax.legend()
        ax.set(xlabel="step", ylabel="loss", yscale="log", title="DiT training loss")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(png, dpi=100)
        plt.close(fig)
