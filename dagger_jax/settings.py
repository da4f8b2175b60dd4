"""The config, read once into frozen settings, with every cross-field check in one place.

main.py reads the run's config here before it touches the workdir; nothing writes into the
config afterwards. What the entry point derives (the recipe's train objective, the sampler's
vocabulary limit) goes into the settings, not back into the config. Tools that need what a
config means (tools/iteration_cost.py) read it here too, never the recipes directly.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from dagger_jax.envs.sandbox import BACKENDS
from dagger_jax.envs.tasks.sets import TaskSettings
from dagger_jax.envs.tasks.synthetic import Difficulty
from dagger_jax.models.config import Qwen3Config
from dagger_jax.policies.generation import SamplingParams
from dagger_jax.policies.scripted_expert import SEARCHES
from dagger_jax.recipes.loop_settings import EvalSettings, LoopSettings, TrainingPlan
from dagger_jax.recipes.recipes import Recipe, RecipeRun, get_recipe
from dagger_jax.recipes.schedules import make_schedule
from dagger_jax.rollout.actor_specs import KINDS, ActorSource
from dagger_jax.rollout.mixed_episode import EpisodeSettings
from dagger_jax.train.settings import TrainSettings

# How opd / grpo sample the acting student (config.loop.on_policy_sampling).
ON_POLICY_SAMPLING = ("policy", "rollout")


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
    enabled: bool = False
    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1
    barrier_timeout_s: float = 86400.0


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    at_end: bool = True
    dtype: str = "float32"
    max_shard_bytes: int = 2 * 1024**3


@dataclasses.dataclass(frozen=True)
class RunSettings:
    model: Qwen3Config
    train: TrainSettings
    export: ExportSettings
    distributed: DistributedSettings
    tokenizer_dir: str                   # a HF tokenizer directory; "": the embedded default
    tokenizer_vocab_size: int            # of the embedded default BPE
    loop: LoopSettings | None = None     # None: the plain training job
    data_dirs: tuple[str, ...] = ()      # the plain job's trajectory shards
    tasks: TaskSettings | None = None
    actors: ActorSource | None = None

    def with_tokenizer_size(self, size: int) -> "RunSettings":
        """The run's settings once its tokenizer is known: the model must hold its ids, and an
        on-policy objective over the in-process sampler's log-probs scores only ids below the
        tokenizer's size (the sampler never samples the padded ids past it)."""
        if size > self.model.vocab_size:
            raise ValueError(f"the tokenizer has {size} tokens but config.model.vocab_size is "
                             f"{self.model.vocab_size}")
        if self.loop is None or self.actors.student_endpoints or self.train.vocab_limit:
            return self
        return dataclasses.replace(self, train=dataclasses.replace(self.train, vocab_limit=size))


def read_settings(config: Any) -> RunSettings:
    """The settings of a run; a ValueError names the config key and what is wrong with it."""
    loop = tasks = actors = None
    if config.loop.enabled:
        run = recipe_run(config)
        run.recipe.check_teacher(config.loop.teacher, config.loop.teacher_endpoints)
        loop = loop_settings(config, run)
        tasks = task_settings(config.tasks)
        actors = actor_source(config.loop, run.recipe)
        _check_service(config.loop, loop, actors)
    elif config.train.round_schedule:
        raise ValueError(f"config.train.round_schedule={config.train.round_schedule!r} restarts the "
                         "rate in every outer-loop round; the plain job has none (set "
                         "config.loop.enabled or use config.train.schedule)")
    data_dirs = tuple(d.strip() for d in config.data.dirs.split(",") if d.strip())
    if not config.loop.enabled and not data_dirs:
        raise ValueError("config.data.dirs is empty: without a recipe the job trains on a fixed set "
                         "of trajectory shards (comma-separated directories, e.g. a loop run's "
                         "W/data/iter_001); name a recipe (configs/local.py:dagger) to run the loop")
    model, train = model_and_train_settings(config)
    d = config.distributed
    return RunSettings(
        model=model, train=train,
        export=ExportSettings(**config.export.to_dict()),
        distributed=DistributedSettings(**d.to_dict()),
        tokenizer_dir=config.tokenizer.dir, tokenizer_vocab_size=config.tokenizer.vocab_size,
        loop=loop, tasks=tasks, actors=actors, data_dirs=data_dirs)


def model_and_train_settings(config: Any) -> tuple[Qwen3Config, TrainSettings]:
    """The model and what the trainer is told, the objective being the recipe's weight (a loop
    config) or the plain job's. Needs no endpoint or task: tools/compile_tpu.py compiles the
    step of a config whose fleet is not up."""
    objective = config.train.objective or "one"
    if config.loop.enabled:
        recipe = get_recipe(config.loop.recipe)
        if config.train.objective not in ("", recipe.weight):
            raise ValueError(f"config.train.objective={config.train.objective!r} contradicts "
                             f"recipe {recipe.name!r}, which trains with weight "
                             f"{recipe.weight!r}: leave it empty")
        objective = recipe.weight
    model = Qwen3Config.from_dict(config.model.to_dict(), where="config.model")
    return model, TrainSettings.from_config(config, objective=objective)


def recipe_run(config: Any) -> RecipeRun:
    """The recipe with this run's schedule, AggreVaTe prefix and takeover rule (the endpoints it
    will be served from are read_settings' concern, not the plan's)."""
    loop = config.loop
    recipe = get_recipe(loop.recipe)
    if loop.teacher not in KINDS:
        raise ValueError(f"config.loop.teacher={loop.teacher!r}: choose from {KINDS}")
    try:
        params = json.loads(loop.schedule_params or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"config.loop.schedule_params={loop.schedule_params!r} is not a JSON "
                         f"object: {e}") from None
    return RecipeRun(recipe, make_schedule(loop.schedule, params), prefix_start=loop.prefix_start,
                     prefix_step=loop.prefix_step,
                     takeover_unparseable=bool(loop.takeover_unparseable))


def parse_label_budgets(spec: str, default: int, iterations: int) -> tuple[int, ...]:
    """Each iteration's label budget: config.loop.label_budgets ("240,60,60": one per iteration,
    e.g. a large warm-start first iteration) or else config.loop.label_budget for all."""
    if not spec.strip():
        if default < 0:
            raise ValueError(f"config.loop.label_budget must be >= 0, got {default}")
        return (default,) * iterations
    try:
        budgets = tuple(int(x) for x in spec.split(","))
    except ValueError:
        raise ValueError(f"config.loop.label_budgets={spec!r}: expected comma-separated "
                         "integers, one per iteration") from None
    if len(budgets) != iterations or any(b < 0 for b in budgets):
        raise ValueError(f"config.loop.label_budgets={spec!r}: need {iterations} budgets >= 0 "
                         f"(config.loop.iterations={iterations}), got {list(budgets)}")
    return budgets


def episode_settings(loop: Any, max_turns: int) -> EpisodeSettings:
    return EpisodeSettings(max_turns=max_turns, max_new_tokens=loop.max_new_tokens,
                           context_budget=loop.context_budget, prompt_style=loop.prompt_style,
                           stuck_repeats=loop.stuck_repeats, edit_miss_hint=loop.edit_miss_hint,
                           infra_patience_s=loop.infra_patience_s)


def loop_settings(config: Any, run: RecipeRun) -> LoopSettings:
    loop, recipe = config.loop, run.recipe
    budgets = parse_label_budgets(loop.label_budgets, loop.label_budget, loop.iterations)
    if any(budgets) and recipe.label != "action":
        # The budget counts turns with a teacher *action* label (the shard manifests' turn
        # summaries); OPD's scored turns and GRPO's unlabelled ones never reach it.
        raise ValueError(
            f"config.loop.label_budget(s) > 0 but recipe {recipe.name!r} gets "
            f"{recipe.teacher_gives} from the teacher, not "
            "action labels, and the budget counts action labels only: set "
            "config.loop.label_budget=0 (and label_budgets='') and bound collection with "
            "config.loop.tasks_per_iteration")
    if loop.expert_search not in SEARCHES:
        raise ValueError(f"config.loop.expert_search={loop.expert_search!r}: choose from {SEARCHES}")
    if loop.sandbox not in BACKENDS:
        raise ValueError(f"config.loop.sandbox={loop.sandbox!r}: choose from {BACKENDS}")
    e = config.eval
    return LoopSettings(
        run=run, iterations=loop.iterations, label_budgets=budgets,
        plan=TrainingPlan(epochs=loop.epochs, earlier_epochs=loop.earlier_epochs,
                          first_round_epochs=loop.first_round_epochs, aggregate=recipe.aggregate),
        episode=episode_settings(loop, loop.max_turns),
        eval=EvalSettings(enabled=e.enabled, num_tasks=e.num_tasks,
                          from_iteration=e.from_iteration, shift_states=e.shift_states,
                          episode=episode_settings(loop, e.max_turns)),
        tasks_per_iteration=loop.tasks_per_iteration, concurrency=loop.concurrency,
        seed=config.seed, teacher_id=loop.teacher, cap_trained_labels=loop.cap_trained_labels,
        rollout_service=loop.rollout_service, sandbox=loop.sandbox, progress=config.progress,
        barrier_timeout_s=config.distributed.barrier_timeout_s)


def task_settings(tasks: Any) -> TaskSettings:
    difficulty = Difficulty.from_settings(
        files=tasks.files, functions_per_file=tasks.functions_per_file,
        distractors=tasks.distractors, hide_location=tasks.hide_location,
        templates=tasks.templates, bug_kinds=tasks.bug_kinds, packages=tasks.packages,
        numbered_packages=tasks.numbered_packages, modules=tasks.modules, decoys=tasks.decoys)
    return TaskSettings(source=tasks.source, num_train=tasks.num_train,
                        num_heldout=tasks.num_heldout, train_seed=tasks.train_seed,
                        heldout_seed=tasks.heldout_seed, difficulty=difficulty,
                        train_path=tasks.train_path, heldout_path=tasks.heldout_path)


def endpoint_urls(value: str) -> tuple[str, ...]:
    """A comma-separated URL list of the config (empty items dropped)."""
    return tuple(u.strip() for u in value.split(",") if u.strip())


def student_sampling(loop: Any, recipe: Recipe, greedy: bool) -> SamplingParams:
    """How the acting student samples: greedy (evaluation), or the rollout temperature/top-p,
    except that on-policy gradient recipes sample the policy itself by default."""
    if loop.on_policy_sampling not in ON_POLICY_SAMPLING:
        raise ValueError(f"config.loop.on_policy_sampling={loop.on_policy_sampling!r}: "
                         f"choose from {ON_POLICY_SAMPLING}")
    if greedy:
        return SamplingParams(temperature=0.0, max_new_tokens=loop.max_new_tokens)
    if recipe.weight != "one" and loop.on_policy_sampling == "policy":
        # The reverse-KL and clipped-ratio estimators take the sampled tokens as draws from the
        # policy whose (untempered) log-probs they use; at 0.7 / 0.9 they are not.
        return SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=loop.max_new_tokens)
    return SamplingParams(temperature=loop.temperature, top_p=loop.top_p,
                          max_new_tokens=loop.max_new_tokens)


def teacher_spec(loop: Any) -> dict[str, Any]:
    """The teacher as an actor spec (rollout/actor_specs.py), for in-process and service
    collection alike."""
    if loop.teacher == "expert":
        return {"kind": "expert", "search": loop.expert_search}
    spec: dict[str, Any] = {"kind": loop.teacher,
                            "sampling": {"temperature": loop.temperature, "top_p": loop.top_p,
                                         "max_new_tokens": loop.max_new_tokens}}
    if loop.teacher == "sglang":
        spec["endpoints"] = list(endpoint_urls(loop.teacher_endpoints))
    else:
        spec.update(base_url=loop.teacher_endpoints, model=loop.teacher_model)
    return spec


def actor_source(loop: Any, recipe: Recipe) -> ActorSource:
    return ActorSource(teacher_spec=teacher_spec(loop),
                       collect_sampling=student_sampling(loop, recipe, greedy=False),
                       eval_sampling=student_sampling(loop, recipe, greedy=True),
                       student_endpoints=endpoint_urls(loop.student_endpoints),
                       student_loaders=endpoint_urls(loop.student_loaders),
                       max_batch=loop.concurrency)


def _check_service(loop: Any, settings: LoopSettings, actors: ActorSource) -> None:
    """The rollout service runs in its own process: it cannot use this process's JAX sampler, so
    a student that acts in collection must be served (SGLang / tools/serve_local.py)."""
    if not loop.rollout_service or actors.student_endpoints:
        return
    run = settings.run
    acting = [i for i in range(1, settings.iterations + 1) if run.student_acts(i)]
    if acting:
        rule = run.rollout_rule(acting[0])
        raise ValueError(
            f"config.loop.rollout_service={loop.rollout_service!r} is set but "
            f"config.loop.student_endpoints is empty, and recipe {run.recipe.name!r} has "
            f"the student act in collection (iteration {acting[0]}: beta={rule.beta}, "
            f"student_prefix={rule.student_prefix}): the rollout service cannot use the "
            "loop's in-process JAX sampler. Serve the student (launch/sglang_fleet.sh, or "
            "tools/serve_local.py --model <workdir>/exports/iter_000) and set "
            "config.loop.student_endpoints=URL[,URL...], or leave "
            "config.loop.rollout_service empty to collect in-process")
