"""hecc.torch.block_prune: weights pruned in the blocks of the slots layout (ciphertext products
and rotations), and the compile report's count of what zero weights removed."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import hecc  # noqa: E402
from hecc.errors import InputError, UserError  # noqa: E402
from hecc.report import render, zero_block_counts  # noqa: E402
from hecc.torch import block_prune  # noqa: E402
from hecc.torch.prune import _Layers, _Structure, _export, _lower  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class Square(nn.Module):
    def forward(self, x):
        return x * x


def tiny():
    """7x7 images: conv, x^2, average pooling, dense, x^2, dense."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), Square(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(36, 16), Square(), nn.Linear(16, 10))


@pytest.fixture(scope="module")
def mnist7():
    with np.load(os.path.join(HERE, "data", "mnist_sample.npz")) as d:
        x = torch.from_numpy(d["x_train"][:600].astype(np.float32) / 255.0)[:, None]
        y = torch.from_numpy(d["y_train"][:600].astype(np.int64))
    return torch.nn.functional.avg_pool2d(x, 4), y


@pytest.fixture(scope="module")
def trained(mnist7):
    x, y = mnist7
    torch.manual_seed(0)
    model = tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(6):
        for i in range(0, len(x), 64):
            loss = nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    return model.eval()


def _compile(model, x):
    return hecc.compile(_export(model, tuple(x.shape[1:])), calibration=x[:32].numpy(), layout="slots")


def _ops(program):
    counts = {"products": 0, "rotations": 0}
    for op in program.graph.ops:
        if op.name == "ckks.mul_plain":
            counts["products"] += op.result.type.count
        elif op.name == "ckks.rotate":
            counts["rotations"] += op.result.type.count
    return counts


@pytest.fixture(scope="module")
def unpruned(trained, mnist7):
    return _compile(trained, mnist7[0])


@pytest.fixture(scope="module")
def pruned(trained, mnist7, unpruned):
    before = {k: v.detach().clone() for k, v in trained.state_dict().items()}
    model = block_prune(trained, unpruned, 0.75, mnist7, rounds=2, epochs=1, batch_size=64)
    after = trained.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the caller's model is untouched
    return model


def test_sparsity_target_is_reached_with_a_plain_module(pruned):
    weights = torch.cat([m.weight.detach().ravel() for m in pruned.modules() if isinstance(m, (nn.Linear, nn.Conv2d))])
    assert float((weights == 0).float().mean()) >= 0.75
    assert type(pruned) is nn.Sequential and not pruned.training
    for m in pruned.modules():  # no pruning reparametrization or hook is left behind
        assert not m._forward_pre_hooks and not hasattr(m, "weight_orig")
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            assert isinstance(m.weight, nn.Parameter)
    info = pruned.hecc_pruning
    assert info["target"] == {"sparsity": 0.75} and 2 <= len(info["rounds"]) <= 4  # up to 2 more rounds
    assert info["after"]["parameters"] < 0.35 * info["before"]["parameters"]


def test_pruned_model_compiles_with_fewer_products_and_rotations(pruned, unpruned, mnist7):
    x = mnist7[0]
    program = _compile(pruned, x)
    before, after = _ops(unpruned), _ops(program)
    assert after["products"] < before["products"] and after["rotations"] <= before["rotations"]
    assert pruned.hecc_pruning["after"]["products"] == after["products"]
    # the report counts what the zero weights removed against the same maps without zeros: the
    # unpruned model's program
    products, rotations, dense_products, dense_rotations = zero_block_counts(program)
    assert (products, rotations) == (after["products"], after["rotations"])
    assert (dense_products, dense_rotations) == (before["products"], before["rotations"])
    assert (f"zero weights skipped: {dense_products - products} products and {dense_rotations - rotations} "
            "rotations fewer than the same maps with no zero weights") in render(program, measure=False)
    assert zero_block_counts(unpruned) is None  # no zero weight, no line
    assert "zero weights skipped" not in render(unpruned, measure=False)
    # the pruned model still computes the same function through the compiled program
    expected = pruned(x[:4]).detach().numpy()
    got = program.run(x[:4].numpy(), backend="sim")
    np.testing.assert_allclose(next(iter(got.values())), expected, rtol=1e-3, atol=1e-3)


def test_structure_maps_every_weight_to_the_products_it_feeds(trained):
    """Zeroing the weights of one product (as the structure lists them) removes that product and
    nothing else from the program."""
    layers = _Layers(trained)
    structure = _Structure(trained, layers, (1, 7, 7), {"slots": 4096})
    assert structure.multi == 0 and not structure.fixed.any()
    sizes = np.diff(structure.p_ptr)
    assert structure.products == structure.counts["products"] and sizes.min() > 0
    assert np.unique(structure.p_w).size == layers.total  # every weight feeds some product
    # a product whose weights feed no other product, in a map of several products (a map with no
    # weight left is still one product, by zeros)
    owners = np.bincount(structure.p_w, minlength=layers.total)
    offsets = np.cumsum([0] + [m.count for m in structure.maps])
    several = np.concatenate([np.arange(lo, hi) for lo, hi in zip(offsets[:-1], offsets[1:]) if hi - lo > 1])
    alone = next(p for p in several.tolist()
                 if np.all(owners[structure.p_w[structure.p_ptr[p]:structure.p_ptr[p + 1]]] == 1))
    model = __import__("copy").deepcopy(trained)
    weights = layers.weights()
    weights[structure.p_w[structure.p_ptr[alone]:structure.p_ptr[alone + 1]]] = 0
    layers.assign(_Layers(model).modules, weights)
    _, counts, _ = _lower(_export(model, (1, 7, 7)), {"slots": 4096})
    assert counts["products"] == structure.counts["products"] - 1


def test_operation_target(trained, mnist7, unpruned):
    before = _ops(unpruned)
    goal = (before["products"] + before["rotations"]) // 2
    model = block_prune(trained, "slots", goal, mnist7, rounds=2, epochs=1, batch_size=64)
    after = _ops(_compile(model, mnist7[0]))
    assert after["products"] + after["rotations"] <= goal


def test_the_operations_objective_is_the_one_counted(trained, mnist7, unpruned):
    """block_prune(objective="operations") lowers and counts the programs that
    ``hecc.compile(..., objective="operations")`` makes (on this small model: fewer products and
    rotations than the default objective's, none of them removable without emptying a logit's row
    of weights, so the model comes back as it was, with a warning)."""
    x = mnist7[0]
    start = _ops(hecc.compile(_export(trained, tuple(x.shape[1:])), calibration=x[:32].numpy(), layout="slots",
                              objective="operations"))
    default = _ops(unpruned)
    assert start["products"] + start["rotations"] < default["products"] + default["rotations"]
    goal = (start["products"] + start["rotations"]) // 2
    with pytest.warns(hecc.HeccWarning, match="did not reach"):
        model = block_prune(trained, "slots", goal, mnist7, rounds=1, epochs=0.25, batch_size=64,
                            objective="operations")
    assert {k: model.hecc_pruning["before"][k] for k in start} == start
    with pytest.raises(UserError, match="objective"):
        block_prune(trained, "slots", goal, mnist7, objective="speed")


def test_pruning_a_pruned_model_keeps_its_zeros(pruned, mnist7):
    """A model pruned already (here by an earlier block_prune) is pruned further from where it
    is: its zero weights stay zero through fine-tuning, even when the first round is undone
    (they once grew back: all 61,470 LeNet-5 weights from 4,917)."""
    def zeros(model):
        return torch.cat([m.weight.detach().ravel() == 0 for m in model.modules()
                          if isinstance(m, (nn.Linear, nn.Conv2d))])
    before = zeros(pruned)
    again = block_prune(pruned, "slots", 0.8, mnist7, rounds=1, epochs=0.5, batch_size=64,
                        max_accuracy_drop=0.0, eval_data=mnist7)
    assert bool(torch.all(zeros(again)[before]))
    assert again.hecc_pruning["after"]["parameters"] <= pruned.hecc_pruning["after"]["parameters"]


def test_a_round_that_removes_nothing_is_tried_again_with_half_the_step(trained, mnist7, unpruned, monkeypatch):
    """When the compiler lays a round's sparser maps out with as many operations (here made so:
    the program after the first round reports 1,000 more rotations), the round is undone and
    tried again with half its step, and pruning goes on from there."""
    from hecc.torch import prune
    built = []

    class Flipping(prune._Structure):
        def __init__(self, *args):
            super().__init__(*args)
            built.append(self)
            if len(built) == 2:  # the program after the first round
                self.counts["rotations"] += 1000
    monkeypatch.setattr(prune, "_Structure", Flipping)
    before = _ops(unpruned)
    goal = (before["products"] + before["rotations"]) // 2
    model = block_prune(trained, "slots", goal, mnist7, rounds=2, epochs=0.5, batch_size=64)
    rounds = model.hecc_pruning["rounds"]
    assert "tried again with half the step" in rounds[0]["undone"]
    assert rounds[1]["aim"] > rounds[0]["aim"] and "undone" not in rounds[1]
    assert model.hecc_pruning["after"]["products"] + model.hecc_pruning["after"]["rotations"] < \
        model.hecc_pruning["before"]["products"] + model.hecc_pruning["before"]["rotations"]


def test_bad_inputs_are_typed_errors(trained, mnist7, unpruned):
    x, y = mnist7
    for target in (0.0, 1.0, 1.5, -3, 0, True, "fast", "-1s", None):
        with pytest.raises(UserError):
            block_prune(trained, "slots", target, (x, y))
    with pytest.raises(UserError, match="slots layout"):
        block_prune(trained, "batch", 0.5, (x, y))
    with pytest.raises(UserError, match="Program or 'slots'"):
        block_prune(trained, 3, 0.5, (x, y))
    with pytest.raises(UserError, match="nn.Module"):
        block_prune("model.onnx", "slots", 0.5, (x, y))
    with pytest.raises(UserError, match="no nn.Linear"):
        block_prune(Square(), "slots", 0.5, (x, y))
    with pytest.raises(UserError, match="rounds"):
        block_prune(trained, "slots", 0.5, (x, y), rounds=0)
    with pytest.raises(UserError, match="step"):
        block_prune(trained, "slots", 0.5, (x, y), step=0)
    with pytest.raises(UserError, match="eval_data"):
        block_prune(trained, "slots", 0.5, (x, y), max_accuracy_drop=0.01)
    with pytest.raises(InputError):
        block_prune(trained, "slots", 0.5, x)
    with pytest.raises(InputError, match="labels"):
        block_prune(trained, "slots", 0.5, (x, y[:10]))
    with pytest.raises(InputError, match="labels"):
        block_prune(trained, "slots", 0.5, (x, y.float()))
    with pytest.raises(InputError, match="float"):
        block_prune(trained, "slots", 0.5, (y, y))
    batch = hecc.compile(_export(trained, (1, 7, 7)), calibration=x[:16].numpy(), layout="batch")
    with pytest.raises(UserError, match="slots"):
        block_prune(trained, batch, 0.5, (x, y))
