"""The config schema every `configs/*.py` starts from, so all runs share one set of keys.

Config files change values, never add keys: `lock()` freezes the key set so a misspelt
override (`--config.train.lrr=1e-4`) is an error, not a silently ignored setting.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections

from dagger_jax.models.sharding import QWEN3_RULES


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.progress = True  # a rich progress bar on process 0

    # Multi-host: `jax.distributed.initialize()` before anything touches devices. On a TPU pod
    # the arguments below stay empty (discovered from the TPU metadata); for CPU multi-process
    # runs they name the coordinator.
    # barrier_timeout_s: how long the other processes of the loop wait for the leader (process
    # 0), which collects and evaluates each iteration for all (hours at the paper's scale).
    c.distributed = ml_collections.ConfigDict(dict(
        enabled=False, coordinator_address="", num_processes=0, process_id=-1,
        barrier_timeout_s=86400.0))

    # Architecture: the fields of dagger_jax.models.config.Qwen3Config.
    c.model = ml_collections.ConfigDict()
    c.dtype = "float32"        # activations / matmuls ("bfloat16" on TPU)
    c.param_dtype = "float32"  # master weights
    c.remat = "none"           # none | full | dots | dots_no_batch
    c.attention_impl = "xla"   # xla | splash (the Pallas TPU kernel: O(T) memory; see
                               # models/attention.py; off TPU it runs in interpret mode)
    c.attention_block = 0      # xla: queries per causal attention block; 0 = dense scores
    # The devices a run needs: "" any; "tpu" (the pod configs): the trainer refuses other
    # devices instead of training a pod config on the CPU JAX of a host without the tpu extra.
    c.platform = ""

    c.mesh = ml_collections.ConfigDict(dict(shape=(1, -1, 1, 1)))  # (data, fsdp, sequence, tensor)
    c.partition_rules = QWEN3_RULES

    c.tokenizer = ml_collections.ConfigDict(dict(
        dir="",            # a HF tokenizer directory; empty: build the embedded default
        vocab_size=1024,   # of the embedded default BPE
    ))
    # The plain job (no recipe): SFT on a fixed set of trajectory shards, e.g. a loop run's
    # W/data/iter_001 or the teacher's episodes collected once. Comma-separated directories.
    c.data = ml_collections.ConfigDict(dict(dirs=""))
    c.train = ml_collections.ConfigDict(dict(
        steps=100,
        batch_size=8,        # global, in packed rows, per optimizer step
        seq_len=512,
        grad_accum=1,        # micro-batches per step (batch_size must divide by it)
        loss_chunk=256,      # tokens per chunk of the vocabulary projection in the loss
        lr=1e-3,
        schedule="cosine",   # cosine | linear | constant (after linear warmup)
        warmup_steps=10,
        end_lr_ratio=0.1,
        weight_decay=0.0,
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        clip_grad_norm=1.0,
        moment_dtype="",  # Adam's first moment: "" the param dtype, or "bfloat16" (half its HBM)
        log_every=10,
        checkpoint_every=50,
        keep_checkpoints=3,
        # A latest checkpoint that cannot be read: "previous" reports it in one line, moves it
        # aside (<step>.damaged) and resumes from the step before; "stop" stops the run.
        on_damaged_checkpoint="previous",
        # The per-token objective (train/loss.py): "" = from the loop's recipe (its weight:
        # one | reverse_kl | group_advantage), cross-entropy ("one") for the plain job. Naming
        # one that contradicts the recipe is an error.
        objective="",
        clip_eps=0.2,        # GRPO: the ratio is clipped to [1 - clip_eps, 1 + clip_eps]
        # The gradient's normaliser: 0 = each batch's own target-token count (the mean per
        # token); N > 0 = the summed loss over N tokens, so a batch with fewer targets takes a
        # proportionally smaller step (train/train_step.py).
        loss_tokens=0,
        # The outer loop only: "" = train.schedule over the global step (the loop's default is
        # constant); cosine | linear = every round warms up over warmup_steps and decays to
        # lr * end_lr_ratio by its last step (train/optimizer.py round_learning_rate).
        round_schedule="",
        # On-policy objectives: log-probs over ids below this only, as the sampler that recorded
        # theirs (0: the whole vocabulary; the loop sets the tokenizer's size when it samples
        # with the local JAX sampler, which never samples the padded ids past it).
        vocab_limit=0,
    ))
    c.export = ml_collections.ConfigDict(dict(at_end=True, dtype="float32",
                                              max_shard_bytes=2 * 1024**3))

    # The outer loop (recipes/loop.py): collect -> aggregate -> train -> checkpoint -> export ->
    # reload the student -> evaluate, per iteration. Disabled: the plain training job above.
    c.loop = ml_collections.ConfigDict(dict(
        enabled=False,
        recipe="dagger",          # sft | rs_sft | dagger | aggrevate | opd | grpo (recipes/recipes.py)
        iterations=3,
        schedule="paper",         # beta schedule: constant | linear | exponential | paper
        schedule_params="{}",     # JSON object of the schedule's parameters
        prefix_start=2,           # AggreVaTe: student prefix k_i = prefix_start + prefix_step (i - 1)
        prefix_step=2,
        tasks_per_iteration=16,
        label_budget=0,           # > 0: an iteration stops starting episodes at this many labelled turns
        label_budgets="",         # per iteration, comma-separated (e.g. "240,60,60"); overrides label_budget
        epochs=3,                 # over the aggregated data, per iteration
        # Of those epochs, how many also cover earlier iterations' data (which the weights have
        # already been trained on when each round starts from the last checkpoint); the rest
        # cover only the new iteration's. -1: all of them (plain aggregation).
        earlier_epochs=-1,
        # Epochs of iteration 1's data in round 1 (-1: loop.epochs). A student trained from
        # scratch on a small first budget can need more passes before its replies parse; until
        # they do, a DAgger student that acts in iteration 2 is taken over on every turn and
        # reaches no state of its own (docs/studies/06-decoy-family.md).
        first_round_epochs=-1,
        max_turns=12,
        max_new_tokens=192,
        context_budget=4096,
        prompt_style="full",      # full (the scaffold's) | compact (agent/prompts.py; CPU demo)
        concurrency=4,
        # Seconds a collection waits out endpoints that do not answer or sandboxes that will not
        # start before it stops with what it has stored (rerun: it collects the rest).
        infra_patience_s=600.0,
        sandbox="bwrap",          # bwrap | docker
        rollout_service="",       # URL of a rollout service; empty: collect in-process
        student_endpoints="",     # SGLang URLs, comma-separated; empty: the in-process JAX sampler
        # Export sidecars beside the student servers (rollout/export_sidecar.py, one per server;
        # launch/sglang_fleet.sh --sidecar-port starts them): new weights go through them, which
        # copy each export from the store to their host. Empty: the servers load the workdir's
        # path themselves (one filesystem). A gs:// workdir with student_endpoints needs them.
        student_loaders="",
        teacher="expert",         # expert | sglang | openai
        teacher_endpoints="",     # sglang: URLs; openai: the base URL
        teacher_model="",
        # The scripted expert's look-up after a look at a file without the bug: "function"
        # greps for the function, "definitions" lists all (policies/scripted_expert.py).
        expert_search="function",
        temperature=0.7,          # PAPER.md: rollouts at 0.7 / 0.9, evaluation greedy
        top_p=0.9,
        # policy: the on-policy gradient recipes (opd, grpo) sample the student at temperature
        # 1 / top-p 1, the distribution their estimators assume; rollout: temperature/top_p.
        on_policy_sampling="policy",
        stuck_repeats=3,          # end an episode after 3 identical action+observation turns
        # A refused str_replace also shows the closest lines of the file (as Aider does). Off:
        # OpenHands' message, the one the paper's teacher and student see.
        edit_miss_hint=False,
        # A student reply without a well-formed tool call is not executed: the teacher's label
        # at that state is (the teacher takes the turn), so no state the student is later
        # labelled on holds its malformed text. Action-label recipes only. Off: the paper's
        # rule (every student reply is executed).
        takeover_unparseable=False,
        # With a label budget, train on whole episodes (in id order) up to each iteration's
        # budget: the episodes still running when it was reached are stored, not trained on.
        cap_trained_labels=True,
    ))
    c.tasks = ml_collections.ConfigDict(dict(
        source="synthetic",       # synthetic | file (JSONL of tasks, e.g. from tools/make_tasks.py)
        train_path="", heldout_path="",
        num_train=64, num_heldout=16, train_seed=0, heldout_seed=1,
        files=1, functions_per_file=2, distractors=0, hide_location=False,
        templates=0,              # > 0: only the first N function templates (synthetic.py)
        bug_kinds="",             # comma-separated mutation operators; empty: all
        packages=0,               # > 0: package names from the first N only
        numbered_packages=True,   # False: `ledger/core.py`, not `ledger_37/core.py`
        modules=0,                # > 0: module names from the first N only
        decoys=0,                 # modules of constants only, beside the files (synthetic.py)
    ))
    c.eval = ml_collections.ConfigDict(dict(
        enabled=True, num_tasks=16, max_turns=12, shift_states=32,
        # The first iteration evaluated (the ones before get a row without eval metrics; the
        # last iteration always is): a student trained from scratch resolves nothing after one
        # round, and evaluating that costs as much as evaluating a good one.
        from_iteration=1,
    ))
    return c


def paper_pod_config(model_fields: dict) -> ml_collections.ConfigDict:
    """A TPU-pod student with the paper's training hyperparameters (PAPER.md) and given shapes."""
    c = base_config()
    c.model.update(model_fields)
    c.distributed.enabled = True
    c.platform = "tpu"
    c.dtype = "bfloat16"
    c.param_dtype = "float32"
    c.remat = "full"
    # The Pallas splash kernel: O(T) attention memory. XLA's blocked form at 64K holds [4096, 64K]
    # fp32 scores per head: 338 GiB of temporaries per v5p chip for the 8B (tools/compile_tpu.py).
    c.attention_impl = "splash"
    c.attention_block = 4096   # if attention_impl=xla: 16 causal blocks at 64K
    # Pure FSDP over the slice; tools/compile_tpu.py names the sequence / tensor split a slice
    # needs (each row's 64K tokens over `sequence` when rows alone cannot fill the chips).
    c.mesh.shape = (1, -1, 1, 1)
    # PAPER.md: lr 3e-6, batch size 16, 3 epochs per round, 64K context. Schedule and warmup
    # are not given there: ours.
    c.train.update(dict(steps=1000, batch_size=16, seq_len=65_536, grad_accum=1, loss_chunk=4096,
                        lr=3e-6, schedule="cosine", warmup_steps=20, end_lr_ratio=0.1,
                        weight_decay=0.0, clip_grad_norm=1.0, log_every=1, checkpoint_every=100))
    c.export.dtype = "bfloat16"
    return c


def paper_loop(c: ml_collections.ConfigDict, recipe: str | None) -> ml_collections.ConfigDict:
    """The paper's outer loop (PAPER.md) for `recipe` (None: the plain training job).

    Teacher Qwen3-Coder-30B-A3B-Instruct on SGLang (endpoints from launch/sglang_fleet.sh via
    --config.loop.teacher_endpoints / student_endpoints), SWE-Gym tasks as a task file
    (tools/make_tasks.py --source swebench), 5 iterations of 512 instances, 3 epochs per round,
    rollouts at temperature 0.7 / top-p 0.9, 64K context, 100 turns, docker sandboxes.
    """
    if not recipe:
        return c
    c.loop.update(dict(
        enabled=True, recipe=recipe, iterations=5, schedule="paper", tasks_per_iteration=512,
        epochs=3, max_turns=100, max_new_tokens=4096, context_budget=65_536, concurrency=64,
        sandbox="docker", teacher="sglang", teacher_model="Qwen/Qwen3-Coder-30B-A3B-Instruct",
        temperature=0.7, top_p=0.9))
    c.tasks.update(dict(source="file", train_path="tasks/swegym_train.jsonl",
                        heldout_path="tasks/swegym_heldout.jsonl"))
    c.eval.update(dict(num_tasks=100, max_turns=100, shift_states=256))
    # Weight-1 cross-entropy over 3 epochs per round: a constant rate after warmup, so later
    # rounds are not trained at a decayed rate.
    c.train.update(dict(schedule="constant"))
    return c


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config.lock()
    return config


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`FILE[:ARG]` as main's --config takes it: FILE's get_config(ARG) (configs/ is not a
    package, so tools and benchmarks load the file by path)."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_loaded_config", path)
    if module_spec is None or not Path(path).is_file():
        raise FileNotFoundError(f"no config file {path} (from {spec!r})")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)
