"""Published accuracies (%) to stand beside ours, with the protocol they were measured under.

Source: the papers' tables as collected in shared/DESIGN.md (Conv-4 backbone unless noted).
Omniglot numbers in these papers use 1,200 training characters plus rotations as new classes
(the Vinyals-style protocol) at 28×28; metabench's ``omniglot`` store uses the Lake split without
rotations by default, so compare with care. miniImageNet reproductions commonly land 1-3 points
below the papers.
"""

from __future__ import annotations

# Finn et al. 2017 has no first-order row for Omniglot: these are Nichol et al.'s, run with cbfinn's code
NICHOL_FOMAML = "Nichol et al. 2018, Table 2 (1st-order MAML + Transduction)"

# (dataset family, algorithm, ways, shots) -> (accuracy %, ± as published or None, citation)
PUBLISHED: dict[tuple[str, str, int, int], tuple[float, float | None, str]] = {
    ("omniglot", "maml", 5, 1): (98.7, 0.4, "Finn et al. 2017"),
    ("omniglot", "maml", 5, 5): (99.9, 0.1, "Finn et al. 2017"),
    ("omniglot", "maml", 20, 1): (95.8, 0.3, "Finn et al. 2017"),
    ("omniglot", "maml", 20, 5): (98.9, 0.2, "Finn et al. 2017"),
    ("omniglot", "fomaml", 5, 1): (98.3, 0.5, NICHOL_FOMAML),
    ("omniglot", "fomaml", 5, 5): (99.2, 0.2, NICHOL_FOMAML),
    ("omniglot", "fomaml", 20, 1): (89.4, 0.5, NICHOL_FOMAML),
    ("omniglot", "fomaml", 20, 5): (97.9, 0.1, NICHOL_FOMAML),
    ("omniglot", "protonet", 5, 1): (98.8, None, "Snell et al. 2017"),
    ("omniglot", "protonet", 5, 5): (99.7, None, "Snell et al. 2017"),
    ("omniglot", "protonet", 20, 1): (96.0, None, "Snell et al. 2017"),
    ("omniglot", "protonet", 20, 5): (98.9, None, "Snell et al. 2017"),
    ("omniglot", "reptile", 5, 1): (95.39, None, "Nichol et al. 2018"),
    ("omniglot", "reptile", 5, 5): (98.90, None, "Nichol et al. 2018"),
    ("omniglot", "reptile", 20, 1): (88.14, None, "Nichol et al. 2018"),
    ("omniglot", "reptile", 20, 5): (96.65, None, "Nichol et al. 2018"),
    ("omniglot", "matchingnet", 5, 1): (98.1, None, "Vinyals et al. 2016"),
    ("omniglot", "matchingnet", 5, 5): (98.9, None, "Vinyals et al. 2016"),
    ("omniglot", "matchingnet", 20, 1): (93.8, None, "Vinyals et al. 2016"),
    ("omniglot", "matchingnet", 20, 5): (98.5, None, "Vinyals et al. 2016"),
    ("omniglot", "relationnet", 5, 1): (99.6, 0.2, "Sung et al. 2018"),
    ("omniglot", "relationnet", 5, 5): (99.8, 0.1, "Sung et al. 2018"),
    ("omniglot", "relationnet", 20, 1): (97.6, 0.2, "Sung et al. 2018"),
    ("omniglot", "relationnet", 20, 5): (99.1, 0.1, "Sung et al. 2018"),
    ("omniglot", "metasgd", 5, 1): (99.53, None, "Li et al. 2017"),
    ("omniglot", "metasgd", 5, 5): (99.93, None, "Li et al. 2017"),
    ("omniglot", "anil", 20, 1): (96.2, 0.5, "Raghu et al. 2020, ± is a std over 3 seeds"),
    ("omniglot", "anil", 20, 5): (98.0, 0.3, "Raghu et al. 2020, ± is a std over 3 seeds"),
    # Koch et al. 2015 report only 20-way 1-shot, 92.0 %, on their own within-alphabet protocol; the
    # figures in the standard protocol are Vinyals et al.'s reimplementation of Koch's network
    # (Table 1, the row with fine-tuning; without it: 96.7, 98.4, 88.0, 96.5)
    ("omniglot", "siamese", 5, 1): (97.3, None, "Vinyals et al. 2016 (Koch et al.'s siamese net, fine-tuned)"),
    ("omniglot", "siamese", 5, 5): (98.4, None, "Vinyals et al. 2016 (Koch et al.'s siamese net, fine-tuned)"),
    ("omniglot", "siamese", 20, 1): (88.1, None, "Vinyals et al. 2016 (Koch et al.'s siamese net, fine-tuned)"),
    ("omniglot", "siamese", 20, 5): (97.0, None, "Vinyals et al. 2016 (Koch et al.'s siamese net, fine-tuned)"),
    ("miniimagenet", "reptile", 5, 1): (47.07, None, "Nichol et al. 2018"),
    ("miniimagenet", "reptile", 5, 5): (62.74, None, "Nichol et al. 2018"),
    ("miniimagenet", "matchingnet", 5, 1): (43.56, 0.84, "Vinyals et al. 2016"),
    ("miniimagenet", "matchingnet", 5, 5): (55.31, 0.73, "Vinyals et al. 2016"),
    ("miniimagenet", "relationnet", 5, 1): (50.44, 0.82, "Sung et al. 2018"),
    ("miniimagenet", "relationnet", 5, 5): (65.32, 0.70, "Sung et al. 2018"),
    ("miniimagenet", "metasgd", 5, 1): (50.47, 1.87, "Li et al. 2017"),
    ("miniimagenet", "metasgd", 5, 5): (64.03, 0.94, "Li et al. 2017"),
    ("miniimagenet", "anil", 5, 1): (46.7, 0.4, "Raghu et al. 2020, ± is a std over 3 seeds"),
    ("miniimagenet", "anil", 5, 5): (61.5, 0.5, "Raghu et al. 2020, ± is a std over 3 seeds"),
    ("miniimagenet", "baselinepp", 5, 1): (48.24, 0.75, "Chen et al. 2019"),
    ("miniimagenet", "baselinepp", 5, 5): (66.43, 0.63, "Chen et al. 2019"),
    ("miniimagenet", "metaoptnet", 5, 1): (62.64, 0.61, "Lee et al. 2019, SVM head, ResNet-12"),
    ("miniimagenet", "metaoptnet", 5, 5): (78.63, 0.46, "Lee et al. 2019, SVM head, ResNet-12"),
    ("miniimagenet", "maml", 5, 1): (48.70, 1.84, "Finn et al. 2017"),
    ("miniimagenet", "maml", 5, 5): (63.11, 0.92, "Finn et al. 2017"),
    ("miniimagenet", "fomaml", 5, 1): (48.07, 1.75, "Finn et al. 2017"),
    ("miniimagenet", "fomaml", 5, 5): (63.15, 0.91, "Finn et al. 2017"),
    ("miniimagenet", "protonet", 5, 1): (49.42, 0.78, "Snell et al. 2017"),
    ("miniimagenet", "protonet", 5, 5): (68.20, 0.66, "Snell et al. 2017"),
}

# The scoring mode (metabench.scoring) of each method's published figures, as the code that
# produced them scores: (mode, where it is decided). A method missing here has no reference code
# that says (Meta-SGD, ANIL, Matching Networks and the siamese net have none from their authors).
PAPER_SCORING: dict[str, tuple[str, str]] = {
    "maml": (
        "transductive",
        "cbfinn/maml utils.py: tf_layers.batch_norm left in training mode, batch statistics at test",
    ),
    "fomaml": ("transductive", "cbfinn/maml utils.py with --stop_grad (Nichol et al. 2018, Table 2: + Transduction)"),
    "reptile": (
        "inductive",
        "openai/supervised-reptile reptile.py _test_predictions: each query with the support set "
        "unless --transductive; the 95.39 row is the non-transductive one (Nichol et al. 2018, Table 2)",
    ),
    "relationnet": (
        "transductive",
        "floodsung/LearningToCompare_FSL omniglot_train_one_shot.py: never calls eval(), each set's batch statistics",
    ),
    "protonet": ("inductive", "jakesnell/prototypical-networks protonets/utils/model.py evaluate: model.eval()"),
    "baseline": ("inductive", "wyharveychen/CloserLookFewShot save_features.py: model.eval() before the features"),
    "baselinepp": ("inductive", "wyharveychen/CloserLookFewShot save_features.py: model.eval() before the features"),
    "metaoptnet": ("inductive", "kjunelee/MetaOptNet test.py: embedding_net.eval()"),
    "metalstm": (
        "inductive",
        "twitter/meta-learning-lstm model/lstm/meta-learner-lstm.lua: learner.set('evaluate') before the "
        "test set, so queries use statistics gathered on the support set",
    ),
}

PROTOCOLS = {
    "omniglot": "papers: 1,200 training characters + rotations as classes, 28×28; MAML 600 test tasks, "
    "ProtoNets 1,000 episodes and 60-way training",
    "miniimagenet": "papers: Ravi & Larochelle split, 84×84, 600 test episodes (MAML: 32 filters)",
}


def family(dataset: str) -> str:
    """``omniglot-vinyals-rot`` and ``omniglot`` both belong to the omniglot family."""
    return dataset.split("-")[0]


def lookup(dataset: str, algorithm: str, ways: int, shots: int) -> tuple[float, float | None, str] | None:
    return PUBLISHED.get((family(dataset), algorithm, ways, shots))
