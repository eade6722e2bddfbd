"""Training engine: one harness for CE, LA, CutMix, BCL and Contrastive CutMix.

Implements the training procedure of Pan et al., "Enhanced Long-Tailed Recognition with
Contrastive CutMix Augmentation" (IEEE TIP 2024), built on balanced contrastive learning
(Zhu et al., CVPR 2022) and logit adjustment (Menon et al., ICLR 2021). Every method
shares the data, the schedule and the evaluation, so comparisons are fair by
construction (see ``docs/method.md``).

``fit`` is the loop over epochs; the jobs it delegates live in their own modules:
the step (``ccmix.method.step``), evaluation (``ccmix.train.evaluation``), the run folder and resume
(``ccmix.train.run_folder``), random streams (``ccmix.rng``) and processes
(``ccmix.train.distributed``). See ``docs/architecture.md``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from tqdm.auto import tqdm

from ccmix.config.fields import TrainConfig
from ccmix.config.presets import preset_name_for
from ccmix.config.rules import ConfigError
from ccmix.config.validation import validate
from ccmix.data.batch import StepBatch
from ccmix.data.datasets import build_datasets
from ccmix.data.pipelines.build import build_train_pipeline, resolve_pipeline
from ccmix.method.collectives import DistContext
from ccmix.method.mixers import check_mixer
from ccmix.method.semantic_diagnostics import semantic_record
from ccmix.method.step import (
    CORRECT,
    COUNT,
    LOSS,
    LOSS_BCL,
    LOSS_CE,
    SEMANTIC,
    EpochTotals,
    TrainingDiverged,
    build_optimizer,
    compute_step_loss,
    cutmix_generator,
    draw_cutmix_boxes,
    learning_rate,
    loss_parts,
    step_loss_function,
    train_step,
    uses_semantic_labels,
)
from ccmix.rng import restore_rng_state, rng_state, seed_everything
from ccmix.train import checkpoint as ckpt
from ccmix.train.console import show_bars
from ccmix.train.distributed import (
    all_gather_objects,
    barrier,
    check_world_size,
    cleanup,
    init_distributed,
    main_process_first,
    synchronise_batchnorm,
    wrap_for_training,
)
from ccmix.train.evaluation import (
    build_run_model,
    build_test_source,
    embed_test_set,
    evaluate,
    evaluate_checkpoint,
    evaluate_distributed,
    load_model,
    model_description,
    predict,
)
from ccmix.train.guard import Guard, guarded_run
from ccmix.train.interrupt import check_step_boundary
from ccmix.train.loggers import check_logger, open_run_log
from ccmix.train.numerics import apply_numerics, request_deterministic_cublas
from ccmix.train.precision import check_cpu_bf16
from ccmix.train.report import start_run_report
from ccmix.train.run_folder import Resumed, RunFolder, load_run_config, shot_record
from ccmix.train.segments import record_segment, runtime_facts

# --------------------------------------------------------------------------- one epoch


def train_one_epoch(model, pipeline, optimizer, config: TrainConfig, epoch: int, class_counts: torch.Tensor,
                    device: torch.device, context: DistContext | None = None, progress: bool = True,
                    on_step: Callable[[], None] | None = None, loss_function=loss_parts,
                    on_read: Callable[[int, dict], None] | None = None) -> dict:
    """Train one epoch (0-based) and return its mean losses, train top-1 (%) and samples/s.

    ``on_step`` is called after each step (``ccmix.train.report.RunReporter.step_done`` times the first ones),
    ``on_read(step, running)`` at each read of the device (``ccmix.train.loggers.RunLog.step_read``);
    ``loss_function`` is ``ccmix.method.step.step_loss_function(config, ...)``, compiled or not. Between
    logging steps (every ``config.log_every`` steps) nothing is read back from the device: the
    finiteness of the losses and the progress bar's figures are read there and at the end.
    """
    context = context or DistContext()
    model.train()
    lr = learning_rate(epoch, config)
    for group in optimizer.param_groups:
        group["lr"] = lr
    cutmix_rng = cutmix_generator(config, epoch)
    totals = EpochTotals(device)
    steps = pipeline.steps_per_epoch
    started = time.perf_counter()
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
               disable=not show_bars(progress, context.is_main))
    for step, batch in enumerate(pipeline.batches(epoch, rank=context.rank, world_size=context.world_size)):
        if step >= steps:
            break
        check_step_boundary(context, epoch + 1, step + 1)  # SIGINT / SIGTERM stop here, between two steps
        totals.add(train_step(model, optimizer, batch, config, epoch, class_counts, cutmix_rng, context,
                              loss_function=loss_function, semantic_totals=totals.semantic))
        bar.update(1)
        if on_step is not None:
            on_step()
        if (step + 1) % config.log_every == 0:
            running = totals.check(epoch, context)  # every rank, so the non-finite flags can be summed
            bar.set_postfix(loss=f"{running['loss']:.3f}", acc=f"{running['top1']:.1f}")
            if on_read is not None:
                on_read(step + 1, running)
    bar.close()
    if totals.steps > totals.checked:
        running = totals.check(epoch, context)
        if on_read is not None:
            on_read(totals.steps, running)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    totals = totals.reduced(context)
    count = max(float(totals[COUNT]), 1.0)
    # semantic_* fields only where semantic labels are in use (concutmix after l_d_warm), never as zeros
    semantic = semantic_record(totals[SEMANTIC:]) if uses_semantic_labels(config, epoch, mixed=True) else {}
    return {
        "lr": lr,
        "loss": float(totals[LOSS]) / count,
        "loss_ce": float(totals[LOSS_CE]) / count,
        "loss_bcl": float(totals[LOSS_BCL]) / count if config.uses_contrastive else None,
        "train_top1": 100.0 * float(totals[CORRECT]) / count,
        "train_seconds": seconds,
        "samples_per_second": float(totals[COUNT]) / seconds if seconds > 0 else None,
        **semantic,
    }


# --------------------------------------------------------------------------- fit


@dataclass
class _Progress:
    """Where training stands: epochs completed, metric history, best record, seconds, latest test metrics."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    train_seconds: float = 0.0
    last_metrics: dict | None = None

    @classmethod
    def of(cls, resumed: Resumed | None) -> _Progress:
        """Return the progress of a fresh run, or of the resumed one."""
        if resumed is None:
            return cls()
        return cls(epoch=resumed.epoch, history=resumed.history, best=resumed.best,
                   train_seconds=sum(r.get("seconds", 0.0) for r in resumed.history))


def fit(config: TrainConfig, out_dir: str | os.PathLike, preset: str | None = None,
        allow_more_epochs: bool = False, on_epoch: Sequence[Callable[[dict], None]] | None = None) -> dict:
    """Train ``config`` into the run folder ``out_dir`` (resuming when it holds last.pt) and return the summary.

    ``on_epoch``: callables that rank 0 calls with each epoch's metrics.jsonl record once it is saved
    (``ccmix.notebook.live.LiveCurves.update`` redraws a notebook's curves with it).

    The folder is owned while training (``ccmix.train.guard``): a second training into it is
    refused, a finished run is reported without being rewritten, other settings are refused
    (``allow_more_epochs`` lets a run continue to a larger ``epochs``), and SIGINT / SIGTERM
    stop at the next step boundary with ``"status": "interrupted"``.
    """
    config = validate(config)
    check_mixer(config)  # the registry of mixers lives with the step, above the config's own checks
    check_logger(config)  # logger=wandb without the package: one sentence before any data is read
    context = _join_processes(config)
    try:
        check_cpu_bf16(config, context.device)
        folder = RunFolder(out_dir, writer=context.is_main)
        with guarded_run(folder, config, context, allow_more_epochs=allow_more_epochs) as guard:
            if guard.completed is not None:
                return guard.completed
            return _train(config, folder, guard, context, preset, on_epoch or ())
    finally:
        cleanup(context)


def _train(config: TrainConfig, folder: RunFolder, guard: Guard, context: DistContext, preset: str | None,
           on_epoch: Sequence[Callable[[dict], None]] = ()) -> dict:
    """Train (or resume) into ``folder``, owned through ``guard``, and return the summary."""
    device = context.device
    train, test = _load_datasets(config, context)
    identity = guard.check_data(train, test)
    num_classes = len(train.class_counts)
    class_counts = torch.tensor(train.class_counts, dtype=torch.float32, device=device)
    model, sync_bn = _build_model(config, num_classes, context)
    optimizer = build_optimizer(model, config)
    folder.prepare()  # under the lock: clears only temporaries of writers that are gone
    resumed = folder.resume(config, model, optimizer, model_description(config, num_classes), num_classes,
                            data=identity)
    progress = _Progress.of(resumed)
    _agree_on_start(progress.epoch, folder, context)
    _announce_resume(resumed, folder, config, context, guard.unrecorded_stop)
    training_model = wrap_for_training(model, config, context, sync_bn=sync_bn)
    loss_function = step_loss_function(config, device, context)  # compiled once per run when config.compile
    pipeline = build_train_pipeline(train, config, device)
    _record_segment(folder, config, context, pipeline, sync_bn, progress.epoch)
    test_source = build_test_source(test, config, device, context)  # fast pipeline: decoded onto the device once
    _describe_run(folder, config, preset_name_for(config, preset), train, test, context, identity)
    folder.write_metrics(progress.history)
    # header, estimate and epoch lines on stdout: readable under papermill's --log-output and in logs
    report = start_run_report(
        config=config, device=device, preset=preset, train_images=len(train), test_images=len(test),
        steps_per_epoch=pipeline.steps_per_epoch, start_epoch=progress.epoch, world_size=context.world_size,
        out_dir=str(folder.path), write=tqdm.write,
    ) if config.progress and context.is_main else None
    if resumed is not None:
        restore_rng_state(resumed.rng)  # the generators stand exactly where the saved run's stood

    def evaluate_model() -> dict:
        return evaluate_distributed(model, test_source, device, train.class_counts, config, context)

    run_log = open_run_log(config, folder.path, context.is_main, pipeline.steps_per_epoch, progress.epoch)
    bar = tqdm(range(progress.epoch, config.epochs), desc="training", initial=progress.epoch,
               total=config.epochs, disable=not show_bars(config.progress, context.is_main))
    try:
        for epoch in bar:
            started = time.perf_counter()
            record = train_one_epoch(training_model, pipeline, optimizer, config, epoch, class_counts, device,
                                     context, progress=config.progress,
                                     on_step=report.step_done if report is not None else None,
                                     loss_function=loss_function, on_read=partial(run_log.step_read, epoch))
            _check_finite_state(model, epoch, pipeline.steps_per_epoch)  # never checkpoint broken weights
            evaluated = epoch + 1 == config.epochs or (epoch + 1) % config.eval_interval == 0
            metrics = evaluate_model() if evaluated else None
            improved = _record_epoch(progress, record, metrics, epoch, time.perf_counter() - started)
            if report is not None:
                report.epoch_done(progress.history[-1])
            run_log.epoch_done(progress.history[-1], progress.best)  # on disk before the checkpoint that holds it
            payload = _checkpoint_payload(config, model, optimizer, progress, num_classes, train, context, identity)
            folder.save_epoch(payload, progress.history, improved,
                              folder.summary("running", progress.epoch, progress.best, progress.train_seconds))
            for callback in on_epoch if context.is_main else ():
                callback(progress.history[-1])
            if metrics is not None:
                bar.set_postfix(top1=f"{metrics['top1']:.2f}", best=f"{progress.best['top1']:.2f}")
            barrier(context)
    except TrainingDiverged as error:
        raise _diverged(error, folder, progress) from None
    finally:
        bar.close()
        run_log.close()

    if progress.last_metrics is None:  # resumed a run whose last epoch was already trained: evaluate it again
        progress.last_metrics = evaluate_model()
    summary = folder.summary("completed", config.epochs, progress.best, progress.train_seconds,
                             final_metrics=progress.last_metrics)
    folder.write_per_class(progress.last_metrics, list(train.classes), train.class_counts, config)
    folder.write_predictions(progress.last_metrics)
    folder.write_summary(summary)
    barrier(context)
    return summary


def _join_processes(config: TrainConfig) -> DistContext:
    """Return this process's DistContext (joining torchrun's group), with the global generators seeded."""
    if config.device != "cpu":  # cuBLAS reads its workspace setting once: set it before CUDA starts
        request_deterministic_cublas(config.deterministic)
    try:
        context = init_distributed(config.device)
    except ValueError as error:  # device=cuda on a machine without CUDA
        raise ConfigError(str(error)) from None
    if context.enabled:
        try:
            check_world_size(config.batch_size, config.grad_accum_steps, context.world_size, config.bn_chunks)
        except ValueError as error:
            cleanup(context)
            raise ConfigError(str(error)) from None
    apply_numerics(config, context.device)  # deterministic kernels, cuDNN autotuning, TF32
    seed_everything(config.seed)
    return context


def _load_datasets(config: TrainConfig, context: DistContext):
    """Return (train, test); ConfigError when a small training set cannot be split over the processes."""
    with main_process_first(context):  # a download or cache is written once, by rank 0
        train, test = build_datasets(config)
    if context.enabled and len(train) < config.batch_size and len(train) % (
            context.world_size * config.grad_accum_steps):
        raise ConfigError(
            f"batch_size={config.batch_size} is not accepted with {context.world_size} processes: it exceeds the "
            f"{len(train)} training images, so each step's global batch is all {len(train)} of them, which does "
            f"not split evenly; use a batch_size <= {len(train)}"
        )
    return train, test


def _build_model(config: TrainConfig, num_classes: int, context: DistContext) -> tuple[torch.nn.Module, bool]:
    """Return (the model on the device, whether its BatchNorm is synchronised over processes)."""
    model = build_run_model(config, num_classes, with_pretrained=True, processes=context.world_size).to(context.device)
    if context.device.type == "cuda" and config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return synchronise_batchnorm(model, config, context)


def _agree_on_start(start_epoch: int, folder: RunFolder, context: DistContext) -> None:
    """Raise CheckpointError when the processes found checkpoints of different epochs."""
    starts = all_gather_objects(start_epoch, context)
    if len(set(starts)) > 1:
        raise ckpt.CheckpointError(
            f"the processes found different checkpoints in {str(folder.path)!r} (epochs completed per rank: "
            f"{starts}); the run folder must be on a filesystem that every node shares"
        )


def _announce_resume(resumed: Resumed | None, folder: RunFolder, config: TrainConfig, context: DistContext,
                     unrecorded_stop: str | None = None) -> None:
    """Say where a resumed run continues (rank 0, when progress is shown), after the line saying that its previous
    trainer stopped without recording it, when it did (``Guard.unrecorded_stop``; shown always)."""
    if unrecorded_stop is not None and context.is_main:
        tqdm.write(unrecorded_stop)
    if resumed is not None and context.is_main and config.progress:
        tqdm.write(f"resuming {str(folder.path)!r} from {resumed.path.name} after epoch {resumed.epoch} of "
                   f"{config.epochs}")


def _record_segment(folder: RunFolder, config: TrainConfig, context: DistContext, pipeline, sync_bn: bool,
                    epochs_done: int) -> None:
    """Add this start's runtime facts to segments.jsonl; say in one line when a resume changes one that can
    change the numbers (``ccmix.train.segments``)."""
    used = "classic" if getattr(pipeline, "fallback", None) is not None else resolve_pipeline(config.pipeline,
                                                                                             context.device)
    facts = runtime_facts(config, context.device, context.world_size, used, sync_bn)
    change = record_segment(folder, epochs_done, facts)
    if change is not None and context.is_main:
        tqdm.write(change)


def _describe_run(folder: RunFolder, config: TrainConfig, preset_name: str | None, train, test,
                  context: DistContext, identity: dict) -> None:
    """Write config.json (settings, and the data's identity: ``ccmix.data.identity``) and set the facts every
    summary repeats."""
    num_classes = len(train.class_counts)
    folder.write_config(config, preset_name, world_size=context.world_size, num_classes=num_classes, **identity)
    folder.start_summary(config, preset_name, world_size=context.world_size, num_classes=num_classes,
                         train_images=len(train), test_images=len(test))


def _record_epoch(progress: _Progress, record: dict, metrics: dict | None, epoch: int, seconds: float) -> bool:
    """Add 0-based ``epoch``'s record (and test metrics, when evaluated) to ``progress``; True when best improved.

    ``seconds``: the epoch's wall time, training and evaluation.
    """
    if metrics is not None:
        progress.last_metrics = metrics
    progress.train_seconds += seconds
    progress.epoch = epoch + 1
    line = {"epoch": epoch + 1, **{k: v for k, v in record.items() if k != "train_seconds"}, "seconds": seconds,
            **{k: v for k, v in shot_record(metrics, None).items() if k != "epoch"}}
    progress.history.append(line)
    improved = metrics is not None and (progress.best is None or metrics["top1"] > progress.best["top1"])
    if improved:
        progress.best = shot_record(metrics, epoch + 1)
    return improved


def _checkpoint_payload(config: TrainConfig, model, optimizer, progress: _Progress, num_classes: int, train,
                        context: DistContext, identity: dict) -> dict:
    """Return the checkpoint of the run as it stands (rank 0 saves it; other ranks skip building it)."""
    if not context.is_main:
        return {}
    # No scheduler state: the learning rate is a pure function of the epoch (learning_rate). Samplers, views
    # and CutMix boxes draw from generators seeded by (seed, epoch), so the global generators in "rng" are all
    # the random state there is.
    return {
        "config": config.to_dict(), "epoch": progress.epoch, "num_classes": num_classes,
        "model_description": model_description(config, num_classes), "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "best": progress.best, "rng": rng_state(),
        "class_counts": list(map(int, train.class_counts)), "world_size": context.world_size,
        "history": progress.history, "train_seconds": progress.train_seconds, "data": identity,
    }


def _diverged(error: TrainingDiverged, folder: RunFolder, progress: _Progress) -> TrainingDiverged:
    """Return the error to raise for a diverged run, after writing its metrics and failed summary."""
    epoch = progress.epoch
    kept = f"{ckpt.LAST} holds epoch {epoch}" if epoch > 0 else "no epoch completed, so no checkpoint was written"
    message = f"{error}; {kept}"
    folder.write_metrics(progress.history)
    folder.write_summary(folder.summary("failed", epoch, progress.best, progress.train_seconds, error=message))
    return TrainingDiverged(message)


def _check_finite_state(model: torch.nn.Module, epoch: int, steps: int) -> None:
    """Raise TrainingDiverged when a parameter or buffer of ``model`` holds inf or nan after 0-based ``epoch``."""
    floats = {name: value for name, value in model.state_dict().items() if value.is_floating_point()}
    finite = torch.stack([torch.isfinite(value).all() for value in floats.values()]).tolist()  # one device read
    for name, ok in zip(floats, finite):
        if not ok:
            raise TrainingDiverged(
                f"the model's {name} became non-finite at epoch {epoch + 1}, step {steps}; training stopped "
                "and the last good checkpoint was kept (try a lower lr)"
            )


__all__ = [
    "fit", "train_one_epoch", "evaluate", "predict", "learning_rate", "compute_step_loss", "load_run_config",
    "load_model", "embed_test_set", "evaluate_checkpoint", "TrainingDiverged",
    # also importable from here, defined in the modules that own them
    "StepBatch", "build_optimizer", "build_run_model", "draw_cutmix_boxes", "model_description",
    "synchronise_batchnorm", "wrap_for_training",
]
