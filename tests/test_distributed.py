"""KS layers across processes (ks_ops.distributed): the DTensor rules of the ks ops, tensor-parallel
KSLinear, DDP and FSDP2 training. Two processes each: CPU over gloo everywhere, and the same checks
over NCCL where two GPUs are visible. Every result is compared with the same computation in one
process (float64, so the tolerances are rounding only)."""
import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
DEVICES = ["cpu"] + [pytest.param("cuda", marks=pytest.mark.cuda)] * (torch.cuda.device_count() >= WORLD)
TOL = dict(rtol=1e-10, atol=1e-12)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(worker, device, *args):
    mp.spawn(_entry, args=(worker, device, _free_port(), args), nprocs=WORLD, join=True)


def _entry(rank, worker, device, port, args):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=rank, world_size=WORLD)
    try:
        worker(rank, device, *args)
    finally:
        dist.destroy_process_group()


def _mesh(device):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device, (WORLD,))


# ---- DTensor rules ------------------------------------------------------------------------------


def _rules_worker(rank, device):
    import ks_ops.distributed  # noqa: F401  (registers the rules)
    from torch.distributed.tensor import Partial, Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.debug import CommDebugMode

    from ks_ops import KSPattern, ks_chain_reference, ks_matmul_reference

    mesh = _mesh(device)
    torch.manual_seed(0)
    p = KSPattern(4, 6, 5, 3)  # a = 4: two whole blocks per rank
    w = p.random_weights(dtype=torch.float64, device=device)
    cases = [  # (batch_last, x shape, x placement, w placement, y placement)
        (False, (7, 3, p.in_features), Shard(0), Replicate(), Shard(0)),
        (False, (7, 3, p.in_features), Shard(1), Replicate(), Shard(1)),
        (False, (7, 3, p.in_features), Shard(2), Shard(0), Shard(2)),
        (False, (7, p.in_features), Replicate(), Replicate(), Replicate()),
        (True, (p.in_features, 9), Shard(1), Replicate(), Shard(1)),
        (True, (p.in_features, 9), Shard(0), Shard(0), Shard(0)),
    ]
    for bl, shape, xp, wp, yp in cases:
        x = torch.randn(shape, dtype=torch.float64, device=device)
        xd = distribute_tensor(x, mesh, [xp]).requires_grad_()
        wd = distribute_tensor(w, mesh, [wp]).requires_grad_()
        with CommDebugMode() as comm:
            y = torch.ops.ks.matmul(xd, wd, batch_last=bl)
        assert y.placements == (yp,), (bl, xp, wp, y.placements)
        if xp != Replicate():  # sharded in, sharded out: no collective
            assert comm.get_total_counts() == 0, (bl, xp, comm.get_comm_counts())
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        ref = ks_matmul_reference(xr, wr, batch_last=bl)
        torch.testing.assert_close(y.full_tensor(), ref, **TOL)
        gy = torch.randn_like(ref)
        y.backward(distribute_tensor(gy, mesh, [yp]))
        ref.backward(gy)
        # feature-sharded: w's gradient stays Shard(0); batch-sharded: a Partial sum over ranks
        if wp == Shard(0):
            assert wd.grad.placements == (Shard(0),)
        elif xp != Replicate():
            assert wd.grad.placements == (Partial(),)
        torch.testing.assert_close(xd.grad.full_tensor(), xr.grad, **TOL)
        torch.testing.assert_close(wd.grad.full_tensor(), wr.grad, **TOL)

    # weight_grad with a given a on batch-sharded inputs, and with a = -1 on feature-sharded ones
    x = torch.randn(10, p.in_features, dtype=torch.float64, device=device)
    gy = torch.randn(10, p.out_features, dtype=torch.float64, device=device)
    ref = torch.ops.ks.weight_grad(gy, x, list(p.shape))
    for pattern, placement in (([4, 6, 5, 3], Shard(0)), ([-1, 6, 5, 3], Shard(1))):
        g = torch.ops.ks.weight_grad(distribute_tensor(gy, mesh, [placement]),
                                     distribute_tensor(x, mesh, [placement]), pattern)
        torch.testing.assert_close(g.full_tensor(), ref, **TOL)

    # ks::chain, batch-sharded, every factor and the bias replicated, with its backward
    factors = [KSPattern(4, 6, 5, 3).random_weights(dtype=torch.float64, device=device),
               KSPattern(1, 10, 24, 3).random_weights(dtype=torch.float64, device=device)]
    bias = torch.randn(30, dtype=torch.float64, device=device)
    x = torch.randn(9, 60, dtype=torch.float64, device=device)
    leaves = [distribute_tensor(t, mesh, [Replicate()]).requires_grad_() for t in (*factors, bias)]
    xd = distribute_tensor(x, mesh, [Shard(0)]).requires_grad_()
    y = torch.ops.ks.chain(xd, leaves[:2], leaves[2], "gelu")
    assert y.placements == (Shard(0),)
    ref_leaves = [t.clone().requires_grad_() for t in (x, *factors, bias)]
    ref = ks_chain_reference(ref_leaves[0], ref_leaves[1:3], ref_leaves[3], "gelu")
    torch.testing.assert_close(y.full_tensor(), ref, **TOL)
    y.sum().backward()
    ref.sum().backward()
    for got, want in zip([xd, *leaves], ref_leaves):
        torch.testing.assert_close(got.grad.full_tensor(), want.grad, **TOL)

    # ks::chain feature-parallel: every factor's a splits (4 and 2 blocks), no collective
    factors = [KSPattern(4, 6, 5, 3).random_weights(dtype=torch.float64, device=device),
               KSPattern(2, 4, 18, 2).random_weights(dtype=torch.float64, device=device)]
    bias = torch.randn(16, dtype=torch.float64, device=device)
    leaves = [distribute_tensor(t, mesh, [Shard(0)]).requires_grad_() for t in (*factors, bias)]
    xd = distribute_tensor(x, mesh, [Shard(1)]).requires_grad_()
    with CommDebugMode() as comm:
        y = torch.ops.ks.chain(xd, leaves[:2], leaves[2], "silu")
        y.backward(torch.ones_like(y))
    assert y.placements == (Shard(1),) and comm.get_total_counts() == 0, (y.placements, comm.get_comm_counts())
    ref_leaves = [t.clone().requires_grad_() for t in (x, *factors, bias)]
    ref = ks_chain_reference(ref_leaves[0], ref_leaves[1:3], ref_leaves[3], "silu")
    torch.testing.assert_close(y.full_tensor(), ref, **TOL)
    ref.sum().backward()
    for got, want in zip([xd, *leaves], ref_leaves):
        torch.testing.assert_close(got.grad.full_tensor(), want.grad, **TOL)


@pytest.mark.parametrize("device", DEVICES)
def test_dtensor_rules(device):
    """ks::matmul data- and feature-parallel (no collective either way), both layouts, with
    gradients; ks::weight_grad; ks::chain data- and feature-parallel with gradients."""
    _spawn(_rules_worker, device)


# ---- tensor-parallel KSLinear ----------------------------------------------------------------


def _tp_worker(rank, device):
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.debug import CommDebugMode

    from ks_ops import KSLinear
    from ks_ops.distributed import parallelize_ks_linear

    mesh = _mesh(device)
    torch.manual_seed(0)
    kw = dict(device=device, dtype=torch.float64)
    # Layer 1: both factors split over 2 ranks (a = 4, 2); layer 2: the second factor (a = 1) is
    # replicated and runs on batch-sharded rows; a 3-factor chain with one replicated factor inside.
    model = torch.nn.Sequential(
        KSLinear([(4, 6, 5, 3), (2, 12, 18, 2)], activation="gelu", **kw),
        KSLinear([(2, 12, 6, 4), (1, 16, 48, 2)], **kw),
        KSLinear([(2, 4, 8, 2), (1, 8, 16, 1), (4, 2, 2, 1)], activation="relu", **kw),
    )
    ref = copy.deepcopy(model)
    parallelize_ks_linear(model[0], mesh, output_layout=Shard(-1))
    parallelize_ks_linear(model[1], mesh, input_layout=Shard(-1))
    parallelize_ks_linear(model[2], mesh)
    x = torch.randn(6, 5, 60, **kw)
    with CommDebugMode() as comm:
        h = model[0](x)
    assert comm.get_total_counts() == 0, comm.get_comm_counts()  # every factor split: no collective
    assert h.placements == (Shard(2),)
    y = model[2](model[1](h))
    y_ref = ref(x)
    torch.testing.assert_close(y, y_ref, **TOL)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    for (name, got), want in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(got.grad.full_tensor(), want.grad, **TOL, msg=name)


@pytest.mark.parametrize("device", DEVICES)
def test_tensor_parallel_kslinear(device):
    """parallelize_ks_linear: outputs and every gradient match one process; a layer whose factors
    all split runs without any collective."""
    _spawn(_tp_worker, device)


def test_parallelize_errors():
    from ks_ops import KSLinear
    from ks_ops.distributed import parallelize_ks_linear

    class Mesh2D:
        ndim = 2

    with pytest.raises(ValueError, match="mesh must be 1-D"):
        parallelize_ks_linear(KSLinear([(2, 4, 4, 1)]), Mesh2D())
    with pytest.raises(ValueError, match="no KSLinear layer"):
        parallelize_ks_linear(torch.nn.Linear(3, 3), type("Mesh1D", (), {"ndim": 1})())


# ---- DDP and FSDP2 -------------------------------------------------------------------------------


def _mlp(device):
    from ks_ops import KSLinear

    torch.manual_seed(0)
    return torch.nn.Sequential(KSLinear([(4, 6, 5, 3), (1, 10, 24, 3)], activation="gelu"),
                               torch.nn.Linear(30, 7)).to(device=device, dtype=torch.float64)


def _train_worker(rank, device, wrap, compiled):
    model = _mlp(device)
    ref = copy.deepcopy(model)
    if wrap == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[rank] if device == "cuda" else None)
    else:
        from torch.distributed.fsdp import fully_shard

        mesh = _mesh(device)
        for layer in model:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    # inductor on the GPUs; aot_eager on the CPU (the same graphs, without minutes of C++ builds in CI)
    backend = "inductor" if device == "cuda" else "aot_eager"
    run = torch.compile(model, backend=backend) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    torch.manual_seed(1)
    for _ in range(3):
        x = torch.randn(8, 60, dtype=torch.float64, device=device)
        t = torch.randn(8, 7, dtype=torch.float64, device=device)
        loss = torch.nn.functional.mse_loss(run(x.chunk(WORLD)[rank]), t.chunk(WORLD)[rank])
        loss.backward()
        opt.step()
        opt.zero_grad()
        ref_loss = torch.nn.functional.mse_loss(ref(x), t)
        ref_loss.backward()
        ref_opt.step()
        ref_opt.zero_grad()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        torch.testing.assert_close(mean / WORLD, ref_loss.detach(), **TOL)
    for got, want in zip(model.parameters(), ref.parameters()):
        got = got.full_tensor() if hasattr(got, "full_tensor") else got
        torch.testing.assert_close(got.detach(), want.detach(), **TOL)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("wrap", ["ddp", "fsdp2"])
@pytest.mark.parametrize("device", DEVICES)
def test_data_parallel_training(device, wrap, compiled):
    """Three SGD steps of a KSLinear model under DDP or FSDP2 (fully_shard), eager or compiled:
    losses and parameters match one process on the whole batch."""
    _spawn(_train_worker, device, wrap, compiled)


def _surgery_worker(rank, device, wrap):
    from transformers import GPT2Config, GPT2LMHeadModel

    from ks_ops import ks_surgery

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=32, vocab_size=101,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    ks_surgery(model, {"*.mlp.c_fc": "auto", "*.mlp.c_proj": "auto"})
    model = model.to(device=device, dtype=torch.float64)
    ref = copy.deepcopy(model)
    if wrap == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        run = DistributedDataParallel(model, device_ids=[rank] if device == "cuda" else None)
    else:
        from torch.distributed.fsdp import fully_shard

        mesh = _mesh(device)
        for block in model.transformer.h:
            fully_shard(block, mesh=mesh)
        run = fully_shard(model, mesh=mesh)
    torch.manual_seed(1)
    ids = torch.randint(0, 101, (4, 16), device=device)
    loss = run(ids.chunk(WORLD)[rank], labels=ids.chunk(WORLD)[rank]).loss
    loss.backward()
    ref_loss = ref(ids, labels=ids).loss
    ref_loss.backward()
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    # transformers computes the loss in float32 (logits.float()): float32's rounding bounds it.
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(mean / WORLD, ref_loss.detach(), rtol=16 * eps, atol=0)
    for (name, got), want in zip(model.named_parameters(), ref.parameters()):
        if got.grad is None:
            continue
        grad = got.grad
        if hasattr(grad, "full_tensor"):  # FSDP2: sharded gradients
            grad = grad.full_tensor()
        else:
            assert grad.stride() == got.stride(), (name, grad.stride(), got.stride())  # DDP's buckets
        torch.testing.assert_close(grad, want.grad, rtol=64 * eps, atol=64 * eps * want.grad.abs().max().item(),
                                   msg=name)


@pytest.mark.parametrize("wrap", ["ddp", "fsdp2"])
@pytest.mark.parametrize("device", DEVICES)
def test_surgered_gpt2(device, wrap):
    """A transformers GPT-2 whose MLPs ks_surgery swapped: its loss and gradients under DDP or
    FSDP2 match one process."""
    pytest.importorskip("transformers")
    _spawn(_surgery_worker, device, wrap)
