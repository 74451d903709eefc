"""The GAN objective: real-only validation recall of one class after adding a trial's synthetic images.

Protocol of one trial (cheap enough for a dozen trials in an hour on a 2-core CPU):

1. **Generator.** STGAN stage 2 for class C, started from the cached stage-1 network, with the
   trial's settings (stage-2 lr, images seen, Freeze-D depth, Barlow Twins weight, DiffAugment
   policy and strength). Every ``eval_every_images`` the EMA generator's samples are scored by
   the domain-space Fréchet distance to C's real **train** images; ``-FD`` is the intermediate
   value the pruner sees. It is only a proxy for pruning: the final value is not.
2. **Synthetic set.** ``amount`` images of C from the EMA generator (the number added is searched).
3. **Classifier probe.** A fixed short fine-tune of the real-only classifier (the tuned recipe,
   one trained run): its backbone is frozen and its linear head, started from the trained
   weights, trains ``probe.epochs`` epochs on the pooled backbone features of the real train
   images plus the synthetic ones (class-weighted cross-entropy as in the recipe, no
   augmentation). The **reference** gets exactly the same fine-tune without synthetic images.
4. **Objective:** the real **val** recall of C. **Constraint** (``trial.set_constraint``): val
   balanced accuracy at least the reference's minus ``tolerance``; an infeasible trial is never
   the study's best (Optuna's TPE also models feasibility).

Reads the train split (generator, fine-tune) and the val split (scores) only: never the test split.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import numpy as np
import torch
from torch import nn

from dermagan.classify.inference import to_float_batch
from dermagan.classify.models import TTA_VIEWS, dihedral_views
from dermagan.classify.train import balanced_class_weights
from dermagan.data.prepared import SplitArrays, read_split
from dermagan.device import pick_device
from dermagan.errors import DermaganError
from dermagan.evaluate.fidelity import frechet_distance
from dermagan.evaluate.metrics import balanced_accuracy, per_class_recall
from dermagan.fidelity.encoder import ENCODER_FILE, encode, load_encoder
from dermagan.gan.generate import sample_images
from dermagan.gan.stgan import StganConfig, StganTrainer, stage_one_state
from dermagan.gan.train import train_gan
from dermagan.tuning.space import check_space, suggest

# Search-space keys that are not StganConfig fields: `lr` sets both stage-2 learning rates,
# `amount` is the number of synthetic images added to the classifier's training set.
SHARED_LR, AMOUNT = "lr", "amount"


def stage2_overrides(values: dict) -> dict:
    """The StganConfig values of one set of searched values (``lr`` -> ``lr_g`` and ``lr_d``; no ``amount``)."""
    out = {k: v for k, v in values.items() if k not in (SHARED_LR, AMOUNT)}
    if SHARED_LR in values:
        out["lr_g"] = out["lr_d"] = float(values[SHARED_LR])
    return out


def check_gan_space(space: dict, where: str) -> None:
    check_space(space, where)
    fields = set(StganConfig.__dataclass_fields__) | {SHARED_LR, AMOUNT}
    unknown = sorted(set(space) - fields)
    if unknown:
        raise DermaganError(f"params: {where} has unknown key(s) {unknown}; searchable: STGAN stage-2 settings "
                            f"(e.g. total_images, freeze_d_blocks, barlow_weight, diffaugment, diffaugment_p), "
                            f"'{SHARED_LR}' (both learning rates) and '{AMOUNT}' (synthetic images added)")


# --- the classifier probe ----------------------------------------------------------------------

@dataclass(frozen=True)
class ProbeConfig:
    """The fixed fine-tune every trial (and the reference) gets."""

    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 256
    weight_decay: float = 1e-4
    class_weight_power: float = 1.0
    seed: int = 0


class HeadProbe:
    """A trained classifier with a frozen backbone: pooled features once, then head fine-tunes.

    ``model`` is a ``NormalizedClassifier`` around a timm network (``forward_features`` /
    ``forward_head`` / ``get_classifier``). Val images are scored with the model's own TTA views.
    ``classes``: the task labels (params ``data.classes``) that the splits' integer labels index.
    """

    def __init__(self, model: nn.Module, train: SplitArrays, val: SplitArrays, cfg: ProbeConfig,
                 device: torch.device, classes: tuple[str, ...], batch_size: int = 256):
        net = model.net
        if not all(hasattr(net, name) for name in ("forward_features", "forward_head", "get_classifier")):
            raise DermaganError(f"the probe needs a timm backbone with a linear head, got {type(net).__name__}")
        own = tuple(getattr(model, "classes", classes))
        if own != tuple(classes):
            raise DermaganError(f"the probe's classifier was trained for classes {list(own)}, but the task "
                                f"(data.classes) is {list(classes)}; train it for this task first")
        self.classes = tuple(classes)
        self.model, self.cfg, self.device, self.batch_size = model.to(device).eval(), cfg, device, batch_size
        self.head = net.get_classifier()
        self.views = TTA_VIEWS[model.tta]
        self.train_x, self.train_y = self.features(train.images)[0], torch.from_numpy(train.labels).long()
        self.val_x, self.val_y = self.features(val.images, self.views), val.labels

    @torch.no_grad()
    def features(self, images: np.ndarray, views: int = 1) -> torch.Tensor:
        """Pooled backbone features (views, N, D) of uint8 images (N, H, W, 3)."""
        tta = {v: k for k, v in TTA_VIEWS.items()}[views]
        tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        out = []
        for chunk in tensor.split(self.batch_size):
            x = (to_float_batch(chunk).to(self.device) - self.model.mean) / self.model.std
            out.append(torch.stack([self.model.net.forward_head(self.model.net.forward_features(v), pre_logits=True)
                                    for v in dihedral_views(x, tta)]).cpu())
        if not out:
            return torch.zeros(views, 0, self.head.in_features)
        return torch.cat(out, dim=1)

    def fine_tune(self, x: torch.Tensor, y: torch.Tensor) -> nn.Linear:
        """The trained head, fine-tuned for ``epochs`` on (x, y) with a fixed, seeded schedule."""
        cfg = self.cfg
        head = copy.deepcopy(self.head).cpu().train().requires_grad_(True)
        weights = balanced_class_weights(y.numpy(), len(self.classes), cfg.class_weight_power)
        loss_fn = nn.CrossEntropyLoss(weight=weights if cfg.class_weight_power else None)
        optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        for _ in range(cfg.epochs):
            for idx in torch.randperm(len(y), generator=gen).split(cfg.batch_size):
                loss = loss_fn(head(x[idx]), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return head.eval()

    @torch.no_grad()
    def val_scores(self, head: nn.Module) -> dict:
        proba = torch.stack([torch.softmax(head(v), dim=1) for v in self.val_x]).mean(0).numpy()
        pred = proba.argmax(1)
        recalls = per_class_recall(self.val_y, pred, len(self.classes))
        return {"val_bal_acc": balanced_accuracy(self.val_y, pred, len(self.classes)),
                **{f"val_recall_{c}": float(r) for c, r in zip(self.classes, recalls)}}

    def score(self, extra: np.ndarray | None = None, label: int | None = None) -> dict:
        """Val scores after the fixed fine-tune on real train (+ ``extra`` uint8 images of class ``label``)."""
        x, y = self.train_x, self.train_y
        if extra is not None and len(extra):
            x = torch.cat([x, self.features(extra)[0]])
            y = torch.cat([y, torch.full((len(extra),), int(label), dtype=torch.long)])
        return self.val_scores(self.fine_tune(x, y))

    def untuned(self) -> dict:
        """Val scores of the trained head as it is (no fine-tune)."""
        return self.val_scores(copy.deepcopy(self.head).cpu().eval())


def feasibility(bal_acc: float, reference: float, tolerance: float) -> float:
    """The constraint value: <= 0 when val balanced accuracy is at most ``tolerance`` below the reference."""
    return float(reference - tolerance - bal_acc)


# --- the objective ------------------------------------------------------------------------------

def make_objective(config: dict) -> Callable:
    """objective(trial, report) for the plain values in ``config`` (built by tuning/targets.py; ``classes``:
    the task labels, params ``data.classes``)."""
    from dermagan.classify.artifact import load_trained  # the train stage's model format

    space, dx, classes = config["space"], config["class"], tuple(config["classes"])
    check_gan_space(space, f"tune.gan.space")
    if dx not in classes:
        raise DermaganError(f"tune gan: unknown class '{dx}'; the task labels (data.classes) are {list(classes)}")
    label, device = classes.index(dx), pick_device(config["device"])
    prepared = Path(config["prepared"])
    train, val = read_split(prepared, "train"), read_split(prepared, "val")
    mask = train.labels == label
    if not mask.any():
        raise DermaganError(f"{prepared}: no real train images of class '{dx}'")
    images = torch.from_numpy(train.images[mask]).permute(0, 3, 1, 2)
    base = stage_one_state(Path(config["base_dir"]) / "base.pt")
    stage2 = StganConfig(**config["stage2"])
    encoder_path = Path(config["domain_encoder"]) / ENCODER_FILE
    encoder = load_encoder(encoder_path, device)
    real_features = encode(encoder, train.images[mask])
    model, _ = load_trained(Path(config["classifier"]))
    probe = HeadProbe(model, train, val, ProbeConfig(**config["probe"]), device, classes)
    reference, untuned = probe.score(), probe.untuned()
    tolerance, every = float(config["tolerance"]), int(config["eval_every_images"])
    proxy_samples, seed = int(config["proxy_samples"]), int(config["generate_seed"])

    def proxy(trainer: StganTrainer) -> float:
        fakes = sample_images(trainer.G_ema, proxy_samples, seed, label=trainer.cfg.fixed_label)
        return frechet_distance(real_features, encode(encoder, fakes))

    def objective(trial, report) -> float:
        values = suggest(trial, space)
        amount = int(values.get(AMOUNT, config["amount"]))
        cfg = replace(stage2, **stage2_overrides(values), snapshot_every_images=0, checkpoint_every_images=0)
        mlflow.log_params({**{f"trial.{k}": v for k, v in values.items()}, "class": dx, "amount": amount,
                           **{f"stage2.{k}": v for k, v in cfg.__dict__.items()}})
        mlflow.log_metrics({f"reference/{k}": v for k, v in reference.items()})
        points = list(range(every, cfg.total_images, every)) + [cfg.total_images]
        report.plan(len(points))
        torch.manual_seed(cfg.seed)
        trainer = StganTrainer(cfg, images, None, device, init=base)
        for images_seen in points:
            train_gan(trainer, stop_after_images=images_seen)
            fd = proxy(trainer)
            report(trainer.images_seen, -fd, {"proxy/domain_fd": fd, "gan/images_seen": trainer.images_seen})
        synthetic = sample_images(trainer.G_ema, amount, seed, label=cfg.fixed_label)
        scores = probe.score(synthetic, label)
        constraint = feasibility(scores["val_bal_acc"], reference["val_bal_acc"], tolerance)
        trial.set_constraint("val_bal_acc", constraint)
        gain = scores[f"val_recall_{dx}"] - reference[f"val_recall_{dx}"]
        for key, value in {**scores, "constraint": constraint, "gain_recall": gain,
                           "reference_bal_acc": reference["val_bal_acc"],
                           "reference_recall": reference[f"val_recall_{dx}"],
                           "untuned_bal_acc": untuned["val_bal_acc"]}.items():
            trial.set_user_attr(key, float(value))
        mlflow.log_metrics({**{f"probe/{k}": v for k, v in scores.items()}, "probe/constraint": constraint,
                            "probe/gain_recall": gain, "feasible": float(constraint <= 0)})
        return float(scores[f"val_recall_{dx}"])

    objective.reference = reference
    objective.untuned = untuned
    return objective
