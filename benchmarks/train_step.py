"""Train-step throughput on CPU: our jitted Flax/Optax step vs `transformers` + torch, one run.

    .venv/bin/python benchmarks/train_step.py [--steps N] [--configs local,cpu_medium] [--json out.json]

Everything is measured in the same process, one after the other, so the ratios hold on a shared,
noisy machine even when the absolute numbers drift:

1. the matmul peak of this CPU: fp32 `jnp.dot` under jit (and `torch.mm`, for reference), best
   of several repeats over a couple of sizes, FLOP/s = 2 n^3 / time;
2. for each model config, the median step time of our train step (the trainer's own,
   `train/step_program.py`, on a single-device mesh, compile and warmup excluded) and of the same model in `transformers`
   (Qwen3ForCausalLM fp32, loss from labels, backward, clip_grad_norm_, AdamW step, zero_grad).
   The two frameworks' steps alternate (jax, torch, jax, torch, ...) so both see the same noise.

Both sides train on the same batch shape with one unpacked sequence per row (segment ids all 1,
positions 0..T-1, T-1 labelled tokens per row). JAX runs on one CPU device whose XLA thread pool
uses all the cores of this process; torch is given the same number of threads.

Model FLOPs per trained token (the PaLM appendix-B formula, no rematerialisation counted):
    6 N + 12 L H_q d_head T
with N the weights that take part in matmuls (q, k, v, o, gate, up, down of every layer and the
LM head, tied or not; the embedding lookup and norm scales excluded), L layers, H_q query heads,
T the sequence length. MFU = model FLOPs per second / the measured jnp fp32 matmul peak.
Work the formula does not count: our chunked loss recomputes each chunk's logits in the backward
pass (+2 h V FLOPs/token); both sides compute full (masked, not skipped) T x T scores or sdpa's
causal kernel. torch uses transformers' default attention (sdpa) and torch.optim.AdamW's default
implementation; nothing is tuned on either side.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dagger_jax.config_base import load_config_file  # noqa: E402
from dagger_jax.models.config import Qwen3Config  # noqa: E402
from dagger_jax.models.qwen3 import init_params  # noqa: E402
from dagger_jax.models.sharding import QWEN3_RULES, batch_sharding  # noqa: E402
from dagger_jax.train.settings import TrainSettings  # noqa: E402
from dagger_jax.train.step_program import build_step_program  # noqa: E402

FLOPS_FORMULA = ("model FLOPs/token = 6*N + 12*L*H_q*head_dim*T  (N = matmul weights: "
                 "q,k,v,o,gate,up,down per layer + LM head; T = seq len; no remat counted)")


# --- configs ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BenchCase:
    name: str
    model: Qwen3Config
    batch_size: int
    seq_len: int
    attention_block: int = 0  # our model's causal query block (0 = dense scores)
    attention_impl: str = "xla"  # or splash: the Pallas TPU kernel, in interpret mode off TPU

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


def load_local_config() -> Any:
    """configs/local.py's get_config() (the plain job's model, batch and seq_len)."""
    return load_config_file(str(REPO / "configs" / "local.py"))


def bench_cases(local_config: Any) -> dict[str, BenchCase]:
    local_model = Qwen3Config.from_dict(local_config.model.to_dict(), where="configs/local.py model")
    medium = Qwen3Config(vocab_size=8192, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=4, head_dim=64,
                         rope_theta=10_000.0, tie_word_embeddings=False, max_position_embeddings=4096)
    return {
        "local": BenchCase("local", local_model, local_config.train.batch_size, local_config.train.seq_len,
                           local_config.attention_block),
        "cpu_medium": BenchCase("cpu_medium", medium, batch_size=2, seq_len=256, attention_block=64),
    }


# --- FLOPs -----------------------------------------------------------------------------------

def matmul_params(cfg: Qwen3Config) -> int:
    """Weights that take part in matmuls: attention/MLP projections and the LM head."""
    h, d = cfg.hidden_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * cfg.intermediate_size
    return cfg.num_hidden_layers * per_layer + h * cfg.vocab_size


def train_flops_per_token(cfg: Qwen3Config, seq_len: int) -> int:
    """6 N + 12 L H_q d T: forward + backward model FLOPs per trained token (see FLOPS_FORMULA)."""
    attention = 12 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * seq_len
    return 6 * matmul_params(cfg) + attention


# --- matmul peak -----------------------------------------------------------------------------

def _best_time(fn: Callable[[], Any], repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def jax_matmul_peak(sizes: tuple[int, ...] = (1024, 2048), repeats: int = 5) -> dict[str, Any]:
    """Best fp32 jnp.dot FLOP/s over `sizes` (square n x n), each the best of `repeats`."""
    device = jax.devices()[0]
    dot = jax.jit(jnp.dot)
    per_size = {}
    for n in sizes:
        key_a, key_b = jax.random.split(jax.random.key(n))
        a = jax.device_put(jax.random.normal(key_a, (n, n), jnp.float32), device)
        b = jax.device_put(jax.random.normal(key_b, (n, n), jnp.float32), device)
        dot(a, b).block_until_ready()  # compile
        seconds = _best_time(lambda: dot(a, b).block_until_ready(), repeats)
        per_size[n] = 2 * n ** 3 / seconds
    return {"flops": max(per_size.values()), "per_size": per_size}


def torch_matmul_peak(sizes: tuple[int, ...] = (1024, 2048), repeats: int = 5) -> dict[str, Any]:
    import torch
    per_size = {}
    generator = torch.Generator().manual_seed(0)
    for n in sizes:
        a = torch.randn(n, n, generator=generator)
        b = torch.randn(n, n, generator=generator)
        torch.mm(a, b)
        seconds = _best_time(lambda: torch.mm(a, b), repeats)
        per_size[n] = 2 * n ** 3 / seconds
    return {"flops": max(per_size.values()), "per_size": per_size}


# --- the batch -------------------------------------------------------------------------------

def make_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One unpacked sequence per row: targets are the next token, the last position unlabelled."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab_size, size=(batch_size, seq_len)).astype(np.int32)
    targets = np.roll(ids, -1, axis=1).astype(np.int32)
    mask = np.ones((batch_size, seq_len), np.float32)
    mask[:, -1] = 0.0
    return dict(input_ids=ids, target_ids=targets, loss_mask=mask,
                segment_ids=np.ones_like(ids),
                positions=np.broadcast_to(np.arange(seq_len, dtype=np.int32), ids.shape).copy())


# --- timing ----------------------------------------------------------------------------------
# A "runner" is a zero-argument callable doing one full optimizer step and returning its loss as
# a Python float (so the work has finished when it returns).

def jax_train_runner(case: BenchCase, train_config: Any, loss_chunk: int = 256,
                     seed: int = 0) -> Callable[[], float]:
    """Our train step as the trainer builds it (train/step_program.py), on a one-device mesh
    (its first call compiles)."""
    fields = {f.name for f in dataclasses.fields(TrainSettings)}
    settings = TrainSettings(**{
        **{k: v for k, v in train_config.items() if k in fields},
        "seed": seed, "batch_size": case.batch_size, "seq_len": case.seq_len, "grad_accum": 1,
        "loss_chunk": loss_chunk, "objective": "one", "round_schedule": "",
        "attention_impl": case.attention_impl, "attention_block": case.attention_block,
        "mesh_shape": (1, 1, 1, 1), "partition_rules": QWEN3_RULES})
    program = build_step_program(settings, case.model, jax.devices()[:1])
    params = jax.device_put(init_params(case.model, jax.random.key(seed)), program.shardings.params)
    holder = {"state": program.init_state(params)}
    del params
    step_fn = program.step
    batch = make_batch(case.model.vocab_size, case.batch_size, case.seq_len, seed)
    batch = {k: jax.device_put(batch[k], batch_sharding(program.mesh)) for k in program.batch_keys}

    def one_step() -> float:
        holder["state"], metrics = step_fn(holder["state"], batch)  # state is donated
        return float(jax.block_until_ready(metrics["loss"]))

    return one_step


def _hf_config(cfg: Qwen3Config):
    import transformers
    values = cfg.to_hf_dict("float32")
    for key in ("architectures", "model_type", "torch_dtype"):
        values.pop(key, None)
    return transformers.Qwen3Config(**values)


def torch_train_runner(case: BenchCase, train_config: Any, threads: int | None = None,
                       seed: int = 0) -> Callable[[], float]:
    """transformers' Qwen3ForCausalLM (fp32, default attention) with torch AdamW (default
    implementation); the same batch and optimizer settings as ours."""
    import torch
    import transformers
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = transformers.Qwen3ForCausalLM(_hf_config(case.model)).float().train()
    c = train_config
    # As ours: weight decay on matrices only. A constant lr (the schedule costs nothing).
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": c.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=c.lr, betas=(c.b1, c.b2), eps=c.eps)
    batch = make_batch(case.model.vocab_size, case.batch_size, case.seq_len, seed)
    input_ids = torch.as_tensor(batch["input_ids"], dtype=torch.long)
    # HF shifts labels itself: position t predicts labels[t+1], the same T-1 targets per row.
    labels = input_ids.clone()

    def one_step() -> float:
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        if c.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), c.clip_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    one_step.attn_implementation = getattr(model.config, "_attn_implementation", None)
    return one_step


def time_interleaved(runners: dict[str, Callable[[], float]], steps: int,
                     warmup: int = 1) -> dict[str, dict[str, Any]]:
    """Times each runner's steps, alternating runners step by step so that both see the same
    machine noise; `warmup` untimed rounds first (compiles JAX)."""
    out = {name: {"warmup_s": [], "step_s": [], "losses": []} for name in runners}

    def one_round(timed: bool) -> None:
        for name, run in runners.items():
            start = time.perf_counter()
            loss = run()
            elapsed = time.perf_counter() - start
            if timed:
                out[name]["step_s"].append(elapsed)
                out[name]["losses"].append(loss)
            else:
                out[name]["warmup_s"].append(elapsed)

    for _ in range(warmup):
        one_round(timed=False)
    for _ in range(steps):
        one_round(timed=True)
    for record in out.values():
        record["median_s"] = statistics.median(record["step_s"])
        record["min_s"] = min(record["step_s"])
    return out


# --- the run ---------------------------------------------------------------------------------

def cpu_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_pressure() -> float | None:
    """Linux PSI: % of the last 10 s in which some runnable task waited for a CPU (other load)."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(dict(kv.split("=") for kv in line.split()[1:])["avg10"])
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _best_peak(*peaks: dict[str, Any]) -> dict[str, Any]:
    per_size = {n: max(p["per_size"][n] for p in peaks) for n in peaks[0]["per_size"]}
    return {"flops": max(per_size.values()), "per_size": per_size}


def run_case(case: BenchCase, train_config: Any, steps: int, threads: int, warmup: int = 1,
             loss_chunk: int = 256, include_torch: bool = True) -> dict[str, Any]:
    """Times one config in both frameworks (interleaved); MFU is added by `add_mfu`."""
    flops_token = train_flops_per_token(case.model, case.seq_len)
    row: dict[str, Any] = {
        "config": case.name, "model": case.model.to_dict(), "batch_size": case.batch_size,
        "seq_len": case.seq_len, "params": case.model.num_params,
        "matmul_params": matmul_params(case.model), "tokens_per_step": case.tokens_per_step,
        "flops_per_token": flops_token, "flops_per_step": flops_token * case.tokens_per_step,
    }
    runners = {"jax": jax_train_runner(case, train_config, loss_chunk)}
    if include_torch:
        runners["torch"] = torch_train_runner(case, train_config, threads)
    for side, timing in time_interleaved(runners, steps, warmup).items():
        tokens_s = case.tokens_per_step / timing["median_s"]
        row[side] = {**timing, "tokens_per_s": tokens_s, "model_flops_per_s": tokens_s * flops_token}
    if include_torch:
        row["torch"]["attn_implementation"] = runners["torch"].attn_implementation
        row["ratio_jax_over_torch"] = row["jax"]["tokens_per_s"] / row["torch"]["tokens_per_s"]
        row["ratio_jax_over_torch_min"] = row["torch"]["min_s"] / row["jax"]["min_s"]
    return row


def add_mfu(row: dict[str, Any], peak_flops: float) -> None:
    for side in ("jax", "torch"):
        if side in row:
            row[side]["mfu"] = row[side]["model_flops_per_s"] / peak_flops


def run_benchmark(case_names: list[str], steps: int, warmup: int = 1,
                  peak_sizes: tuple[int, ...] = (1024, 2048), peak_repeats: int = 5,
                  cases: dict[str, BenchCase] | None = None, train_config: Any = None,
                  include_torch: bool = True) -> dict[str, Any]:
    local = load_local_config() if cases is None or train_config is None else None
    cases = cases if cases is not None else bench_cases(local)
    train_config = train_config if train_config is not None else local.train
    unknown = [n for n in case_names if n not in cases]
    if unknown:
        raise ValueError(f"unknown configs {unknown}; choose from {sorted(cases)}")
    threads = cpu_threads()
    if include_torch:
        import torch
        torch.set_num_threads(threads)
    pressure = [cpu_pressure()]
    # The peak is the best of a measurement before and one after the train steps: the machine
    # is shared, and a busy spell during one of them should not lower the peak.
    peaks = [jax_matmul_peak(peak_sizes, peak_repeats)]
    torch_peaks = [torch_matmul_peak(peak_sizes, peak_repeats)] if include_torch else []
    rows = [run_case(cases[n], train_config, steps, threads, warmup,
                     train_config.get("loss_chunk", 256), include_torch)
            for n in case_names]
    peaks.append(jax_matmul_peak(peak_sizes, peak_repeats))
    if include_torch:
        torch_peaks.append(torch_matmul_peak(peak_sizes, peak_repeats))
    pressure.append(cpu_pressure())
    peak = _best_peak(*peaks)
    for row in rows:
        add_mfu(row, peak["flops"])
    info = {"jax": jax.__version__, "backend": jax.default_backend(),
            "device": str(jax.devices()[0]), "threads": threads, "platform": platform.platform(),
            "python": platform.python_version(), "cpu_pressure_avg10_before_after": pressure}
    if include_torch:
        import torch
        import transformers
        info.update(torch=torch.__version__, transformers=transformers.__version__,
                    torch_threads=torch.get_num_threads())
    return {"flops_formula": FLOPS_FORMULA, "steps": steps, "warmup": warmup,
            "jax_peak": peak, "torch_peak": _best_peak(*torch_peaks) if torch_peaks else None,
            "info": info, "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    peak = result["jax_peak"]["flops"]
    info = result["info"]
    lines = [
        f"CPU: {info['threads']} threads (XLA CPU pool; torch.set_num_threads({info['threads']})), "
        f"jax {info['jax']} on {info['device']}"
        + (f", torch {info['torch']}, transformers {info['transformers']}" if "torch" in info else ""),
        "matmul peak fp32 (best of repeats, before+after the steps): jnp.dot "
        + ", ".join(f"{n}^2: {f / 1e9:.1f}" for n, f in result["jax_peak"]["per_size"].items())
        + " GFLOP/s"
        + ("; torch.mm " + ", ".join(f"{n}^2: {f / 1e9:.1f}"
                                     for n, f in result["torch_peak"]["per_size"].items())
           + " GFLOP/s" if result["torch_peak"] else ""),
        result["flops_formula"],
        f"MFU vs the jnp.dot peak; step time = median of {result['steps']} steps after "
        f"{result['warmup']} warmup (compile excluded), jax/torch steps interleaved; "
        "batch = one unpacked sequence per row. ours/torch@min: the ratio of the fastest steps.",
        "CPU pressure (Linux PSI 'some avg10': % of time something waited for a CPU) "
        f"before/after: {info.get('cpu_pressure_avg10_before_after')}",
        "",
    ]
    header = ("config", "params", "tok/step", "ours tok/s", "torch tok/s", "ours/torch",
              "our MFU", "torch MFU", "peak GFLOP/s", "ours/torch@min")
    body = []
    for row in result["rows"]:
        torch_row = row.get("torch")
        body.append((
            row["config"], f"{row['params'] / 1e6:.2f}M", str(row["tokens_per_step"]),
            f"{row['jax']['tokens_per_s']:.0f}",
            f"{torch_row['tokens_per_s']:.0f}" if torch_row else "-",
            f"{row['ratio_jax_over_torch']:.2f}x" if torch_row else "-",
            f"{100 * row['jax']['mfu']:.1f}%",
            f"{100 * torch_row['mfu']:.1f}%" if torch_row else "-",
            f"{peak / 1e9:.1f}",
            f"{row['ratio_jax_over_torch_min']:.2f}x" if torch_row else "-",
        ))
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    lines += [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body), ""]
    for row in result["rows"]:
        detail = (f"{row['config']}: {row['model']['num_hidden_layers']}L h{row['model']['hidden_size']} "
                  f"{row['model']['num_attention_heads']}q/{row['model']['num_key_value_heads']}kv "
                  f"x{row['model']['head_dim']} ffn{row['model']['intermediate_size']} "
                  f"V{row['model']['vocab_size']} B{row['batch_size']} T{row['seq_len']}; "
                  f"{row['flops_per_step'] / 1e9:.1f} GFLOP/step; ours median "
                  f"{row['jax']['median_s']:.3f}s min {row['jax']['min_s']:.3f}s "
                  f"(first call {row['jax']['warmup_s'][0]:.1f}s)")
        if row.get("torch"):
            detail += (f"; torch median {row['torch']['median_s']:.3f}s "
                       f"min {row['torch']['min_s']:.3f}s (attn={row['torch']['attn_implementation']})")
        lines.append(detail)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=7, help="timed steps per config and framework")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (JAX: compiles)")
    parser.add_argument("--configs", default="local,cpu_medium", help="comma-separated config names")
    parser.add_argument("--no-torch", action="store_true", help="time only our step")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    result = run_benchmark(names, args.steps, args.warmup, include_torch=not args.no_torch)
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
