"""One evaluation run: rows → items → answers (→ verdicts) → scores → reports, resumable at every step.

Each item is a small pipeline: reuse or request the answer, commit it, then (MM-MT-Bench) reuse or request the
verdict and commit it. Pipelines run concurrently up to the backends' limits; a failing item is recorded in the
store with its error and the run goes on. Scores are pure functions of stored answers, computed at the end.
"""

from __future__ import annotations

import asyncio
import os
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from pixtral.evals.backends.http import OpenAIHTTPBackend
from pixtral.evals.backends.inprocess import InProcessBackend
from pixtral.evals.config import EvalConfig
from pixtral.evals.data import Rows, load_rows, select_indices
from pixtral.evals.errors import BackendError, DatasetError, EvalConfigError
from pixtral.evals.judge import JudgeParams, build_judge_messages, judge, judge_key
from pixtral.evals.metrics import check_mode
from pixtral.evals.progress import ProgressReporter
from pixtral.evals.prompts import PromptSet, load_prompt_set
from pixtral.evals.report import write_reports
from pixtral.evals.scoring import score_task
from pixtral.evals.store import GroupCommitter, Store, run_lock
from pixtral.evals.tasks import get_task
from pixtral.evals.tasks.base import Task
from pixtral.evals.types import Item, ItemRecord, TaskRun, stable_hash


def harness_version() -> str:
    try:
        return metadata.version("pixtral")
    except metadata.PackageNotFoundError:
        return "0.1.0+src"


@dataclass
class _Session:
    """What every item pipeline of a run shares."""

    store: Store
    committer: GroupCommitter
    backend: Any
    judge_backend: OpenAIHTTPBackend | None
    progress: ProgressReporter
    # Held from an item's request until its answer is committed: a kill -9 loses at most --concurrency answers
    # (the backend's own limit is released when the response arrives, before the commit).
    answer_slots: asyncio.Semaphore


@dataclass
class RunCounters:
    generated: int = 0
    reused: int = 0
    judged: int = 0
    judge_cached: int = 0
    failed: int = 0


def _api_key(env_name: str | None, required_for: str | None = None) -> str | None:
    if not env_name:
        return None
    key = os.environ.get(env_name)
    if not key and required_for:
        raise EvalConfigError(f"{required_for} needs an API key: set the environment variable {env_name}")
    return key


def _needs_key(endpoints: list[str]) -> bool:
    return any("api.openai.com" in e for e in endpoints)


class Runner:
    def __init__(self, cfg: EvalConfig) -> None:
        check_mode(cfg.scoring)
        if not cfg.tasks:
            raise EvalConfigError("no task given: pass --task NAME (repeatable or comma-separated)")
        self.cfg = cfg
        # by our name or lmms-eval's; a task named twice (mmmu, mmmu_val) runs once
        self.tasks = list({t.name: t for t in map(get_task, cfg.tasks)}.values())
        self.prompts: PromptSet = load_prompt_set(cfg.prompts, cfg.scoring)
        if (cfg.dataset or cfg.dataset_config) and len(self.tasks) > 1:
            raise EvalConfigError(
                "--dataset / --dataset-config name one dataset: use them with a single --task"
            )
        if cfg.concurrency < 1:
            raise EvalConfigError("--concurrency must be at least 1")
        if not cfg.in_process and not cfg.endpoints:
            raise EvalConfigError("pass --endpoint URL (an OpenAI-compatible server) or --in-process")
        self.judge_params = JudgeParams(
            model=cfg.judge_model, max_tokens=cfg.judge_max_tokens, attempts=cfg.judge_attempts
        )
        self.counters = RunCounters()
        self.model_name: str | None = cfg.model

    def _backend(self) -> Any:
        cfg = self.cfg
        if cfg.in_process:
            return InProcessBackend(
                cfg.engine_model, cfg.engine_dtype, cfg.engine_device, cfg.engine_tensor_parallel_size
            )
        return OpenAIHTTPBackend(
            cfg.endpoints,
            model=cfg.model,
            api_key=_api_key(cfg.api_key_env),
            concurrency=cfg.concurrency,
            timeout=cfg.timeout,
            max_retries=cfg.retries,
            backoff=cfg.backoff,
            wait_s=cfg.wait_for_endpoint,
        )

    def _judge_backend(self) -> OpenAIHTTPBackend:
        cfg = self.cfg
        key = _api_key(cfg.judge_api_key_env, "the judge" if _needs_key(cfg.judge_endpoints) else None)
        return OpenAIHTTPBackend(
            cfg.judge_endpoints,
            model=cfg.judge_model,
            api_key=key,
            concurrency=cfg.judge_concurrency,
            timeout=cfg.judge_timeout,
            max_retries=cfg.retries,
            backoff=cfg.backoff,
        )

    async def run(self) -> list[TaskRun]:
        cfg = self.cfg
        store = Store(cfg.output_dir / "store.sqlite")
        try:
            # Load data first: a wrong folder should fail before any endpoint is touched.
            loaded = []
            for task in self.tasks:
                rows = load_rows(
                    task.dataset,
                    task.name,
                    cfg.data_dir,
                    cfg.dataset,
                    cfg.dataset_config,
                    cfg.split,
                    cfg.revision,
                    partial=cfg.limit is not None,  # from the hub: read only the chosen rows' row groups
                )
                # --shuffle picks a seeded subset; it is processed in row order (row groups are read once)
                indices = sorted(select_indices(len(rows), cfg.limit, cfg.shuffle, cfg.seed))
                loaded.append((task, rows, indices))
            async with AsyncExitStack() as stack:
                backend = await stack.enter_async_context(self._backend())
                self.model_name = backend.model
                self.model_endpoints = backend.endpoints
                self.model_untrained = getattr(backend, "untrained", None)
                judge_backend = None
                if any(t.needs_judge for t in self.tasks):
                    judge_backend = await stack.enter_async_context(self._judge_backend())
                progress = stack.enter_context(ProgressReporter(enabled=cfg.progress))
                committer = GroupCommitter(store)
                stack.push_async_callback(committer.aclose)
                slots = asyncio.Semaphore(cfg.concurrency)
                session = _Session(store, committer, backend, judge_backend, progress, slots)
                return [await self._run_task(session, task, rows, indices) for task, rows, indices in loaded]
        finally:
            store.close()

    async def _run_task(self, s: _Session, task: Task, rows: Rows, indices: list[int]) -> TaskRun:
        """Schedule one pipeline per item, at most ``4 × concurrency`` alive (bounding image bytes in memory)."""
        split = self.cfg.split or task.dataset.split
        tr = TaskRun(task, dataset=rows.provenance, scoring=self.cfg.scoring, prompt_set=self.prompts.name)
        done_keys = s.store.answer_keys()
        window = asyncio.Semaphore(max(4, 4 * self.cfg.concurrency))
        pending: set[asyncio.Task] = set()
        failures: list[BaseException] = []
        bar = s.progress.add(task.name, total=None)

        async def pipeline(item: Item, rec: ItemRecord) -> None:
            try:
                await self._process(s, task, item, rec, done_keys)
            except BaseException as exc:  # a bug or a fatal configuration error, not an item failure
                failures.append(exc)
                raise
            finally:
                window.release()
                s.progress.advance(bar)

        try:
            for index in indices:
                for item in self._build(s.store, task, rows, index, split, tr):
                    rec = ItemRecord(
                        item.item_id, task.name, item.request_key(self.model_name or ""), item.public_request(),
                        item.reference, item.meta, item.group,
                    )  # fmt: skip
                    tr.records.append(rec)
                    s.progress.grow(bar)
                    await window.acquire()
                    if failures:
                        raise failures[0]
                    t = asyncio.create_task(pipeline(item, rec))
                    pending.add(t)
                    t.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)
        except BaseException:  # stop the items still in flight before the store and the clients close
            for t in list(pending):
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            raise
        return tr

    def _build(self, store: Store, task: Task, rows: Rows, index: int, split: str, tr: TaskRun) -> list[Item]:
        """The items of one row; a malformed row is recorded as an error and reported, it does not stop the run."""
        try:
            return task.build_items(index, rows[index], self.prompts, self.cfg.scoring, split)
        except DatasetError as exc:
            item_id = task.item_id(split, index)
            rec = ItemRecord(item_id, task.name, f"row:{item_id}", {}, None, {}, item_id)
            store.put_error(rec.key, item_id, "build", str(exc))
            tr.records.append(rec)
            self.counters.failed += 1
            return []

    async def _process(
        self, s: _Session, task: Task, item: Item, rec: ItemRecord, done_keys: set[str]
    ) -> None:
        """Reuse or request the answer, commit it; then (judged tasks) reuse or request the verdict, commit it."""
        if rec.key in done_keys:
            answer_text = s.store.get_answer(rec.key).text
            self.counters.reused += 1
        else:
            async with s.answer_slots:
                start = time.monotonic()
                try:
                    completion = await s.backend.complete(
                        item.messages,
                        max_tokens=item.max_tokens,
                        temperature=item.temperature,
                        item_id=item.item_id,
                    )
                except BackendError as exc:
                    await s.committer.commit(s.store.error_ops(rec.key, item.item_id, "generate", str(exc)))
                    self.counters.failed += 1
                    return
                latency = time.monotonic() - start
                await s.committer.commit(
                    s.store.answer_ops(
                        rec.key, task.name, item.item_id, self.model_name or "", completion, latency
                    )
                )
            done_keys.add(rec.key)
            answer_text = completion.text or ""
            self.counters.generated += 1
        if not task.needs_judge:
            return
        ex = item.extra
        messages = build_judge_messages(
            ex["conversation"], ex["image"], ex["turn_index"], answer_text, self.cfg.scoring
        )
        rec.judge_key = judge_key(messages, self.judge_params, self.cfg.scoring)
        if s.store.get_verdict(rec.judge_key) is not None:
            self.counters.judge_cached += 1
            return
        try:
            verdict = await judge(
                s.judge_backend, messages, self.judge_params, self.cfg.scoring, item.item_id
            )
        except BackendError as exc:
            await s.committer.commit(s.store.error_ops(rec.judge_key, item.item_id, "judge", str(exc)))
            self.counters.failed += 1
            return
        await s.committer.commit(
            s.store.verdict_ops(rec.judge_key, item.item_id, self.judge_params.model, verdict)
        )
        self.counters.judged += 1

    def provenance(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "harness": "pixtral.evals",
            "harness_version": harness_version(),
            "model": self.model_name,
            "backend": "in-process" if cfg.in_process else "openai-http",
            "model_untrained": getattr(self, "model_untrained", None),  # in-process only: random weights
            "endpoints": getattr(self, "model_endpoints", cfg.endpoints),
            "prompt_set": self.prompts.name,
            "prompt_templates_sha256": stable_hash(
                {k: [v.template, v.max_tokens] for k, v in self.prompts.templates.items()}
            ),
            "scoring": cfg.scoring,
            "sampling": {"temperature": 0.0},
            "selection": {"limit": cfg.limit, "shuffle": cfg.shuffle, "seed": cfg.seed, "split": cfg.split},
            "judge": {
                "model": cfg.judge_model,
                "endpoints": cfg.judge_endpoints,
                "temperature": self.judge_params.temperature,
                "max_tokens": self.judge_params.max_tokens,
                "attempts": self.judge_params.attempts,
            }
            if any(t.needs_judge for t in self.tasks)
            else None,
        }


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Run (or resume) an evaluation and write its reports; returns the aggregate results (results.json)."""
    started = time.time()
    runner = Runner(cfg)
    with run_lock(Path(cfg.output_dir)):
        task_runs = asyncio.run(runner.run())
        store = Store(cfg.output_dir / "store.sqlite")
        try:
            scored = [score_task(tr, store, cfg.scoring, cfg.bootstrap) for tr in task_runs]
        finally:
            store.close()
        run_info = {
            "started": started,
            "finished": time.time(),
            "requests": runner.counters.__dict__,
            "output_dir": str(Path(cfg.output_dir).resolve()),
        }
        return write_reports(cfg, runner.provenance(), scored, run_info)
