"""Class-expert discriminators as frozen feature extractors for a classifier arm (``experts`` in an arm).

``bank``: the frozen per-class STGAN stage-2 discriminators and their file ``experts.pt`` (written
into the arm's training-set folder by validate_augmented). ``model``: the classifier that puts
their features beside the backbone's.
"""

from dermagan.experts.bank import (
    EXPERTS_FILE,
    ClassExperts,
    ExpertSettings,
    collect_experts,
    load_experts,
    parse_experts,
    save_experts,
)
from dermagan.experts.model import KIND, ClassExpertClassifier, build_expert_classifier, load_expert_classifier

__all__ = ["EXPERTS_FILE", "KIND", "ClassExpertClassifier", "ClassExperts", "ExpertSettings", "build_expert_classifier",
           "collect_experts", "load_experts", "load_expert_classifier", "parse_experts", "save_experts"]
