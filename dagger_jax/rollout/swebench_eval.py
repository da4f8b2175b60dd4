"""A student on SWE-bench-style instances: predictions in the harness's format, graded by the harness.

Two halves (tools/eval_swebench.py is the command line over them):

1. `run_predictions`: greedy episodes in which the student acts every turn (beta 0, no
   teacher), run by the collector (`collect`, so the episode records also land as shards under
   `<out>/episodes` for inspection). Each finished episode's final `git diff` (its
   `Outcome.patch`) becomes one line of `<out>/predictions.jsonl`, exactly
   `{"instance_id", "model_name_or_path", "model_patch"}` (an empty patch is a line with
   `model_patch: ""`), appended as the episode finishes. A rerun skips the ids already there.
   An episode the infrastructure failed (a container or an endpoint, not the model) is never
   recorded (rollout/faults.py), and one that hit a defect of our own tools
   (`internal_error`) gets no line: either is tried again by the next run.

2. `grade_predictions`: swebench 5.0.2's own per-instance evaluation,
   `swebench.harness.run_evaluation.run_instance`, per prediction: a fresh container from the
   instance's image (named the harness's way and present locally, so nothing is pulled), the
   model patch applied by the harness's `git apply` / `patch` chain, the eval script of the
   harness's TestSpec (`make_test_spec(instance)`), and `grading.get_eval_report` over the test
   output it writes. Its logs and per-instance `report.json` go to
   `<out>/logs/run_evaluation/<run_id>/<model>/<instance_id>/`, the harness's layout (the
   harness writes under its module constant `RUN_EVALUATION_LOG_DIR`, a path relative to the
   working directory; it is pointed at `<out>/logs/run_evaluation` while grading). The summary
   applies the rules of the harness's `reporting.make_run_report` to those reports: resolved
   when the report says so, unresolved when it says not, an error when there is no report (the
   patch did not apply, the tests timed out, a docker fault); an empty patch is not run (the
   harness skips it too) and counts as unresolved. The grading containers are the harness's
   own (its user, workdir and capabilities), not our sandboxes.

   Not used: `run_evaluation.main`. It re-loads the instances by dataset name (a hub name needs
   the network), lowers the process's hard open-file limit, writes its logs relative to the
   working directory and its report under a name of its own; it runs `run_instance` per
   instance, which is what is called here directly.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import docker
import docker.errors
import requests.exceptions
from swebench.harness import run_evaluation
from swebench.harness.constants import LOG_REPORT
from swebench.harness.utils import make_test_spec

from dagger_jax.agent import ChatTokenizer
from dagger_jax.data.records import EpisodeRecord
from dagger_jax.envs.sandbox.base import SandboxBackend
from dagger_jax.envs.tasks.task import Task
from dagger_jax.policies.actors import Actor, TokenActor
from dagger_jax.policies.generation import SamplingParams
from dagger_jax.rollout.actor_specs import build_actor
from dagger_jax.rollout.collector import CollectionJob, collect
from dagger_jax.rollout.mixed_episode import EpisodeSettings
from dagger_jax.rollout.mixing import RolloutRule
from dagger_jax.rollout.stats import CollectorStats

PREDICTION_KEYS = ("instance_id", "model_name_or_path", "model_patch")
PREDICTIONS_FILE = "predictions.jsonl"
REPORT_FILE = "report.json"
EPISODES_DIR = "episodes"
HARNESS_LOG_DIR = Path("logs") / "run_evaluation"
# Episodes that ended by a fault of the machinery, not of the model: no prediction, retried.
RETRY_REASONS = ("internal_error", "sandbox_error")
# The embedded default BPE (as main.py builds it) for the expert when no tokenizer is given.
GRADED_BY = "swebench {version}: harness.run_evaluation.run_instance (harness.grading.get_eval_report)"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_LOG_DIR_LOCK = threading.Lock()


# --- predictions.jsonl ------------------------------------------------------------------------

def prediction(instance_id: str, model_name: str, patch: str | None) -> dict[str, str]:
    """One line of the harness's predictions format, exactly its three keys."""
    return {"instance_id": instance_id, "model_name_or_path": model_name, "model_patch": patch or ""}


def read_predictions(path: str | Path) -> dict[str, dict[str, Any]]:
    """{instance_id: prediction} of a .jsonl (one object a line) or .json (a list, or a dict by
    id) predictions file. ValueError names the file and line of a malformed one or a repeated
    id. An unterminated last line of a .jsonl (a writer killed mid-line) is dropped unless it
    parses."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
        rows = list(data.values()) if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a list of predictions or a dict by instance id")
        numbered = [(f"{path}[{i}]", row) for i, row in enumerate(rows)]
    else:
        lines = text.split("\n")
        torn = lines.pop() if lines else ""  # after the last newline: "" unless torn
        numbered = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                numbered.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
        if torn.strip():
            try:
                numbered.append((f"{path}:{len(lines) + 1}", json.loads(torn)))
            except json.JSONDecodeError:
                pass  # a line cut short by a crash: that instance is simply not done
    out: dict[str, dict[str, Any]] = {}
    for where, row in numbered:
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in PREDICTION_KEYS if k not in row]
        if missing:
            raise ValueError(f"{where}: prediction lacks {missing}")
        if not isinstance(row["model_patch"], (str, type(None))):
            raise ValueError(f"{where}: model_patch must be a string or null")
        if row["instance_id"] in out:
            raise ValueError(f"{where}: a second prediction for {row['instance_id']!r}")
        out[row["instance_id"]] = row
    return out


def _drop_torn_tail(path: Path) -> None:
    """Cuts an unterminated last line (a writer killed mid-line) so the next append starts clean."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def append_prediction(path: Path, line: Mapping[str, str]) -> None:
    """One line, one write, flushed and fsynced: a killed run loses at most the line in flight."""
    with path.open("a") as f:
        f.write(json.dumps(dict(line), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def model_names(predictions: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return sorted({str(p["model_name_or_path"]) for p in predictions.values()})


# --- the acting model -----------------------------------------------------------------------

@dataclasses.dataclass
class EvalActor:
    """The model under evaluation, the tokenizer its conversation is kept in, and the most
    tokens a conversation may hold (the local model's context; None: no limit known)."""

    actor: Actor
    chat: ChatTokenizer
    context_limit: int | None
    description: str

    async def aclose(self) -> None:
        close = getattr(getattr(self.actor, "generator", None), "aclose", None)
        if close is not None:
            await close()


def eval_actor(*, student_dir: str | Path | None = None, endpoints: Sequence[str] = (),
               policy: str | None = None, tokenizer_dir: str | Path | None = None,
               max_new_tokens: int = 1024, max_batch: int = 4) -> EvalActor:
    """Exactly one of: an HF-format student export run in this process (LocalSampler), SGLang
    endpoints serving the student, or policy="expert" (the scripted expert, to check the
    pipeline). Sampling is greedy. FileNotFoundError / ValueError name what is wrong.

    The conversation's tokenizer: tokenizer_dir, else the student export's own; the SGLang
    student and the expert need tokenizer_dir (the expert's only measures the context: the tool
    gives it the embedded default when none is named)."""
    chosen = [x for x in (student_dir, list(endpoints) or None, policy) if x]
    if len(chosen) != 1:
        raise ValueError("give exactly one of a student directory, student endpoints or a policy")
    greedy = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    if student_dir is not None:
        student_dir = Path(student_dir)
        if not student_dir.is_dir():
            raise FileNotFoundError(f"student directory {student_dir} does not exist")
        if not (student_dir / "config.json").is_file():
            raise FileNotFoundError(f"student directory {student_dir} has no config.json (not an "
                                    "HF-format export: tools/export_hf.py writes one)")
        chat = ChatTokenizer.from_path(tokenizer_dir or student_dir)
        from dagger_jax.policies.local_sampler import LocalSampler  # JAX: only for this path
        sampler = LocalSampler.from_hf_dir(student_dir, tokenizer=None, max_batch=max_batch,
                                           vocab_limit=len(chat.tokenizer))
        actor = TokenActor("student", sampler, chat, greedy)
        return EvalActor(actor, chat, sampler.config.max_position_embeddings,
                         f"local student {student_dir}")
    if endpoints:
        if tokenizer_dir is None:
            raise ValueError("student endpoints need the student's tokenizer directory "
                             "(--tokenizer DIR)")
        chat = ChatTokenizer.from_path(tokenizer_dir)
        actor = build_actor({"kind": "sglang", "endpoints": list(endpoints),
                             "sampling": {"temperature": 0.0, "max_new_tokens": max_new_tokens}},
                            chat, "student")
        return EvalActor(actor, chat, None, f"SGLang student at {', '.join(endpoints)}")
    if policy != "expert":
        raise ValueError(f"unknown policy {policy!r}: only 'expert' (the scripted expert)")
    if tokenizer_dir is None:
        raise ValueError("the expert needs a tokenizer directory (--tokenizer DIR)")
    chat = ChatTokenizer.from_path(tokenizer_dir)
    return EvalActor(build_actor({"kind": "expert"}, chat, "student"), chat, None,
                     "scripted expert")


# --- the episodes -----------------------------------------------------------------------------

@dataclasses.dataclass
class PredictionRun:
    written: list[str]                 # ids given a prediction line by this run
    skipped: list[str]                 # ids that already had one
    failed: dict[str, str]             # id -> why its episode gave no prediction (retried later)
    resolved_in_episode: list[str]     # ids the in-sandbox grading of the episode resolved


def check_images(tasks: Sequence[Task], client: docker.DockerClient) -> list[str]:
    """One message per task whose image is not in the local docker daemon (nothing is pulled)."""
    problems = []
    for task in tasks:
        if not task.image:
            problems.append(f"instance {task.instance_id!r} names no docker image")
            continue
        try:
            client.images.get(task.image)
        except docker.errors.ImageNotFound:
            problems.append(f"instance {task.instance_id!r}: docker image {task.image} is not "
                            "present locally (nothing is pulled: build or load it first)")
        except (docker.errors.APIError, requests.exceptions.RequestException) as e:
            problems.append(f"instance {task.instance_id!r}: looking up docker image "
                            f"{task.image} failed: {e}")
    return problems


async def run_predictions(tasks: Sequence[Task], *, actor: Actor, chat: ChatTokenizer,
                          backend: SandboxBackend, out_dir: str | Path, model_name: str,
                          settings: EpisodeSettings, concurrency: int = 4,
                          progress: bool = False) -> PredictionRun:
    """Runs the student (every turn, as given: greedy is the caller's sampling choice) on each
    task that has no line in <out_dir>/predictions.jsonl yet, appending one as each finishes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / PREDICTIONS_FILE
    _drop_torn_tail(path)
    done = read_predictions(path) if path.exists() else {}
    others = [n for n in model_names(done) if n != model_name]
    if others:
        raise ValueError(f"{path} holds predictions of {others}, not {model_name!r}: "
                         "use another --out (or the same --model-name) to add to it")
    todo = [t for t in tasks if t.instance_id not in done]
    run = PredictionRun([], [t.instance_id for t in tasks if t.instance_id in done], {}, [])
    if not todo:
        return run

    def on_record(record: EpisodeRecord) -> None:
        outcome = record.outcome
        if outcome.end_reason in RETRY_REASONS:
            run.failed[record.task_id] = f"{outcome.end_reason}: {outcome.error}"
            return
        append_prediction(path, prediction(record.task_id, model_name, outcome.patch))
        run.written.append(record.task_id)
        if outcome.resolved:
            run.resolved_in_episode.append(record.task_id)

    # A fresh job id per run: the collector then skips nothing (predictions.jsonl decides what
    # is done) and each run's records go to shards of their own.
    job = CollectionJob(
        job_id=f"pred-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}", iteration=0,
        rule=RolloutRule(beta=0.0, label="none"), task_ids=tuple(t.instance_id for t in todo),
        out_dir=str(out_dir / EPISODES_DIR), student_version=model_name, settings=settings,
        metadata={"eval": "swebench", "model_name_or_path": model_name})
    await collect(job, {t.instance_id: t for t in todo}, student=actor, teacher=None, chat=chat,
                  backend=backend, concurrency=concurrency, progress=progress,
                  stats=CollectorStats(), on_record=on_record)
    return run


# --- grading with the harness -----------------------------------------------------------------

def default_run_id(out_dir: str | Path) -> str:
    """Stable for one output directory (a rerun finds its reports), distinct across them (the
    harness names containers sweb.eval.<id>.<run_id> and removes a same-named one)."""
    digest = hashlib.sha256(str(Path(out_dir).resolve()).encode()).hexdigest()[:10]
    return f"dagger-jax-{digest}"


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"run id {run_id!r} must match {_RUN_ID.pattern} (it names containers "
                         "and log directories)")
    return run_id


@contextlib.contextmanager
def harness_log_dir(root: Path) -> Iterator[Path]:
    """Points the harness's RUN_EVALUATION_LOG_DIR (relative to the cwd by default) at root."""
    with _LOG_DIR_LOCK:
        before = run_evaluation.RUN_EVALUATION_LOG_DIR
        run_evaluation.RUN_EVALUATION_LOG_DIR = root
        try:
            yield root
        finally:
            run_evaluation.RUN_EVALUATION_LOG_DIR = before


def instance_log_dir(out_dir: Path, run_id: str, pred: Mapping[str, Any]) -> Path:
    return (out_dir / HARNESS_LOG_DIR / run_id / str(pred["model_name_or_path"]).replace("/", "__")
            / str(pred["instance_id"]))


@dataclasses.dataclass
class EvalReport:
    model_name_or_path: str
    run_id: str
    total: int                          # instances in the evaluated set
    resolved_ids: list[str]
    unresolved_ids: list[str]           # graded and not resolved, empty patches included
    error_ids: list[str]                # the harness produced no report (see its logs)
    empty_patch_ids: list[str]          # not run: an empty patch cannot resolve
    missing_ids: list[str]              # no prediction (an episode that faulted)
    logs: str                           # the harness's logs and per-instance reports
    graded_by: str

    @property
    def resolve_rate(self) -> float:
        return len(self.resolved_ids) / self.total if self.total else 0.0

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(resolved=len(self.resolved_ids), unresolved=len(self.unresolved_ids),
                   errors=len(self.error_ids), empty_patches=len(self.empty_patch_ids),
                   missing=len(self.missing_ids), resolve_rate=round(self.resolve_rate, 4))
        return out


def grade_predictions(predictions: Mapping[str, Mapping[str, Any]],
                      instances: Mapping[str, Mapping[str, Any]], *, out_dir: str | Path,
                      run_id: str, timeout_s: int = 1800, max_workers: int = 4,
                      client: docker.DockerClient | None = None) -> EvalReport:
    """Grades each prediction of an instance in `instances` (harness-format dicts) with the
    harness's run_instance; the report covers every instance given. A report already on disk
    for the same patch is reused (a rerun grades only what is new)."""
    import swebench
    out_dir = Path(out_dir)
    check_run_id(run_id)
    unknown = sorted(set(predictions) - set(instances))
    if unknown:
        raise ValueError(f"predictions for ids that are not among the instances: {unknown[:5]}")
    names = model_names(predictions)
    if len(names) > 1:
        raise ValueError(f"predictions of several models {names}: grade them separately")
    to_run, empty = [], []
    for iid in instances:
        pred = predictions.get(iid)
        if pred is None:
            continue
        if not pred["model_patch"]:
            empty.append(iid)
            continue
        _forget_stale_report(instance_log_dir(out_dir, run_id, pred), pred["model_patch"])
        to_run.append((make_test_spec(dict(instances[iid])), dict(pred)))
    if to_run:
        client = client or docker.from_env(timeout=max(int(timeout_s), 60))
        with harness_log_dir(out_dir / HARNESS_LOG_DIR):
            with concurrent.futures.ThreadPoolExecutor(max(1, max_workers)) as pool:
                list(pool.map(lambda item: run_evaluation.run_instance(
                    item[0], item[1], client, run_id, timeout_s), to_run))
    resolved, unresolved, errors = [], list(empty), []
    for _, pred in to_run:
        iid = pred["instance_id"]
        verdict = _read_verdict(instance_log_dir(out_dir, run_id, pred) / LOG_REPORT, iid)
        {True: resolved, False: unresolved, None: errors}[verdict].append(iid)
    missing = [iid for iid in instances if iid not in predictions]
    return EvalReport(
        model_name_or_path=names[0] if names else "", run_id=run_id, total=len(instances),
        resolved_ids=sorted(resolved), unresolved_ids=sorted(unresolved), error_ids=sorted(errors),
        empty_patch_ids=sorted(empty), missing_ids=sorted(missing),
        logs=str(out_dir / HARNESS_LOG_DIR / run_id),
        graded_by=GRADED_BY.format(version=swebench.__version__))


def _forget_stale_report(log_dir: Path, patch: str) -> None:
    """run_instance returns a stored report as is: drop it when it graded a different patch."""
    report, graded = log_dir / LOG_REPORT, log_dir / "patch.diff"
    if report.exists() and (not graded.is_file() or graded.read_text() != patch):
        report.unlink()


def _read_verdict(report_path: Path, instance_id: str) -> bool | None:
    """The harness's report: resolved or not; None when it is missing or unreadable (an error)."""
    try:
        return bool(json.loads(report_path.read_text())[instance_id]["resolved"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_report(report: EvalReport, out_dir: str | Path) -> Path:
    path = Path(out_dir) / REPORT_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    tmp.replace(path)
    return path


def summary_table(report: EvalReport) -> str:
    rows = [("model", report.model_name_or_path), ("run id", report.run_id),
            ("instances", report.total), ("resolved", len(report.resolved_ids)),
            ("unresolved", len(report.unresolved_ids)),
            ("  of which empty patches", len(report.empty_patch_ids)),
            ("errors (no harness report)", len(report.error_ids)),
            ("no prediction", len(report.missing_ids)),
            ("resolve rate", f"{100 * report.resolve_rate:.1f}%")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
