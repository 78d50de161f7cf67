"""Context parallelism (lrnnx.distributed) on CPU with gloo, 2 and 4 processes.

Every check compares the context-parallel result of each rank's chunk with the single-process
result of the whole sequence, computed on every rank from the same seed: outputs, the global final
state, and gradients (sharded inputs: this rank's slice; replicated ones: summed over ranks).
fp64 runs must agree to rounding (<= 1e-12 relative), fp32 runs to <= 1e-5 relative (max-norm:
max |x - ref| / max |ref|).  Splits are uneven on purpose (chunks shorter than the conv halo, and
an empty chunk for the raw scans).

Processes start through ``torch.multiprocessing.start_processes`` with the ``forkserver`` method:
the server imports torch and lrnnx once and forks each worker from it (measured on this 2-core
machine: ~16 s per 4-process ``spawn`` that re-imports torch in every worker, ~0.2 s per
forkserver start after the first).
"""

from __future__ import annotations

import datetime
import multiprocessing
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp

FP64_TOL, FP32_TOL = 1e-12, 1e-5
WORLDS = (2, 4)
# torch._dynamo: torch.utils.checkpoint (chunked selective scan) imports it lazily, ~20 s per
# worker on a loaded 2-core machine unless the forkserver has it already
PRELOAD = ["torch", "torch.distributed", "torch._dynamo", "lrnnx.ops", "lrnnx.distributed",
           "lrnnx.build", "lrnnx_plugins.mamba", "lrnnx_plugins.recurrent", "lrnnx_plugins.ssm"]


# --------------------------------------------------------------------------- harness
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, case: str, args: tuple) -> None:
    torch.set_num_threads(1)  # 2 to 4 workers share 2 cores
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        FAILS.clear()
        globals()[case](rank, world, *args)
        # comparisons only record (an early raise would leave the other ranks in a collective)
        assert not FAILS, f"rank {rank}/{world}: " + "; ".join(FAILS)
    finally:
        dist.destroy_process_group()


def run(world: int, case, *args) -> None:
    """Run ``case(rank, world, *args)`` on ``world`` gloo processes; re-raise a worker's error."""
    multiprocessing.set_forkserver_preload(PRELOAD)
    tmp.start_processes(_entry, args=(world, _free_port(), case.__name__, args), nprocs=world,
                        start_method="forkserver")


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.detach().to(torch.complex128 if ref.is_complex() else torch.float64)
    x = x.detach().to(ref.dtype)
    if ref.numel() == 0:
        return 0.0
    return ((x - ref).abs().max() / ref.abs().max().clamp_min(1e-300)).item()


FAILS: list[str] = []


def close(what: str, x, ref, tol: float) -> None:
    """Record (not raise) a mismatch of ``x`` and ``ref`` beyond ``tol`` (relative max-norm)."""
    if x is None:
        if ref.numel():  # an empty chunk's tensors need no gradient
            FAILS.append(f"{what}: no gradient")
    elif x.shape != ref.shape:
        FAILS.append(f"{what}: shape {tuple(x.shape)} != {tuple(ref.shape)}")
    elif (err := rel(x, ref)) > tol:
        FAILS.append(f"{what}: rel err {err:.2e} > {tol:.0e}")


def lens_for(world: int, L: int, empty: bool = False) -> list[int]:
    """Uneven chunk lengths summing to L (with an empty chunk on rank 1 when ``empty``)."""
    if world == 2:
        return [L // 3, L - L // 3]
    base = [3, 0, 7] if empty else [3, 1, 7]
    return base + [L - sum(base)]


def chunk(t, lens, rank, dim=1):
    start = sum(lens[:rank])
    return t.narrow(dim, start, lens[rank])


def summed(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """All-reduce (SUM) a partial gradient of a replicated tensor (None counts as zero)."""
    t = torch.zeros_like(like) if t is None else t.clone()
    dist.all_reduce(t)
    return t


def leaf(t):
    return t.detach().clone().requires_grad_()


def rand(shape, dtype, gen, scale=1.0):
    if dtype.is_complex:
        return (torch.randn(shape, dtype=torch.complex128, generator=gen) * scale).to(dtype)
    return (torch.randn(shape, dtype=torch.float64, generator=gen) * scale).to(dtype)


# --------------------------------------------------------------------------- cases: raw scans
def case_diag(rank, world, dtype_name, reverse, broadcast):
    import lrnnx.ops as ops
    from lrnnx.distributed import cp_diag_scan

    dtype = getattr(torch, dtype_name)
    tol = FP64_TOL if dtype in (torch.float64, torch.complex128) else FP32_TOL
    gen = torch.Generator().manual_seed(0)
    B, L, D = 2, 16, 3
    mag = torch.rand(1 if broadcast else B, L, D, dtype=torch.float64, generator=gen) * 0.5 + 0.5
    if dtype.is_complex:
        phase = torch.rand(mag.shape, dtype=torch.float64, generator=gen) * 6.28
        a = torch.polar(mag, phase).to(dtype)
    else:
        a = (mag * torch.where(torch.rand(mag.shape, generator=gen) < 0.2, -1, 1)).to(dtype)
    b, h0 = rand((B, L, D), dtype, gen), rand((B, D), dtype, gen)
    wh, wl = rand((B, L, D), dtype, gen), rand((B, D), dtype, gen)

    def loss(h, hl, w_h, w_l):
        return (h * w_h.conj()).real.sum() + (hl * w_l.conj()).real.sum()

    a, b, h0 = leaf(a), leaf(b), leaf(h0)
    h, hl = ops.diag_scan(a, b, h0, reverse=reverse)  # single process, whole sequence
    ga, gb, gh0 = torch.autograd.grad(loss(h, hl, wh, wl), (a, b, h0))

    lens = lens_for(world, L, empty=True)
    ar, br, h0r = leaf(chunk(a, lens, rank)), leaf(chunk(b, lens, rank)), leaf(h0)
    hr, hlr = cp_diag_scan(ar, br, h0r, reverse=reverse)
    # the global final state is replicated: its loss term is counted on one rank only
    loss(hr, hlr, chunk(wh, lens, rank), wl * (rank == world - 1)).backward()
    close("h", hr, chunk(h, lens, rank), tol)
    close("h_last", hlr, hl, tol)
    close("grad a", ar.grad, chunk(ga, lens, rank), tol)  # (1, L_r, D) when shared: still sharded
    close("grad b", br.grad, chunk(gb, lens, rank), tol)
    close("grad h0", summed(h0r.grad, h0), gh0, tol)


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("dtype,reverse,broadcast", [
    ("float64", False, False), ("float32", False, False), ("complex128", False, True),
    ("complex64", True, False), ("float64", True, True)])
def test_cp_diag_scan(world, dtype, reverse, broadcast):
    run(world, case_diag, dtype, reverse, broadcast)


def case_selective(rank, world, dtype_name, method, complex_, grouped):
    import lrnnx.ops as ops
    from lrnnx.distributed import cp_selective_scan

    dtype = getattr(torch, dtype_name)
    tol = FP64_TOL if dtype == torch.float64 else FP32_TOL
    gen = torch.Generator().manual_seed(1)
    Bt, L, Dm, N = 2, 16, 4, 3
    bc = (Bt, L, 2, N) if grouped else (Bt, L, N)
    cdt = (torch.complex128 if dtype == torch.float64 else torch.complex64) if complex_ else dtype
    A = -torch.rand(Dm, N, dtype=torch.float64, generator=gen) - 0.5
    if complex_:
        A = torch.complex(A, torch.randn(Dm, N, dtype=torch.float64, generator=gen))
    full = dict(u=rand((Bt, L, Dm), dtype, gen), delta=rand((Bt, L, Dm), dtype, gen),
                A=A.to(cdt), B=rand(bc, cdt, gen), C=rand(bc, cdt, gen),
                D=rand((Dm,), dtype, gen), z=rand((Bt, L, Dm), dtype, gen),
                delta_bias=rand((Dm,), dtype, gen, 0.3),
                timesteps=(torch.rand(Bt, L, dtype=torch.float64, generator=gen) + 0.5).to(dtype),
                h0=rand((Bt, Dm, N), cdt, gen))
    full = {k: leaf(v) for k, v in full.items()}
    sharded = ("u", "delta", "B", "C", "z", "timesteps")
    wy = rand((Bt, L, Dm), dtype, gen)
    wl = rand((Bt, Dm, N), cdt, gen)
    opts = dict(delta_softplus=True, discretization=method, return_last_state=True)

    def loss(y, hl, w_y, w_l):
        return (y * w_y).sum() + (hl * w_l.conj()).real.sum()

    y, hl = ops.selective_scan(**full, **opts)
    names = list(full)
    ref_grads = torch.autograd.grad(loss(y, hl, wy, wl), [full[k] for k in names])

    lens = lens_for(world, L, empty=True)
    mine = {k: leaf(chunk(v, lens, rank) if k in sharded else v) for k, v in full.items()}
    h0 = mine.pop("h0")
    yr, hlr = cp_selective_scan(**mine, h0=h0, **opts)
    loss(yr, hlr, chunk(wy, lens, rank), wl * (rank == 0)).backward()
    mine["h0"] = h0
    close("y", yr, chunk(y, lens, rank), tol)
    close("h_last", hlr, hl, tol)
    for k, g in zip(names, ref_grads):
        if k in sharded:
            close(f"grad {k}", mine[k].grad, chunk(g, lens, rank), tol)
        else:
            close(f"grad {k}", summed(mine[k].grad, full[k]), g, tol)


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("dtype,method,complex_,grouped", [
    ("float64", "mamba", False, False), ("float32", "zoh", False, True),
    ("float64", "bilinear", True, False), ("float32", "bilinear", False, False),
    ("float64", "dirac", True, True)])
def test_cp_selective_scan(world, dtype, method, complex_, grouped):
    run(world, case_selective, dtype, method, complex_, grouped)


# --------------------------------------------------------------------------- cases: layers
LAYERS = {
    "ssm": "ssm(d_state=4)",                              # complex diag_scan, a shared by batch
    "ssm_bidirectional": "ssm(d_state=4, bidirectional=True)",   # + the reverse scan
    "ssm_selective": "ssm(d_state=4, param=selective)",   # selective_scan path of ssm
    "mamba": "mamba(d_state=4, expand=2)",                # conv halo + selective_scan
    "hawk": "hawk(n_heads=2)",                            # conv halo + diag_scan (RG-LRU)
    "mingru": "mingru",
}
#: the other layers built on the ops, checked at R = 4 only (to keep the suite short)
MORE_LAYERS = {"s4d": "s4d(d_state=4)", "lru": "lru(d_state=4)", "s7": "s7(d_state=6)",
               "rglru": "rglru(n_heads=2)", "minlstm": "minlstm"}


def case_layer(rank, world, key, dtype_name):
    import lrnnx
    from lrnnx.distributed import ContextParallel

    dtype = getattr(torch, dtype_name)
    tol = FP64_TOL if dtype == torch.float64 else FP32_TOL
    torch.manual_seed(0)
    layer = lrnnx.build_layer({**LAYERS, **MORE_LAYERS}[key], d_model=8).to(dtype)
    B, L = 2, 16
    gen = torch.Generator().manual_seed(2)
    x = leaf(rand((B, L, 8), dtype, gen))
    wy = rand((B, L, 8), dtype, gen)
    causal = "bidirectional" not in key
    state = None
    if causal:
        state = {k: rand(v.shape, v.dtype, gen, 0.5) for k, v in layer.init_state(B).items()}
    ws = {k: rand(v.shape, v.dtype, gen) for k, v in (state or {}).items()}
    params = dict(layer.named_parameters())

    def loss(y, st, w_y, scale):
        out = (y * w_y).sum()
        for k, v in (st or {}).items():
            out = out + scale * (v * ws[k].conj()).real.sum()
        return out

    y, st = layer(x, state=state, return_state=True)
    ref = torch.autograd.grad(loss(y, st if causal else None, wy, 1.0), [x, *params.values()])

    lens = lens_for(world, L)
    cp = ContextParallel(layer)
    xr = leaf(chunk(x, lens, rank))
    yr, str_ = cp(xr, state=state, return_state=True)
    loss(yr, str_ if causal else None, chunk(wy, lens, rank), float(rank == 0)).backward()
    cp.sync_gradients()
    close("y", yr, chunk(y, lens, rank), tol)
    if causal:
        for k in st:
            close(f"state[{k}]", str_[k], st[k], tol)
    close("grad x", xr.grad, chunk(ref[0], lens, rank), tol)
    for (name, p), g in zip(params.items(), ref[1:]):
        close(f"grad {name}", p.grad, g, tol)


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("key", list(LAYERS))
def test_layer_fp32(world, key):
    run(world, case_layer, key, "float32")


@pytest.mark.parametrize("key", ["ssm", "mamba", "hawk"])
def test_layer_fp64(key):
    run(4, case_layer, key, "float64")


@pytest.mark.parametrize("key", list(MORE_LAYERS))
def test_more_layers_fp32(key):
    run(4, case_layer, key, "float32")


def case_model(rank, world):
    """A whole LM (embedding, prenorm blocks of mamba + hawk + mlp, head) under CP."""
    import lrnnx
    from lrnnx.distributed import ContextParallel, gather_sequence, shard_sequence

    torch.manual_seed(0)
    model = lrnnx.build_model("mamba(d_state=4) + hawk + mlp", d_model=8, vocab_size=11)
    ids = torch.randint(0, 11, (2, 14), generator=torch.Generator().manual_seed(3))
    targets = torch.randint(0, 11, (2, 14), generator=torch.Generator().manual_seed(4))
    ce = torch.nn.functional.cross_entropy
    logits = model(ids)
    ref = torch.autograd.grad(ce(logits.flatten(0, 1), targets.flatten(), reduction="sum"),
                              list(model.parameters()))
    cp = ContextParallel(model)
    ids_r, t_r = shard_sequence(ids), shard_sequence(targets)
    logits_r = cp(ids_r)
    ce(logits_r.flatten(0, 1), t_r.flatten(), reduction="sum").backward()
    cp.sync_gradients()
    close("logits", gather_sequence(logits_r), logits, FP32_TOL)
    for (name, p), g in zip(model.named_parameters(), ref):
        close(f"grad {name}", p.grad, g, FP32_TOL)


@pytest.mark.parametrize("world", WORLDS)
def test_lm_model(world):
    run(world, case_model)


def case_checkpoint(rank, world):
    """Activation checkpointing: the recomputation in backward gets the CP context through
    ``context_fn`` (the recipe of lrnnx.distributed.context)."""
    from torch.utils.checkpoint import checkpoint

    import lrnnx
    from lrnnx.distributed import context_parallel, gather_sequence

    torch.manual_seed(0)
    layer = lrnnx.build_layer("hawk", d_model=8)
    gen = torch.Generator().manual_seed(7)
    x = leaf(torch.randn(2, 12, 8, generator=gen))
    w = torch.randn(2, 12, 8, generator=gen)
    params = list(layer.parameters())
    ref = torch.autograd.grad((layer(x) * w).sum(), [x, *params])
    lens = lens_for(world, 12)
    xr = leaf(chunk(x, lens, rank))
    ctx = lambda: (context_parallel(), context_parallel())  # noqa: E731
    with context_parallel():
        yr = checkpoint(layer, xr, use_reentrant=False, context_fn=ctx)
    (yr * chunk(w, lens, rank)).sum().backward()
    close("y", yr, chunk(layer(x), lens, rank), FP32_TOL)
    close("grad x", xr.grad, chunk(ref[0], lens, rank), FP32_TOL)
    for i, (p, g) in enumerate(zip(params, ref[1:])):
        close(f"grad param {i}", summed(p.grad, p), g, FP32_TOL)
    # gather_sequence: the replicated result's gradient is summed over the ranks
    xg = leaf(chunk(x, lens, rank))
    full = gather_sequence(xg)
    close("gather_sequence", full, x, 0.0)
    (full * w).sum().backward()
    close("grad gather_sequence", xg.grad, world * chunk(w, lens, rank), FP64_TOL)


@pytest.mark.parametrize("world", WORLDS)
def test_activation_checkpointing_and_gather(world):
    run(world, case_checkpoint)


# --------------------------------------------------------------------------- cases: mechanics
def case_conv_halo(rank, world):
    """CausalConv1d alone, K=4, chunks shorter than the halo: outputs, state, gradients."""
    from lrnnx_plugins.common.causal_conv import CausalConv1d

    from lrnnx.distributed import context_parallel

    torch.manual_seed(0)
    conv = CausalConv1d(3, 4).double()
    gen = torch.Generator().manual_seed(5)
    x, s0 = leaf(torch.randn(2, 12, 3, dtype=torch.float64, generator=gen)), \
        leaf(torch.randn(2, 3, 3, dtype=torch.float64, generator=gen))
    wy = torch.randn(2, 12, 3, dtype=torch.float64, generator=gen)
    ws = torch.randn(2, 3, 3, dtype=torch.float64, generator=gen)
    y, st = conv(x, s0)
    gx, gs = torch.autograd.grad((y * wy).sum() + (st * ws).sum(), (x, s0))
    lens = [1, 11] if world == 2 else [2, 1, 1, 8]
    xr, sr = leaf(chunk(x, lens, rank)), leaf(s0)
    with context_parallel():
        yr, str_ = conv(xr, sr)
    ((yr * chunk(wy, lens, rank)).sum() + (rank == 1) * (str_ * ws).sum()).backward()
    close("y", yr, chunk(y, lens, rank), FP64_TOL)
    close("state", str_, st, FP64_TOL)
    close("grad x", xr.grad, chunk(gx, lens, rank), FP64_TOL)
    close("grad state", summed(sr.grad, s0), gs, FP64_TOL)


@pytest.mark.parametrize("world", WORLDS)
def test_conv_halo(world):
    run(world, case_conv_halo)


def case_interception(rank, world):
    """The context manager routes the public ops (any backend=) through CP and restores them."""
    import lrnnx.ops as ops
    from lrnnx.ops import dispatch

    from lrnnx.distributed import active, context_parallel

    original = dispatch.call
    gen = torch.Generator().manual_seed(6)
    a = torch.rand(1, 4 * world, 2, dtype=torch.float64, generator=gen)
    b = torch.randn(1, 4 * world, 2, dtype=torch.float64, generator=gen)
    h, hl = ops.diag_scan(a, b)
    lens = [4] * world
    assert not active()
    with context_parallel():
        assert active() and dispatch.call is not original
        for backend in ("auto", "torch", "torch_ref", "cpu"):
            hr, hlr = ops.diag_scan(chunk(a, lens, rank), chunk(b, lens, rank), backend=backend)
            close(f"h ({backend})", hr, chunk(h, lens, rank), FP64_TOL)
            close(f"h_last ({backend})", hlr, hl, FP64_TOL)
        with context_parallel():  # nesting keeps it installed
            pass
        assert active()
        # single steps stay local (decoding)
        step = ops.diag_step(a[:, 0], b[:, 0], torch.ones(1, 2, dtype=torch.float64))
        torch.testing.assert_close(step, a[:, 0] + b[:, 0])
    assert not active() and dispatch.call is original
    try:
        with context_parallel():
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert not active() and dispatch.call is original


@pytest.mark.parametrize("world", WORLDS)
def test_context_manager_intercepts_ops(world):
    run(world, case_interception)


def case_errors(rank, world):
    """Clear errors, raised alike on every rank (no rank is left waiting)."""
    import lrnnx
    import lrnnx.ops as ops
    from lrnnx.distributed import ContextParallel, context_parallel, shard_sequence

    from lrnnx.errors import InputError

    layer = lrnnx.build_layer("hawk", d_model=4)
    cp = ContextParallel(layer)
    x = torch.randn(1, 2 if rank == 0 else 0, 4)  # empty chunks on ranks > 0
    with pytest.raises(InputError, match=r"non-empty chunk .* \(B, L_r\) per rank"):
        cp(x)
    with pytest.raises(InputError, match="same batch"):
        cp(torch.randn(1 + rank, 3, 4))
    with pytest.raises(InputError, match="cu_seqlens must be None"):
        cp(torch.randn(1, 3, 4), cu_seqlens=torch.tensor([0, 1, 3]))
    with context_parallel(), pytest.raises(InputError, match="cu_seqlens must be None"):
        ops.diag_scan(torch.rand(1, 3, 2), torch.rand(1, 3, 2), cu_seqlens=torch.tensor([0, 3]))
    for spec in ("attn", "mamba2(d_state=4, headdim=4)"):
        with pytest.raises(InputError, match="only layers whose sequence mixing"):
            ContextParallel(lrnnx.build_model(f"{spec} + hawk", d_model=8))
    # shard_sequence: tensor_split semantics (uneven, first chunks longer)
    parts = shard_sequence(torch.arange(10)[None], dim=1)
    assert parts.tolist() == [torch.arange(10).tensor_split(world)[rank].tolist()]
    # the layer still works after the failed calls (no collective left half-done)
    xr = torch.randn(1, 3, 4)
    y = cp(xr)
    assert y.shape == (1, 3, 4)


@pytest.mark.parametrize("world", WORLDS)
def test_errors_consistent_across_ranks(world):
    run(world, case_errors)


def test_needs_process_group():
    from lrnnx.distributed import context_parallel, cp_diag_scan

    from lrnnx.errors import InputError

    assert not dist.is_initialized()
    with pytest.raises(InputError, match="init_process_group"):
        cp_diag_scan(torch.rand(1, 3, 2), torch.rand(1, 3, 2))
    with pytest.raises(InputError, match="init_process_group"):
        with context_parallel():
            pass
