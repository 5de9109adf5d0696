"""NUTS chains for the effect model: MAP starts, one compiled sampler, chains on every core;
and where SVI's guide starts (:func:`svi_start`).

Several MAP searches run in parallel (``jax.vmap``) from random points; NUTS chain c starts
at the c-th best of them, so chains that settle in different modes show in R-hat; a chain that
ends warm-up in a mode of clearly lower log density than the best chain's goes on from the best
chain's state (:func:`imgcate.diagnostics.lagging_chains`). NUTS moves
on the model's potential (the negative log joint in the unconstrained space), compiled once
per group size and never run op by op. It moves one flat vector of the unconstrained
parameters, not a dict of sites, so that its leapfrog and tree bookkeeping are a few array
operations per step whatever the number of sites (the same sampler, its draws those of NUTS on
the sites to rounding; 18 % less sampling time at n = 2,000; benchmarks/CHANGELOG.md,
2026-12-05). Chains advance in pairs (:data:`CHAIN_GROUP`, one ``jax.vmap``-ed call per pair:
NumPyro's tree-building costs a good part of a leapfrog step at n = 2,000, and a pair shares
it); when JAX has several CPU devices (imgcate asks for one per core when it is imported
first; see :func:`imgcate.devices.cpu_device_count`), pairs run on them at the same time; the
draws are the same either way. Warm-up trees are capped at :data:`WARMUP_TREE_DEPTH`.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.infer import NUTS
from numpyro.infer.initialization import init_to_median, init_to_uniform
from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn
from numpyro.optim import Adam

from imgcate.config import FitConfig, ModelData
from imgcate.diagnostics import lagging_chains
from imgcate.model import effect_model
from imgcate.output import progress_bar

#: Sampler fields kept per draw (the names ``sample_stats`` gets in :mod:`imgcate.inference`).
FIELDS = ("diverging", "num_steps", "energy", "potential_energy")

#: MAP searches that end more than this above the best potential start no chain.
START_GAP = 10.0

#: Most iterations per compiled call (the progress bar moves this often).
BLOCK = 50

#: Chains advanced together in one compiled call (``jax.vmap``): the sampler's bookkeeping
#: is a good part of a leapfrog step's cost at n = 2,000, and a group shares it
#: (benchmarks/fit_speed.py).
CHAIN_GROUP = 2

#: Deepest NUTS tree during warm-up, and after it. From a MAP start the first warm-up window
#: (identity mass matrix, the scales' modes near the funnel's neck) otherwise builds trees of
#: 450-550 leapfrog steps on average over its first 100 iterations (n = 2,000, K = 3); with
#: 63 at most, warm-up costs about a third of that and adapts to the same step size (0.036
#: against 0.037), and sampling keeps NumPyro's default depth.
WARMUP_TREE_DEPTH = 6
MAX_TREE_DEPTH = 10


def model_args(data: ModelData) -> dict[str, Any]:
    """The effect model's keyword arguments for a trial's model data."""
    return {"inputs": data.inputs, "outcome": jnp.asarray(data.outcome), "spec": data.spec}


def potential(args: dict):
    """NUTS's potential of the effect model given its arguments: the negative log joint
    density at an unconstrained point (Jacobians of the supports' transforms included)."""
    return lambda z: potential_energy(effect_model, (), args, z)


def flat_draws(samples: dict) -> tuple[dict, int]:
    """Draws (chain, draw, ...) by site as JAX arrays (chain * draw, ...), and their number."""
    n_chain, n_draw = next(iter(samples.values())).shape[:2]
    flat = {
        k: jnp.asarray(v.reshape((n_chain * n_draw,) + v.shape[2:])) for k, v in samples.items()
    }
    return flat, n_chain * n_draw


def restart_init(site=None):
    """Start of a MAP search: the prior median for every site but the membership weights and
    intercepts, which start at random (radius 2 in the unconstrained space), so that restarts
    differ in how they split the images, not in absurd scales."""
    names = ("membership_raw", "membership_intercept")
    if site is not None and site["name"].removeprefix("baseline_").startswith(names):
        return init_to_uniform(site, radius=2.0)
    return init_to_median(site, num_samples=15)


def start_point(key, args: dict, strategy=restart_init) -> dict:
    """One unconstrained starting point drawn by a NumPyro init strategy (traceable)."""
    seeded = handlers.seed(effect_model, key)
    sites = handlers.trace(handlers.substitute(seeded, substitute_fn=strategy)).get_trace(**args)
    drawn = {
        name: site["value"]
        for name, site in sites.items()
        if site["type"] == "sample" and not site["is_observed"]
    }
    return unconstrain_fn(effect_model, (), args, drawn)


def map_searches(
    data: ModelData, config: FitConfig, key, starts: dict | None = None
) -> tuple[dict, dict, np.ndarray]:
    """``init_restarts`` MAP searches (Adam, vmapped) from :func:`restart_init` points drawn
    from ``key``; or, when ``starts`` is given (unconstrained values by site, (search, ...)),
    one search from each of those points (``key`` is not used).

    Each search minimizes NUTS's own potential (the negative log joint in the unconstrained
    space, Jacobians included), so its end is a point of high posterior mass where NUTS moves.
    Returns the values found by site (restart, ...): constrained, as the model has them, and
    unconstrained, as NUTS moves them; and the final potential of each search.
    """
    args = model_args(data)
    optimizer = Adam(0.05)
    energy = potential(args)

    def search(start):
        def step(state, _):
            (loss, _), state = optimizer.eval_and_update(lambda z: (energy(z), None), state)
            return state, loss

        state, _ = jax.lax.scan(step, optimizer.init(start), None, length=config.init_steps)
        free = optimizer.get_params(state)
        return free, constrain_fn(effect_model, (), args, free), energy(free)

    if starts is None:
        free, values, losses = jax.jit(jax.vmap(lambda k: search(start_point(k, args))))(
            jax.random.split(key, config.restarts)
        )
    else:
        free, values, losses = jax.jit(jax.vmap(search))(starts)
    losses = np.asarray(losses, dtype=float)
    losses[~np.isfinite(losses)] = np.inf
    unconstrained = {name: np.asarray(value) for name, value in free.items()}
    return values, unconstrained, losses


#: SVI's start (:func:`svi_start`): ``SCREENS_PER_RESTART`` x ``init_restarts`` MAP searches on
#: ``SCREEN_UNITS`` random units; the best ``init_restarts // 2`` go on over ``SEARCH_UNITS``.
SCREEN_UNITS = 2_000
SCREENS_PER_RESTART = 4
SEARCH_UNITS = 20_000


def random_units(data: ModelData, n_units: int, key) -> ModelData:
    """``n_units`` of ``data``'s units drawn at random (all when it has no more), in their
    order, with their Gaussian-process basis computed once (a search evaluates every unit
    thousands of times)."""
    if len(data.outcome) > n_units:
        rows = jax.random.choice(key, len(data.outcome), (n_units,), False)
        data = data.take(np.sort(np.asarray(rows)))
    return replace(data, inputs=data.inputs.with_basis())


def svi_start(data: ModelData, config: FitConfig, key) -> dict | None:
    """Where SVI's guide starts: the best end of MAP searches in two stages, as values by site
    (None when no search ended at a finite potential).

    SVI cannot leave the region its start is in, and one search in three or fewer found the
    clusters that a smooth effect makes (the others ended where the memberships hardly depend
    on the image: 30-100 worse in potential, and their SVI fits covered two thirds of the true
    unit effects). Many cheap searches on ``SCREEN_UNITS`` units screen the starts; the best
    go on over ``SEARCH_UNITS`` units, which rank them as the whole trial would."""
    key_screen, key_rows, key_search = jax.random.split(key, 3)
    restarts = SCREENS_PER_RESTART * config.restarts
    screened = random_units(data, SCREEN_UNITS, key_rows)
    _, free, losses = map_searches(screened, replace(config, init_restarts=restarts), key_screen)
    best = np.argsort(losses)[: max(1, config.restarts // 2)]
    values, _, losses = map_searches(
        random_units(data, SEARCH_UNITS, key_search),
        config,
        None,
        starts={name: value[best] for name, value in free.items()},
    )
    if not np.isfinite(losses).any():
        return None
    return {name: value[int(np.argmin(losses))] for name, value in values.items()}


def chain_starts(
    unconstrained: dict, losses: np.ndarray, n_chains: int, key, max_gap: float = START_GAP
) -> dict:
    """Unconstrained start of each chain: the best ``n_chains`` MAP searches, one each, among
    those that ended within ``max_gap`` of the best potential; when there are fewer such
    searches than chains, the best ones again with a small jitter.

    A search that ended clearly higher found a mode with negligible posterior mass (about
    ``exp(-gap)`` of the best's): a chain started there stays there and only spoils the mix,
    while modes of similar density still get chains of their own and show in R-hat.
    """
    order = np.argsort(losses, kind="stable")
    order = order[losses[order] <= losses[order[0]] + max_gap]
    picks = np.resize(order, n_chains)
    repeat = np.arange(n_chains) >= len(order)
    sizes = [int(np.prod(v.shape[1:], dtype=int)) for v in unconstrained.values()]
    jitter = np.asarray(jax.random.normal(key, (n_chains, sum(sizes))), dtype=np.float64)
    jitter[~repeat] = 0.0
    out, at = {}, 0
    for (name, value), size in zip(unconstrained.items(), sizes, strict=True):
        noise = jitter[:, at : at + size].reshape((n_chains,) + value.shape[1:])
        out[name] = value[picks] + 0.05 * noise.astype(value.dtype)
        at += size
    return out


def random_starts(data: ModelData, n_chains: int, key) -> dict:
    """NumPyro's default start (uniform in (-2, 2) unconstrained) for each chain."""
    args = model_args(data)
    draw = jax.jit(jax.vmap(lambda k: start_point(k, args, init_to_uniform)))
    return {name: np.asarray(v) for name, v in draw(jax.random.split(key, n_chains)).items()}


def chain_devices(config: FitConfig) -> list:
    """Devices the chains run on: every local device of JAX's default backend for
    ``chain_method="parallel"`` (one when there is one), the first for ``"sequential"``."""
    devices = jax.local_devices()
    return devices if config.chain_method == "parallel" else devices[:1]


def chain_groups(n_chains: int, size: int = CHAIN_GROUP) -> list[list[int]]:
    """Chains advanced together, ``size`` at a time, in order: ``[[0, 1], [2, 3], [4]]``."""
    return [list(range(c, min(c + size, n_chains))) for c in range(0, n_chains, size)]


def run_nuts(data: ModelData, config: FitConfig, starts: dict, key) -> tuple[dict, dict]:
    """NUTS chains from ``starts`` (chain, ...) unconstrained.

    Returns the draws by site (chain, draw, ...) on the model's supports and the sampler's
    fields (chain, draw) named in :data:`FIELDS`. Chain c uses the c-th key of
    ``jax.random.split(key, num_chains)``, and chains are advanced in the same groups
    (:func:`chain_groups`, one compiled call for the group, ``jax.vmap``) wherever they run,
    so the draws do not depend on the number of devices.
    """
    args = model_args(data)
    n_chains, warmup, draws = config.num_chains, config.num_warmup, config.num_samples
    # NUTS moves one flat vector, not a dict of sites: its leapfrog and tree bookkeeping then
    # cost a few array operations per step instead of a few per site.
    flat_starts = [ravel_pytree({k: v[c] for k, v in starts.items()}) for c in range(n_chains)]
    unravel = flat_starts[0][1]
    energy = potential(args)
    kernel = NUTS(
        potential_fn=jax.jit(lambda x: energy(unravel(x))),
        target_accept_prob=config.target_accept,
        max_tree_depth=(WARMUP_TREE_DEPTH, MAX_TREE_DEPTH),
    )
    keys = jax.random.split(key, n_chains)
    # initialize every chain here, in one thread: init sets the kernel's (shared) functions,
    # and it traces the jitted potential, whose cached trace the threads below then reuse.
    # NumPyro's effect handlers keep one stack for all threads, so two threads tracing the
    # model at once would mix their sites ("all sites must have unique names").
    states = [kernel.init(keys[c], warmup, flat_starts[c][0]) for c in range(n_chains)]
    block = math.gcd(math.gcd(warmup, draws), BLOCK)

    def advance(state):
        def step(s, _):
            s = kernel.sample(s, (), {})
            return s, (s.z, s.diverging, s.num_steps, s.energy, s.potential_energy)

        return jax.lax.scan(step, state, None, length=block)

    advance = jax.jit(jax.vmap(advance))
    devices = chain_devices(config)
    groups = chain_groups(n_chains)
    workers = min(len(devices), len(groups))
    iterations = iter(
        progress_bar(
            range(n_chains * (warmup + draws)),
            config.progress,
            f"NUTS, {n_chains} chain(s) x ({warmup} warm-up + {draws}) iterations",
        )
    )
    lock = threading.Lock()
    group_states: list[Any] = [None] * len(groups)
    warm_energy: list[Any] = [None] * len(groups)
    results: list[Any] = [None] * n_chains

    stop = threading.Event()

    def tick(chains: list[int]) -> None:
        with lock:
            for _ in range(block * len(chains)):
                next(iterations, None)

    def warm(g: int) -> None:
        chains = groups[g]
        state = jax.tree.map(lambda *s: jnp.stack(s), *(states[c] for c in chains))
        state = jax.device_put(state, devices[g % workers])
        energies = []
        for _ in range(0, warmup, block):
            if stop.is_set():
                return
            state, out = advance(state)
            energies.append(np.asarray(out[4]))
            tick(chains)
        group_states[g] = state
        warm_energy[g] = np.concatenate(energies, axis=1) if energies else None

    def sample(g: int) -> None:
        chains, state = groups[g], group_states[g]
        kept = []
        for _ in range(0, draws, block):
            if stop.is_set():
                return
            state, out = advance(state)
            kept.append(jax.device_get(out))
            tick(chains)
        out = jax.tree.map(lambda *parts: np.concatenate(parts, axis=1), *kept)
        for i, c in enumerate(chains):
            results[c] = jax.tree.map(lambda a, i=i: a[i], out)

    def each_group(phase) -> None:
        def run_on(d: int) -> None:
            for g in range(d, len(groups), workers):
                phase(g)

        if workers == 1:
            run_on(0)
            return
        pool = ThreadPoolExecutor(workers)
        try:
            list(pool.map(run_on, range(workers)))
        except BaseException:  # Ctrl-C: the other threads stop after their block, unwaited
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()

    each_group(warm)
    restarts = {}
    if config.restart_chains and n_chains > 1:
        log_density = -np.concatenate(warm_energy, axis=0)
        restarts = lagging_chains(log_density[:, -warmup_window(warmup, block) :], agreeing=1)
        if restarts:
            _continue_from_best(group_states, groups, restarts, devices, workers)
    each_group(sample)
    for _ in iterations:  # closes the bar
        pass
    vectors = np.stack([r[0] for r in results])  # (chain, draw, parameter)
    free = jax.jit(jax.vmap(jax.vmap(unravel)))(vectors)
    free = {k: np.asarray(v) for k, v in free.items()}
    fields = {name: np.stack([r[i + 1] for r in results]) for i, name in enumerate(FIELDS)}
    fields["restarts"] = restarts
    return constrained(free, args), fields


def warmup_window(warmup: int, block: int) -> int:
    """Warm-up iterations at its end whose log density places each chain's mode: the last
    two fifths, in whole blocks, at least one block (all of a shorter warm-up)."""
    return min(warmup, max(block, 2 * warmup // 5 // block * block))


def _continue_from_best(group_states: list, groups: list, restarts: dict, devices, workers):
    """Put each lagging chain where its source chain ended warm-up (position, step size, mass
    matrix), keeping its own random key; ``group_states`` is changed in place."""
    where = {c: (g, i) for g, chains in enumerate(groups) for i, c in enumerate(chains)}
    host = [jax.device_get(state) for state in group_states]
    for chain, restart in restarts.items():
        g, i = where[chain]
        gs, s = where[restart["source"]]
        key = np.array(host[g].rng_key)

        def put(dst, src, i=i, s=s):
            dst = np.array(dst)
            dst[i] = np.asarray(src)[s]
            return dst

        host[g] = jax.tree.map(put, host[g], host[gs])._replace(rng_key=key)
    for g, state in enumerate(host):
        if any(where[c][0] == g for c in restarts):
            group_states[g] = jax.device_put(state, devices[g % workers])


def constrained(free: dict, args: dict) -> dict:
    """Draws (chain, draw, ...) of the unconstrained sites on the model's own supports."""
    n_chain, n_draw = next(iter(free.values())).shape[:2]
    flat, _ = flat_draws(free)
    values = jax.jit(jax.vmap(lambda z: constrain_fn(effect_model, (), args, z)))(flat)
    return {k: np.asarray(v).reshape((n_chain, n_draw) + v.shape[1:]) for k, v in values.items()}
