"""The ``class_experts`` classifier: a trainable backbone beside frozen class-expert discriminators.

``ClassExpertClassifier`` has the interface of :class:`dermagan.classify.models.NormalizedClassifier`
(input float (N, 3, H, W) in [0, 1]; ``classes``, ``image_size``, ``tta``, a ``temperature``
buffer; logits / temperature; in eval mode with ``tta`` the log of the softmax averaged over the
dihedral views), so ``Trainer``/``fit``, temperature scaling, ``predict_proba`` and MLflow's
pickle format work unchanged. Logits = Linear(Dropout([backbone pooled features ;
LayerNorm(expert features)])). The backbone is the recipe's timm network with its packaged
weights (built by ``create_classifier``, as every arm) and its classifier removed; the experts
(:class:`dermagan.experts.bank.ClassExperts`) are frozen and always in eval mode, so the optimiser
only moves the backbone, the LayerNorm and the head.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dermagan.classify.models import NormalizedClassifier, create_classifier, dihedral_views
from dermagan.errors import DermaganError
from dermagan.experts.bank import ClassExperts, load_experts, parse_experts

KIND = "class_experts"


class ClassExpertClassifier(nn.Module):
    """Backbone features + frozen class-expert features -> one linear head (see the module docstring)."""

    def __init__(self, base: NormalizedClassifier, experts: ClassExperts, dropout: float = 0.0):
        super().__init__()
        net = base.net
        if not hasattr(net, "reset_classifier") or not hasattr(net, "num_features"):
            raise DermaganError(f"params: class experts need a timm backbone (its pooled features), got "
                                f"{type(net).__name__}; choose an efficientnet_lite/mobilenetv2 backbone")
        if experts.image_size != base.image_size:
            raise DermaganError(f"class experts were trained on {experts.image_size} px images but the classifier "
                                f"sees {base.image_size} px (prepare.image_size); re-train the GANs or change it")
        net.reset_classifier(0)  # the backbone now returns its pooled features
        self.net = net
        self.experts = experts
        self.classes = base.classes
        self.image_size = base.image_size
        self.tta = base.tta
        self.dropout_rate = float(dropout)
        self.num_features = int(net.num_features)
        self.expert_norm = nn.LayerNorm(experts.width)  # expert features on the backbone's scale
        self.dropout = nn.Dropout(self.dropout_rate)
        self.head = nn.Linear(self.num_features + experts.width, len(self.classes))
        self.register_buffer("mean", base.mean.clone())
        self.register_buffer("std", base.std.clone())
        self.register_buffer("temperature", torch.tensor(1.0))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, backbone + experts) head input for images in [0, 1]; the expert block carries no gradient."""
        backbone = self.net((x - self.mean) / self.std)
        experts = self.experts(x * 2 - 1)  # the GAN convention: [-1, 1]
        return torch.cat([backbone, self.expert_norm(experts)], dim=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.tta == "none":
            return self.logits(x) / self.temperature
        proba = torch.stack([torch.softmax(self.logits(v), dim=1) for v in dihedral_views(x, self.tta)]).mean(0)
        return proba.clamp_min(1e-12).log() / self.temperature

    def checkpoint_fields(self) -> dict:
        """What model.pt needs beyond the state dict to rebuild this model (see :func:`load_expert_classifier`)."""
        return {"kind": KIND, KIND: {"dropout": self.dropout_rate, **self.experts.describe()}}


def build_expert_classifier(recipe: dict, classes: tuple[str, ...], image_size: int, experts_setting,
                            trainset_dir: Path | None, arm: str = "arm") -> ClassExpertClassifier:
    """The recipe's backbone (packaged weights, drop-path, TTA) plus the arm's frozen experts.

    The recipe's ``dropout`` acts on the whole head input, so the backbone is built without its own.
    """
    settings = parse_experts(experts_setting, classes, f"arms.{arm}")
    if settings is None:
        raise DermaganError(f"params: arms.{arm} has no experts block")
    experts = load_experts(trainset_dir, settings, arm)
    base = create_classifier(recipe["backbone"], classes, image_size, recipe["pretrained"], dropout=0.0,
                             drop_path=float(recipe["drop_path"]), tta=str(recipe["tta"]))
    return ClassExpertClassifier(base, experts, float(recipe["dropout"]))


def load_expert_classifier(saved: dict, where: Path | str = "model.pt") -> ClassExpertClassifier:
    """Rebuild a trained ``class_experts`` model from what the train stage saved in model.pt."""
    fields = saved.get(KIND)
    if not isinstance(fields, dict):
        raise DermaganError(f"{where}: kind '{KIND}' but no '{KIND}' block; re-run the train stage")
    experts = ClassExperts(fields["configs"], fields["groups"], fields["method"], fields.get("sources"),
                           where=str(where))
    base = create_classifier(saved["backbone"], tuple(saved["classes"]), saved["image_size"],
                             tta=saved.get("tta", "none"))
    model = ClassExpertClassifier(base, experts, float(fields.get("dropout", 0.0)))
    state = saved["state_dict"]
    experts.load_checked(state, prefix="experts.", where=str(where))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise DermaganError(f"{where}: weights do not match the class-experts model it describes: {exc}") from exc
    return model


__all__ = ["ClassExpertClassifier", "build_expert_classifier", "load_expert_classifier", "KIND"]
