"""Each protocol choice pinned to the authors' reference code (or a trusted reimplementation),
so that a drift back fails CI. The file each value comes from is named beside it."""

from pathlib import Path

import pytest
import torch

from metabench import MetabenchError, published
from metabench.algorithms import REGISTRY, TaskShape, build_algorithm, make_hyper
from metabench.algorithms.reptile import mini_batches
from metabench.config import load_params, resolve_run
from metabench.prepared import training_queries

ROOT = Path(__file__).resolve().parents[1]


def hyper(name: str, **values):
    return make_hyper(REGISTRY[name].Hyper, values, name)


def test_anil_adapts_the_head_as_learn2learns_anil_fc100():
    # learnables/learn2learn examples/vision/anil_fc100.py: fast_lr=0.1, adapt_steps=5 in training,
    # validation and test alike
    h = hyper("anil")
    assert (h.inner_lr, h.inner_steps, h.test_inner_steps) == (0.1, 5, 5)


@pytest.mark.parametrize("name", ["maml", "fomaml", "metasgd", "anil"])
@pytest.mark.parametrize("shots", [1, 5])
def test_the_maml_family_trains_with_k_queries_per_class(name, shots):
    # cbfinn/maml main.py: DataGenerator(FLAGS.update_batch_size * 2, ...): K support + K query
    # per class; learn2learn anil_fc100.py: FusedNWaysKShots(k=2*shots), halves
    assert REGISTRY[name].training_queries(hyper(name), shots, 15) == shots
    config = resolve_run(load_params(ROOT / "params.yaml"), {"algorithm": name, "shots": shots})
    resolved = make_hyper(REGISTRY[name].Hyper, config.hyper, name)
    assert training_queries(config, REGISTRY[name], resolved) == shots  # and the default profile does not override it


def test_the_default_profile_keeps_anils_reference_adaptation():
    config = resolve_run(load_params(ROOT / "params.yaml"), {"algorithm": "anil"})
    resolved = make_hyper(REGISTRY["anil"].Hyper, config.hyper, "anil")
    assert (resolved.inner_lr, resolved.inner_steps, resolved.test_inner_steps) == (0.1, 5, 5)


def test_matching_networks_scale_the_cosine_attention_as_closer_look():
    # wyharveychen/CloserLookFewShot methods/matchingnet.py: relu(cosine) * 100 before the softmax
    assert hyper("matchingnet").attention_scale == 100.0


def test_reptile_trains_as_openais_supervised_reptile():
    # openai/supervised-reptile README, 5-way Omniglot: --train-shots 10 --inner-batch 10 --inner-iters 5
    h = hyper("reptile")
    assert (h.train_shots, h.inner_batch, h.inner_steps) == (10, 10, 5)
    for shots in (1, 5):  # every training task holds train_shots images per class
        assert shots + REGISTRY["reptile"].training_queries(h, shots, 15) == 10
    torch.manual_seed(0)
    batches = mini_batches(50, 10, 5)  # 5-way × 10: a new mini-batch each step, one pass in all
    assert all(len(b) == 10 for b in batches) and len(torch.cat(batches).unique()) == 50
    spanning = mini_batches(12, 5, 4)  # 20 draws from 12: the second pass starts mid-batch
    assert all(len(b) == 5 for b in spanning) and all(len(b.unique()) <= 5 for b in spanning)


def test_reptile_inner_steps_use_different_mini_batches():
    task = TaskShape(channels=1, image_size=16, train_ways=3, test_ways=3)
    algorithm = build_algorithm("reptile", {"hidden": 3, "inner_batch": 4, "inner_steps": 3}, task, torch.device("cpu"))
    calls = []
    from metabench.algorithms import reptile

    original = reptile.adapt

    def spy(model, params, x, y, *args, **kwargs):
        calls.append(x.clone())
        return original(model, params, x, y, *args, **kwargs)

    reptile.adapt = spy
    try:
        from tests.test_algorithm_protocol import batch

        algorithm.meta_train_step(batch(1))
    finally:
        reptile.adapt = original
    assert len(calls) == 3 and all(len(x) == 4 for x in calls)
    assert not torch.equal(calls[0], calls[1])


def test_the_lstm_meta_learner_as_ravi_and_larochelles_code():
    # twitter-research/meta-learning-lstm config/lstm/train-imagenet-1shot.lua: nEpochs[1]=12, nEpochs[5]=5
    h = hyper("metalstm")
    assert (h.steps_for(1), h.steps_for(5)) == (12, 5)
    assert hyper("metalstm", inner_steps=7).steps_for(1) == 7
    # markdtw/meta-learning-lstm-pytorch scripts/train_5s_5c.sh (hyper-parameters of the authors' code):
    # one episode per meta-update (--episode 50000), Adam lr 1e-3, clipping 0.25, 20 LSTM units
    assert (h.meta_batch, h.meta_lr, h.clip_grad_norm, h.lstm_hidden) == (1, 1e-3, 0.25, 20)
    assert load_params(ROOT / "params.yaml")["algorithms"]["metalstm"]["hyper"]["meta_batch"] == 1
    # markdtw/meta-learning-lstm-pytorch metalearner.py: gate weights U(-0.01, 0.01), b_F U(4, 6), b_I U(-5, -4)
    task = TaskShape(channels=1, image_size=16, train_ways=3, test_ways=3)
    meta = build_algorithm("metalstm", {"hidden": 4}, task, torch.device("cpu")).meta
    for gate in (meta.forget, meta.input):
        assert gate.weight.abs().max() <= 0.01
    assert 4 <= meta.forget.bias.min() and meta.forget.bias.max() <= 6
    assert -5 <= meta.input.bias.min() and meta.input.bias.max() <= -4


def test_siamese_scores_a_class_by_the_mean_of_its_pairs_beyond_one_shot():
    # Koch et al. 2015 define one-shot tasks only (best match); for K shots we pool a class's K pair
    # logits by their mean, which with one shot is Koch's rule (tests/test_metric_algorithms.py)
    assert hyper("siamese").shot_pooling == "mean"


def test_siamese_figures_are_credited_to_the_reimplementation_that_reported_them():
    # Koch et al. 2015 report 20-way 1-shot only (92.0 %, their own protocol); the 5-way figures are
    # Vinyals et al. 2016, Table 1 (Koch's network, fine-tuned)
    for shots, ways, value in ((1, 5, 97.3), (5, 5, 98.4), (1, 20, 88.1), (5, 20, 97.0)):
        accuracy, _, citation = published.lookup("omniglot", "siamese", ways, shots)
        assert accuracy == value and citation.startswith("Vinyals et al. 2016")


def test_relation_network_matches_floodsungs_omniglot_script():
    # floodsung/LearningToCompare_FSL omniglot/omniglot_train_one_shot.py: Adam 1e-3 halved every
    # 100,000 episodes, relation_dim 8, CNNEncoder layer1-2 with padding=0 (28x28 -> 5x5 maps),
    # weights_init, clip_grad_norm(..., 0.5) on each network
    h = hyper("relationnet")
    assert (h.lr, h.lr_halve_every, h.relation_hidden) == (1e-3, 100_000, 8)
    assert (h.unpadded_convs, h.clip_grad_norm, h.init) == (2, 0.5, "reference")
    task = TaskShape(channels=1, image_size=28, train_ways=5, test_ways=5)
    algorithm = build_algorithm("relationnet", {"hidden": 64}, task, torch.device("cpu"))
    algorithm.train(False)
    assert algorithm.embed(torch.zeros(3, 1, 28, 28)).shape == (3, 64, 5, 5)
    assert algorithm.relation.fc[0].in_features == 64  # 5x5 -> pool -> 2x2 -> pool -> 1x1
    conv = algorithm.body.blocks[0][0]
    assert conv.bias.abs().max() == 0
    assert conv.weight.std().item() == pytest.approx((2 / (9 * 64)) ** 0.5, rel=0.15)
    for linear in (algorithm.relation.fc[0], algorithm.relation.fc[2]):
        assert torch.equal(linear.bias, torch.ones_like(linear.bias))
    assert algorithm.relation.fc[0].weight.std().item() == pytest.approx(0.01, rel=0.15)


def test_relation_network_on_miniimagenet_leaves_the_relation_module_unpadded():
    # floodsung/LearningToCompare_FSL miniimagenet/miniimagenet_train_one_shot.py: RelationNetwork
    # layer1-2 Conv2d(128, 64, 3, padding=0), fc1 Linear(64*3*3, 8): 84x84 -> 19x19 maps -> 3x3;
    # the Omniglot script pads its relation convolutions (the default, above)
    import yaml

    profile = yaml.safe_load((ROOT / "pipelines/miniimagenet_conv4/params.yaml").read_text())
    assert profile["algorithms"]["relationnet"]["hyper"]["unpadded_relation"] is True
    assert hyper("relationnet").unpadded_relation is False
    task = TaskShape(channels=3, image_size=84, train_ways=5, test_ways=5)
    algorithm = build_algorithm("relationnet", {"hidden": 64, "unpadded_relation": True}, task, torch.device("cpu"))
    algorithm.train(False)
    assert algorithm.embed(torch.zeros(2, 3, 84, 84)).shape == (2, 64, 19, 19)
    assert algorithm.relation.fc[0].in_features == 64 * 3 * 3
    scores = algorithm.predict(torch.rand(5, 3, 84, 84), torch.arange(5), torch.rand(4, 3, 84, 84), 5)
    assert scores.shape == (4, 5)


def test_relation_network_clips_each_networks_gradient_on_its_own():
    # the reference clips the encoder's and the relation module's gradients separately (0.5 each);
    # one joint clip would leave each network's norm below 0.5, not at it
    from metabench.episodes import Episode

    task = TaskShape(channels=1, image_size=28, train_ways=3, test_ways=3)
    algorithm = build_algorithm("relationnet", {"hidden": 8, "clip_grad_norm": 1e-4}, task, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(1, 6, 1, 28, 28, generator=generator)
    labels = torch.tensor([[0, 1, 2, 0, 1, 2]])
    batch = Episode(images[:, :3], labels[:, :3], images[:, 3:], labels[:, 3:], 3, torch.tensor([[0, 1, 2]]))
    algorithm.train(True)
    algorithm.optimizer.zero_grad()
    algorithm.accumulate_meta_gradient(batch)
    for network in (algorithm.body, algorithm.relation):
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in network.parameters()]))
        assert norm.item() == pytest.approx(1e-4, rel=1e-2)  # clip_grad_norm_ divides by norm + 1e-6


def test_siamese_distorts_training_pairs_as_koch_et_al():
    # Koch et al. 2015, "affine distortions": theta in [-10, 10] degrees, rho_x, rho_y in [-0.3, 0.3],
    # s_x, s_y in [0.8, 1.2], t_x, t_y in [-2, 2] pixels (of 105), each included with probability 0.5
    from metabench.algorithms import siamese

    assert hyper("siamese").distort == 0.5
    assert (siamese.ROTATION_DEGREES, siamese.SHEAR, siamese.SCALE) == (10.0, 0.3, (0.8, 1.2))
    assert siamese.TRANSLATION == pytest.approx(2 / 105)


def test_prototypical_networks_as_snells_run_train():
    # jakesnell/prototypical-networks scripts/train/few_shot/run_train.py: Adam, train.learning_rate
    # 0.001, train.decay_every 20 epochs of 100 episodes (halved: StepLR gamma 0.5), one episode per
    # update; Omniglot trains on 60-way episodes (the default CPU profile uses 20, params.yaml)
    h = hyper("protonet")
    assert (h.lr, h.lr_halve_every, h.meta_batch) == (1e-3, 2000, 1)


def test_maml_and_fomaml_as_cbfinns_omniglot_command():
    # cbfinn/maml main.py, 5-way 1-shot Omniglot: --meta_batch_size=32 --update_lr=0.4 --num_updates=1,
    # meta_lr 0.001; the paper evaluates with 3 steps; --stop_grad=True is FOMAML
    for name, first_order in (("maml", False), ("fomaml", True)):
        h = hyper(name)
        assert (h.meta_lr, h.inner_lr, h.inner_steps, h.test_inner_steps) == (1e-3, 0.4, 1, 3)
        assert (h.meta_batch, h.first_order) == (32, first_order)


def test_meta_sgd_as_li_et_al():
    # Li et al. 2017 (Meta-SGD), few-shot classification experiments: one adaptation step with learned per-parameter rates, initialised
    # U[0.005, 0.1]; the same single step at test time
    h = hyper("metasgd")
    assert (h.inner_steps, h.test_inner_steps, h.lr_init_low, h.lr_init_high) == (1, 1, 0.005, 0.1)


@pytest.mark.parametrize("name", ["baseline", "baselinepp"])
def test_baselines_fine_tune_as_closer_looks_baselinefinetune(name):
    # wyharveychen/CloserLookFewShot methods/baselinefinetune.py: SGD(lr=0.01, momentum=0.9,
    # dampening=0.9, weight_decay=0.001), batch_size 4, 100 epochs; train.py: Adam 1e-3
    h = hyper(name)
    assert (h.lr, h.finetune_lr, h.finetune_momentum, h.finetune_dampening) == (1e-3, 0.01, 0.9, 0.9)
    assert (h.finetune_weight_decay, h.finetune_batch, h.finetune_epochs) == (1e-3, 4, 100)


def test_baselinepp_head_scale_as_closer_looks_distlinear():
    # backbone.py distLinear: scale_factor = 2 if outdim <= 200 else 10; class_wise_learnable_norm = True
    from metabench.algorithms.baseline import cosine_scale

    assert (cosine_scale(5), cosine_scale(200), cosine_scale(201)) == (2, 2, 10)
    assert hyper("baselinepp").class_norm is True


def test_metaoptnet_heads_as_kjunelees_classification_heads():
    # kjunelee/MetaOptNet models/classification_heads.py: MetaOptNetHead_SVM_CS(C_reg=0.1),
    # R2D2Head(l2_regularizer_lambda=50.0); README's training commands: --eps 0.1 label smoothing
    h = hyper("metaoptnet")
    assert (h.head, h.svm_c, h.ridge_lambda, h.label_smoothing) == ("svm", 0.1, 50.0, 0.1)


def test_relation_networks_transductive_scoring_is_the_reference_test(tmp_path):
    # floodsung omniglot/omniglot_train_one_shot.py, "Testing...": never calls .eval(), so its
    # BatchNorm2d layers normalise the sample batch, the test batch and the relation pairs each
    # with their own batch statistics; `scoring: transductive` scores exactly so
    import copy

    from metabench.algorithms.relationnet import class_sums, pair_up
    from metabench.episodes import EpisodeIndices, ImageBank
    from metabench.evaluation import episode_accuracies
    from tests.conftest import tiny_split

    assert hyper("relationnet").scoring == "inductive"  # the default keeps per-image embeddings
    task = TaskShape(channels=1, image_size=28, train_ways=5, test_ways=5)
    torch.set_default_dtype(torch.float64)
    try:
        algorithm = build_algorithm("relationnet", {"hidden": 8, "scoring": "transductive"}, task, torch.device("cpu"))
        assert algorithm.evaluates_transductively and not type(algorithm).transductive
        algorithm.train(False)
        generator = torch.Generator().manual_seed(0)
        support_x, query_x = (
            torch.rand(5, 1, 28, 28, generator=generator),
            torch.rand(10, 1, 28, 28, generator=generator),
        )
        support_y = torch.arange(5)
        before = {k: v.clone() for k, v in algorithm.body.state_dict().items()}
        scores = algorithm.predict(support_x, support_y, query_x, 5)
        body, relation = copy.deepcopy(algorithm.body).train(), copy.deepcopy(algorithm.relation).train()
        pairs = pair_up(class_sums(body(support_x), support_y, 5), body(query_x))
        expected = relation(pairs).view(10, 5)  # the reference: concatenated pairs, training-mode batch norm
        torch.testing.assert_close(scores, expected, rtol=1e-10, atol=1e-12)
        for key, value in algorithm.body.state_dict().items():
            assert torch.equal(value, before[key]), f"{key} changed: scoring must not touch running statistics"
        alone = algorithm.predict(support_x, support_y, query_x[:2], 5)
        assert not torch.allclose(alone, scores[:2])  # a query's score depends on the other queries
    finally:
        torch.set_default_dtype(torch.float32)
    # the evaluator does not score a transductive method from per-image cached embeddings
    split = tiny_split(6, 8)
    algorithm = build_algorithm("relationnet", {"hidden": 8, "scoring": "transductive"}, task, torch.device("cpu"))
    rng = torch.Generator().manual_seed(1)
    support = torch.stack([torch.randperm(8, generator=rng)[:3] + 8 * c for c in range(5)])
    episodes = EpisodeIndices(support[None, :, :1].numpy(), support[None, :, 1:].numpy(), torch.arange(5)[None].numpy())
    bank = ImageBank(split)
    episode = bank.episodes(episodes)
    algorithm.train(False)
    by_hand = algorithm.predict(episode.support_x[0], episode.support_y[0], episode.query_x[0], 5)
    accuracy = (by_hand.argmax(1) == episode.query_y[0]).double().mean().item()
    assert episode_accuracies(algorithm, bank, episodes)[0] == accuracy
    with pytest.raises(MetabenchError, match="scoring must be inductive or transductive"):
        hyper("relationnet", scoring="batch")
