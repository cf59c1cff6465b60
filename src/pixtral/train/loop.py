"""The training loop: one function, `train(config)`, the same on one process and under torchrun.

Read it as three parts: `set_up` (data, model, optimizer, schedule, checkpoint resume), `train_step` (one
optimizer step) and `_train` (the loop around it: logging, checkpoints, validation, signals, export).
Per optimizer step: the step's rows for this rank (packing.RowSchedule), cut into micro-batches; the loss is
a sum of token losses divided by the number of loss tokens of the whole global batch (all ranks, all
micro-batches), so the gradient is the same whatever the split into ranks and micro-batches. DDP / FSDP
average gradients over ranks, so each rank scales its loss by the world size. Then clipping, AdamW, the
warmup + cosine schedule, metrics, and at their intervals: checkpoint, validation loss, eval hook.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pixtral.checkpoint.loader import DTYPES, load_model
from pixtral.config import PixtralConfig, preset
from pixtral.errors import ConfigError
from pixtral.model.init import init_random_weights_
from pixtral.model.pixtral import Pixtral
from pixtral.prompt.tokenizer import load_tokenizer, packaged_tokenizer
from pixtral.train import distributed as D
from pixtral.train.checkpointing import (
    STATE_FILE,
    export_model,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from pixtral.train.config import TrainConfig, TrainConfigError
from pixtral.train.data import ConversationDataset, read_records
from pixtral.train.lora import LoRAConfig, apply_lora
from pixtral.train.metrics import MetricsLogger
from pixtral.train.packing import IGNORE, Batch, RowSchedule, collate

log = logging.getLogger("pixtral.train")

EvalHook = Callable[["TrainContext", int], dict[str, Any]]


class LossModule(nn.Module):
    """Holds the model; forward returns the summed token loss of a batch. The unit DDP and FSDP wrap.

    Every forward runs the vision encoder and adapter, so that all ranks run the same modules in the same
    order whatever their data: a micro-batch without images encodes a one-patch blank image, whose features
    join the token embeddings with weight 0. Its graph is then shaped like an image micro-batch's: DDP sees
    every trainable parameter in every backward, and FSDP2's per-module all-gathers (forward and backward)
    and reduce-scatters line up across ranks, frozen parts included."""

    def __init__(self, model: Pixtral) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        token_ids: torch.Tensor,
        labels: torch.Tensor,
        images: list[torch.Tensor],
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        m = self.model
        if images:
            features = m.encode_images(images)  # (n_patches, dim)
            logits = m(token_ids, image_features=features, positions=positions, mask=mask)  # (B, T, vocab)
        else:
            p = m.config.vision.tokens_per_side_unit  # one [IMG] token's pixels: a patch, or a merged block
            blank = torch.zeros(m.config.vision.num_channels, p, p, device=token_ids.device)
            zero = m.encode_images([blank]).sum() * 0.0  # (1, dim) -> ()
            hook = m.tok_embeddings.register_forward_hook(lambda _m, _i, h: h + zero.to(h.dtype))
            try:
                logits = m(token_ids, positions=positions, mask=mask)
            finally:
                hook.remove()
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")


@dataclass
class TrainContext:
    """What the loop holds; given to eval hooks."""

    config: TrainConfig
    info: D.DistInfo
    model: Pixtral
    root: LossModule
    wrapped: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    model_config: PixtralConfig
    tokenizer: Any
    tokenizer_dir: Path | None
    lora: LoRAConfig | None
    export_dtype: torch.dtype | None
    out_dir: Path


@dataclass
class TrainResult:
    steps: int  # optimizer steps done in total
    losses: dict[int, float] = field(default_factory=dict)  # step (1-based) -> loss, this invocation
    interrupted: bool = False  # stopped by SIGTERM / SIGINT after saving a checkpoint
    signal: int = 0  # the signal that interrupted it
    export_dir: Path | None = None
    tokens_per_s: float = 0.0  # mean over this invocation's steps (first step excluded when possible)


# ---- set-up --------------------------------------------------------------------------------------


def build_model(cfg: TrainConfig) -> tuple[Pixtral, Any, Path | None, torch.dtype | None]:
    """-> (model in float32, tokenizer, folder to copy the tokenizer file from, stored dtype)."""

    if cfg.model.startswith("preset:"):
        model = Pixtral(preset(cfg.model.split(":", 1)[1]))
        init_random_weights_(model, seed=cfg.init_seed, std=cfg.init_std)
        return model, packaged_tokenizer(), None, None

    model, ckpt = load_model(cfg.model, "float32")
    return model, load_tokenizer(ckpt.folder), ckpt.folder, ckpt.stored_dtype


def configure_trainable(model: Pixtral, cfg: TrainConfig) -> LoRAConfig | None:
    if cfg.mode == "lora":
        lora = LoRAConfig(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, list(cfg.lora_targets), cfg.model)
        apply_lora(model, lora, seed=cfg.seed)
        return lora
    projector = [getattr(model, name, None) for name in ("pre_mm_projector_norm", "patch_merger")]
    parts = {
        "vision_encoder": [model.vision_encoder],
        # everything between the encoder and the decoder: the family's projector norm and patch merger too
        "adapter": [m for m in projector if m is not None] + [model.vision_language_adapter],
        "decoder": [model.tok_embeddings, model.layers, model.norm, model.output],
    }
    for name in cfg.freeze:
        for module in parts[name]:
            module.requires_grad_(False)
    return None


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1 over `warmup` steps, then cosine down to min_ratio at `total` (0-based step)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    use_bf16 = cfg.precision == "bf16" or (
        cfg.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _no_sync(wrapped: nn.Module, last: bool, strategy: str) -> contextlib.AbstractContextManager:
    """Skip the gradient reduction on all but the last micro-batch of a step."""
    if last:
        return contextlib.nullcontext()
    if hasattr(wrapped, "no_sync"):  # DDP
        return wrapped.no_sync()
    if hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2

        @contextlib.contextmanager
        def fsdp_no_sync():
            wrapped.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                wrapped.set_requires_gradient_sync(True)

        return fsdp_no_sync()
    return contextlib.nullcontext()


def _micro_batches(rows: list[list[int]], size: int) -> list[list[list[int]]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


# ---- the loop ------------------------------------------------------------------------------------


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    eval_hook: EvalHook | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train as `cfg` says. `resume`: continue from the latest checkpoint in out_dir (start fresh when there
    is none). `stop_after`: return after this many optimizer steps of this invocation (tests)."""
    cfg = cfg.validated()
    info = D.setup(cfg.device)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, info, resume, eval_hook, stop_after)
    finally:
        torch.set_num_threads(threads)
        D.teardown()


@dataclass
class Run:
    """Everything the step loop needs, made once by `set_up`."""

    ctx: TrainContext
    train_data: ConversationDataset
    val_data: ConversationDataset | None
    schedule: RowSchedule  # which rows each rank trains on at each step
    trainable: list[nn.Parameter]
    accumulation: int  # micro-batches per step on each rank
    start_step: int  # 0, or the step of the checkpoint resumed from
    resumed_from: Path | None  # that checkpoint


@dataclass
class StepStats:
    loss: float  # mean token loss over the global batch
    lr: float  # the learning rate the step used
    grad_norm: float  # before clipping
    n_tokens: float  # tokens of the global batch
    n_loss: float  # loss tokens of the global batch
    seconds: float
    epoch: int


def _train(
    cfg: TrainConfig, info: D.DistInfo, resume: bool, eval_hook: EvalHook | None, stop_after: int | None
) -> TrainResult:
    """The step loop, with logging, checkpoints, validation and the eval hook at their intervals."""
    run = set_up(cfg, info, resume)
    ctx, start_step = run.ctx, run.start_step
    metrics = MetricsLogger(
        ctx.out_dir, info.is_main, cfg.max_steps, start_step, cfg.progress, cfg.tensorboard
    )
    if start_step:
        metrics.message(f"resumed from {run.resumed_from} at step {start_step}")
    metrics.message(
        f"training {sum(p.numel() for p in run.trainable):,} parameters on {info.world_size} rank(s), "
        f"{run.train_data.stats.samples} samples, {run.accumulation} micro-batch(es) of {cfg.micro_batch_size} "
        "per step"
    )

    stop = {"flag": False, "signal": 0}
    previous = _install_signal_handlers(stop)
    result = TrainResult(steps=start_step)
    timed_tokens, timed_seconds = 0.0, 0.0
    step = start_step
    try:
        while step < cfg.max_steps:
            s = train_step(run, step)
            step += 1
            if step > start_step + 1 or cfg.max_steps - start_step == 1:  # the first step warms up: not timed
                timed_tokens, timed_seconds = timed_tokens + s.n_tokens, timed_seconds + s.seconds
            result.losses[step], result.steps = s.loss, step
            _log_step(metrics, cfg, step, s)
            if not math.isfinite(s.loss):
                raise FloatingPointError(f"step {step}: the loss is {s.loss}; lower lr or check the data")

            stopping = D.any_rank(stop["flag"], info.device)
            if stopping or (cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps):
                _save(run, step)
            if stopping:
                metrics.message(f"interrupted: checkpoint saved at step {step}; continue with --resume")
                # a rank that did not get the signal itself stops with the others, as if sent SIGTERM
                result.interrupted, result.signal = True, stop["signal"] or signal.SIGTERM
                return result
            if run.val_data is not None and cfg.val_every and step % cfg.val_every == 0:
                metrics.log({"step": step, "val_loss": evaluate_loss(ctx, run.val_data)})
            if eval_hook is not None and cfg.eval_every and step % cfg.eval_every == 0:
                metrics.log({"step": step, **eval_hook(ctx, step)})
            if stop_after is not None and step - start_step >= stop_after:
                return result

        if start_step < cfg.max_steps or not list_checkpoints(ctx.out_dir):
            _save(run, step)
        if run.val_data is not None and not (cfg.val_every and step % cfg.val_every == 0):
            metrics.log({"step": step, "val_loss": evaluate_loss(ctx, run.val_data)})
        result.export_dir = export_model(
            ctx.root,
            ctx.out_dir / "final",
            ctx.model_config,
            info,
            cfg.export_formats,
            ctx.lora,
            ctx.tokenizer_dir,
            ctx.export_dtype,
        )
        metrics.message(f"exported the trained model to {result.export_dir}")
        return result
    finally:
        result.tokens_per_s = timed_tokens / timed_seconds if timed_seconds else 0.0
        _restore_signal_handlers(previous)
        metrics.close()


def train_step(run: Run, step: int) -> StepStats:
    """One optimizer step (0-based `step`): this rank's rows in micro-batches, forward and backward on each,
    then clipping, AdamW and the schedule. The loss is summed over tokens and divided by the loss-token count
    of the whole global batch (not averaged per micro-batch), so the gradient is exactly the same whatever the
    split into ranks and micro-batches; DDP / FSDP average over ranks, hence the world-size factor."""
    ctx, cfg, info = run.ctx, run.ctx.config, run.ctx.info
    t0 = time.perf_counter()
    rows = run.schedule.rank_rows(step, info.rank, info.world_size)
    _, epoch = run.schedule.step_rows(step)
    pad_id = ctx.tokenizer.instruct_tokenizer.tokenizer.pad_id
    patch = ctx.model_config.vision.patch_size
    batches = [
        collate(mb, run.train_data, pad_id, patch, cfg.pack)
        for mb in _micro_batches(rows, cfg.micro_batch_size)
    ]
    n_loss, n_tokens = D.all_sum(
        [sum(b.n_loss_tokens for b in batches), sum(b.n_tokens for b in batches)], info.device
    )
    local_loss = 0.0
    for i, batch in enumerate(batches):
        b = batch.to(info.device)
        with _no_sync(ctx.wrapped, i == len(batches) - 1, cfg.distributed), _autocast(cfg, info.device):
            loss_sum = ctx.wrapped(
                b.token_ids, b.labels, b.images, b.positions, b.mask
            )  # () summed token loss
            (loss_sum * (info.world_size / max(n_loss, 1.0))).backward()
        local_loss += float(loss_sum.detach())
    grad_norm = _clip(run.trainable, cfg.grad_clip)
    lr = ctx.optimizer.param_groups[0]["lr"]
    ctx.optimizer.step()
    ctx.scheduler.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    (total_loss,) = D.all_sum([local_loss], info.device)
    seconds = time.perf_counter() - t0
    return StepStats(total_loss / max(n_loss, 1.0), lr, grad_norm, n_tokens, n_loss, seconds, epoch)


def set_up(cfg: TrainConfig, info: D.DistInfo, resume: bool) -> Run:
    """Data, model, optimizer and schedule, and the checkpoint state when resuming."""
    out_dir = Path(cfg.out_dir)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(cfg.seed)
    accumulation = cfg.accumulation_steps(info.world_size)  # checks batch_size divides, before any work

    existing = latest_checkpoint(out_dir)
    if existing is not None and not resume:
        raise TrainConfigError(
            f"{out_dir} already holds checkpoints ({existing.name}): pass --resume to continue that run, "
            "or choose another out_dir"
        )

    train_records = read_records(cfg.data)  # before the model: bad data fails fast
    val_records = read_records(cfg.val_data) if cfg.val_data else None
    model, tokenizer, tokenizer_dir, stored_dtype = build_model(cfg)
    n_words = tokenizer.instruct_tokenizer.tokenizer.n_words
    if n_words > model.config.text.vocab_size:
        raise ConfigError(
            f"the tokenizer has {n_words} ids but the model's vocab_size is {model.config.text.vocab_size}"
        )
    lora = configure_trainable(model, cfg)
    model.to(info.device).train()
    if cfg.activation_checkpointing:
        D.apply_activation_checkpointing(model)
    root = LossModule(model)
    wrapped = D.wrap(root, model, info, cfg.distributed)

    trainable = [p for p in root.parameters() if p.requires_grad]
    optimizer, scheduler = _optimizer(cfg, trainable)

    train_data = ConversationDataset(train_records, tokenizer, cfg.seq_len, cfg.overflow, name="data")
    val_data = None
    if val_records is not None:
        val_data = ConversationDataset(val_records, tokenizer, cfg.seq_len, cfg.overflow, name="val_data")
    schedule = RowSchedule(train_data.lengths(), cfg.seq_len, cfg.pack, cfg.seed, cfg.batch_size)

    start_step, resumed_from = 0, None
    if resume and existing is not None:
        state = load_checkpoint(existing, root, optimizer, scheduler, info)
        _check_resumable(cfg, state, existing)
        start_step, resumed_from = int(state["step"]), existing
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "train_config.json").write_text(_json(cfg.to_dict()))

    ctx = TrainContext(
        cfg,
        info,
        model,
        root,
        wrapped,
        optimizer,
        scheduler,
        model.config,
        tokenizer,
        tokenizer_dir,
        lora,
        _export_dtype(cfg, stored_dtype),
        out_dir,
    )
    return Run(ctx, train_data, val_data, schedule, trainable, accumulation, start_step, resumed_from)


def _optimizer(cfg: TrainConfig, trainable: list[nn.Parameter]) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW (no weight decay on biases and norms: the 1-d parameters) and the warmup + cosine schedule."""
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
    )
    return optimizer, scheduler


def _log_step(metrics: MetricsLogger, cfg: TrainConfig, step: int, s: StepStats) -> None:
    if step % cfg.log_every == 0 or step == cfg.max_steps:
        metrics.log(
            {
                "step": step,
                "loss": s.loss,
                "lr": s.lr,
                "grad_norm": s.grad_norm,
                "tokens": int(s.n_tokens),
                "loss_tokens": int(s.n_loss),
                "tokens_per_s": s.n_tokens / s.seconds,
                "step_s": s.seconds,
                "epoch": s.epoch,
            }
        )
    tok_s = f"{s.n_tokens / s.seconds:.0f}"
    metrics.progress(1, {"loss": f"{s.loss:.4f}", "lr": f"{s.lr:.2e}", "tok/s": tok_s})


def _save(run: Run, step: int) -> None:
    ctx, cfg = run.ctx, run.ctx.config
    state = _train_state(cfg, run.train_data)
    save_checkpoint(ctx.out_dir, step, ctx.root, ctx.optimizer, ctx.scheduler, ctx.info, state, cfg.keep_last)


def _clip(params: list[torch.Tensor], max_norm: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
        norm = norm.full_tensor()
    return float(norm)


@torch.no_grad()
def evaluate_loss(ctx: TrainContext, data: ConversationDataset) -> float:
    """Mean token loss over a whole dataset; rows dealt round-robin to the ranks, fillers even them out."""
    info, cfg = ctx.info, ctx.config
    schedule = RowSchedule(data.lengths(), cfg.seq_len, cfg.pack, cfg.seed, 1)
    rows = schedule.epoch_rows(0)
    mine = rows[info.rank :: info.world_size]
    per_rank = math.ceil(len(rows) / info.world_size)
    mine += [[] for _ in range(per_rank - len(mine))]
    pad_id = ctx.tokenizer.instruct_tokenizer.tokenizer.pad_id
    ctx.root.eval()
    total, count = 0.0, 0
    try:
        for mb in _micro_batches(mine, cfg.micro_batch_size):
            b: Batch = collate(mb, data, pad_id, ctx.model_config.vision.patch_size, cfg.pack).to(info.device)
            with _autocast(cfg, info.device):
                total += float(ctx.wrapped(b.token_ids, b.labels, b.images, b.positions, b.mask))
            count += b.n_loss_tokens
    finally:
        ctx.root.train()
    total, count = D.all_sum([total, count], info.device)
    return total / max(count, 1.0)


def _train_state(cfg: TrainConfig, data: ConversationDataset) -> dict[str, Any]:
    return {"config": cfg.to_dict(), "data_stats": vars(data.stats)}


def _check_resumable(cfg: TrainConfig, state: dict[str, Any], path: Path) -> None:
    saved = state.get("config", {})
    changed = [k for k in TrainConfig.DATA_FIELDS if k in saved and saved[k] != getattr(cfg, k)]
    if changed:
        raise TrainConfigError(
            f"{path / STATE_FILE}: the run was saved with different {', '.join(changed)}; resuming would not "
            "continue the same run (use the saved values or a new out_dir)"
        )


def _export_dtype(cfg: TrainConfig, stored: torch.dtype | None) -> torch.dtype | None:
    return DTYPES[cfg.export_dtype] if cfg.export_dtype else stored


def _install_signal_handlers(stop: dict[str, Any]) -> dict[int, Any]:
    """SIGTERM / SIGINT: finish the current step, save a checkpoint, return."""

    def handler(signum: int, frame: Any) -> None:
        if stop["flag"]:  # a second signal: stop now
            raise KeyboardInterrupt
        stop["flag"], stop["signal"] = True, signum

    previous = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: no handlers
        pass
    return previous


def _restore_signal_handlers(previous: dict[int, Any]) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2) + "\n"
