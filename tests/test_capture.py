"""The CPU gate for CUDA-graph capture (catvae.fast.capture_hazards): every step function the fast path captures
is run after its warm-up under a dispatch mode that records what a CUDA graph cannot capture. A step that would
fail at capture on a GPU fails here first, on any machine."""

from __future__ import annotations

import pytest
import torch

import estimators
from catvae import CategoricalVAE
from catvae.core import adam
from catvae.fast import StepRunner, canonical_device, capture_hazards
from catvae.models.stacked import StackedVAE

D = 20  # pixels of the synthetic batch
#: the group mixes `compare --batched` forms: Table 3's (exact-draw and ReDGE runs in one group), blocks of one
#: estimator next to others, the score-function RLOO and Gumbel-Rao inside a stack, one run alone
MIXES = {
    "table3": ["st", "gumbel", "reinmax", "redge", "redge_max", "redge_cov", "redge_max_cov"],
    "blocks": ["redge_cov", "redge_cov", "st", "st", "redge_max"],
    "beyond": ["gumbel", "gumbel_rao", "rloo", "redge_cov"],
    "exact_only": ["st", "reinmax"],
    "one": ["redge"],
}


def _model(seed: int, estimator: str) -> CategoricalVAE:
    torch.manual_seed(seed)
    return CategoricalVAE(estimator=estimator, latent_dim=4, n_categories=3, encoder_hidden=(16,),
                          decoder_hidden=(16,), image_size=D)


def _batch(*lead: int) -> torch.Tensor:
    return (torch.rand(*lead, 8, D, generator=torch.Generator().manual_seed(5)) > 0.5).float()


def _group(names: list[str]) -> StackedVAE:
    """A group of ``names``, run ``r`` built under seed ``r`` with its noise starting where that leaves it."""
    models, states = [], []
    for seed, name in enumerate(names):
        models.append(_model(seed, name))
        states.append({"torch": torch.get_rng_state()})
    return StackedVAE(models, states)


@pytest.mark.parametrize("estimator", estimators.available())
def test_the_single_run_step_of_every_estimator_is_capture_safe(estimator):
    def make():
        model = _model(0, estimator)
        optimizer = model.adam()
        return model.make_step(optimizer), optimizer

    hazards, *_ = capture_hazards(make, _batch())
    assert hazards == []


@pytest.mark.parametrize("mix", MIXES, ids=list(MIXES))
def test_the_group_step_of_every_estimator_mix_is_capture_safe(mix):
    """The group step as `compare --batched --model.init_args.fast_step=true` captures it (prepare_step first, as
    StackedVAE's fast path does). It failed on the Table 3 mix while exact_means made its index with torch.tensor
    inside the step."""
    def make():
        group = _group(MIXES[mix])
        optimizer = group.adam()
        step = group.make_step(optimizer)

        def prepared(x):
            group.prepare_step(x.device)
            return step(x)

        return prepared, optimizer

    hazards, drawn, _ = capture_hazards(make, _batch(len(MIXES[mix])))
    assert hazards == []
    assert drawn  # every mix draws through its runs' generators


@pytest.mark.parametrize("spelling", ["cpu", "cpu:0"])
def test_the_registered_generators_are_the_ones_the_step_draws_from(spelling):
    """A StepRunner registers ``streams.generators(device)`` at capture, after the warm-up, with the device spelled
    as its caller spells it (``cuda`` in bench sweep, ``cuda:0`` in the model); the step then asks with its logits'
    device. Both must be the same generator objects, and the step must make none: a generator made at capture
    reads its predecessor's state, which CUDA refuses ("Cannot call CUDAGeneratorImpl::current_seed during CUDA
    graph capture")."""
    holder = {}

    def make():
        group = holder["group"] = _group(MIXES["table3"])
        optimizer = group.adam()
        return group.make_step(optimizer), optimizer, lambda: group.streams.generators(torch.device(spelling))

    hazards, drawn, registered = capture_hazards(make, _batch(len(MIXES["table3"])))
    assert hazards == []
    assert holder["group"].streams.generators("cpu") == registered  # the same objects
    # the dispatcher hands the step's generators over as new Python wrappers: tell them apart by their states
    # (every run's stream differs): the generators drawn from are the registered ones, every run's among them
    state = lambda g: bytes(g.get_state().numpy())  # noqa: E731
    assert len({state(r) for r in registered}) == len(registered)
    assert drawn and {state(g) for g in drawn} == {state(r) for r in registered}


def test_device_spellings_are_one_device():
    assert canonical_device("cpu:0") == canonical_device(torch.device("cpu")) == torch.device("cpu")
    assert canonical_device("cuda") == torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available()
                                                    else 0)
    assert canonical_device("cuda:1") == torch.device("cuda", 1)


# -- the gate itself catches each kind of hazard ---------------------------------------------------------------
def _adam_step(body):
    """A capture-shaped step (zero_grad, forward, backward, Adam) around ``body(w, x) -> loss``."""
    def make():
        w = torch.nn.Parameter(torch.ones(4))
        optimizer = adam([w], 0.1, w.device)  # fused on CPU: no host read (the default CPU Adam reads its step)

        def step(x):
            optimizer.zero_grad(set_to_none=True)
            loss = body(w, x)
            loss.backward()
            optimizer.step()
            return {"loss": loss.detach()}

        return step, optimizer

    return make


HAZARDS = {
    "python data": (lambda w, x: (w * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum(), "aten.lift_fresh"),
    "host read": (lambda w, x: w.sum() * float(x.sum()), "aten._local_scalar_dense"),
    "boolean mask": (lambda w, x: (w * x)[x > 0.5].sum(), "boolean mask"),
    "nonzero": (lambda w, x: w[x.nonzero()[:, 0]].sum(), "aten.nonzero"),
    "generator made": (lambda w, x: (w * torch.rand(4, generator=torch.Generator())).sum(), "torch.Generator made"),
    "generator state": (lambda w, x: (w + torch.get_rng_state().float().mean()).sum(), "torch.get_rng_state"),
}


@pytest.mark.parametrize("kind", HAZARDS)
def test_the_gate_names_each_hazard_and_where_it_is(kind):
    body, expected = HAZARDS[kind]
    hazards, *_ = capture_hazards(_adam_step(body), torch.rand(4))
    assert hazards and expected in hazards[0] and "tests/test_capture.py:" in hazards[0], hazards


def test_the_gate_finds_lazily_created_optimizer_state():
    def make():
        w = torch.nn.Parameter(torch.ones(4))
        optimizer = torch.optim.Adam([w], lr=0.1)

        def step(x):
            return {"loss": (w * x).sum().detach()}  # never steps the optimizer: its state would appear at capture

        return step, optimizer

    hazards, *_ = capture_hazards(make, torch.rand(4))
    assert any("optimizer has no state" in h for h in hazards)


def test_the_gate_passes_a_clean_step():
    hazards, drawn, _ = capture_hazards(_adam_step(lambda w, x: ((w - x) ** 2).sum()), torch.rand(4))
    assert hazards == [] and drawn == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a GPU")
@pytest.mark.parametrize("spelling", ["cuda", "cuda:0"])
def test_a_group_step_captures_with_either_device_spelling_on_cuda(spelling):
    group = _group(MIXES["table3"]).cuda()
    optimizer = torch.optim.Adam(group.parameters(), lr=group.lr, capturable=True)
    runner = StepRunner(group.make_step(optimizer), generators=lambda: group.streams.generators(torch.device(spelling)))
    for _ in range(5):
        group.prepare_step(torch.device("cuda"))
        runner(_batch(len(MIXES["table3"])).cuda())
    assert runner.captured
