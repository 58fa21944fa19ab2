"""The ``metabench`` command line: fetch data, train, evaluate, predict.

Every command only parses options, calls library code and prints. Settings come from params.yaml:
``data.<source>`` (fetch options), ``run`` (defaults of every run), and
``algorithms.<name>.run`` / ``algorithms.<name>.hyper`` (one algorithm's run settings and
hyper-parameters). Command-line options override them.

Commands import the library's heavy modules (torch, MLflow, pandas, the algorithms) inside their
bodies, so that ``metabench --help`` and ``--version`` answer without loading them.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from metabench import MetabenchError, __version__, files
from metabench.allocator import keep_freed_memory
from metabench.config import RunConfig, load_params, parse_overrides, resolve_run
from metabench.lifeline import stop_on_sigterm
from metabench.run_folder import METRICS, RunFolder

app = typer.Typer(
    help="Reproducible few-shot meta-learning benchmarks.\n\n"
    "Typical use: `metabench fetch glyphs`, then `metabench train --algorithm protonet`, "
    "then `metabench evaluate --algorithm protonet`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstrings are Markdown: paragraphs reflow, `code` renders
    context_settings={"help_option_names": ["-h", "--help"]},
)
_typed = typer.core.TyperOption.display_type_rich


def _type_unless_flag(option: typer.core.TyperOption, ctx) -> str | None:
    """Typer 0.29's help writes ``<bool>`` beside every flag, which takes no value: it reads as
    if ``--force true`` were the way to pass it. A flag shows no type; every other option its own."""
    return None if option.is_flag else _typed(option, ctx)


typer.core.TyperOption.display_type_rich = _type_unless_flag
console = Console(stderr=True)  # logs, warnings and progress
results = Console(width=max(Console().width, 120))  # results (tables) on stdout

PARAMS = typer.Option(
    None, "--params", help="YAML file with data/run/algorithms sections (default: ./params.yaml if present)."
)
HP = typer.Option(
    [], "--hp", help="Hyper-parameter override key=value (repeatable); a run with overrides gets its own folder."
)
EPISODES_DIR = typer.Option(None, help="Where the fixed validation/test episodes are (default: DATA_DIR/episodes).")
TRAIN_QUERIES = typer.Option(
    None,
    help="Query images per class in training episodes (an override: the run gets its own folder) "
    "(default: the algorithm family's protocol, e.g. K for the MAML family)",
)


def _from_params(text: str, field: str) -> str:
    """Help for an option whose default comes from params.yaml: says where, and the built-in value."""
    builtin = {f.name: f.default for f in dataclasses.fields(RunConfig)}[field]
    return f"{text} (default: algorithms.ALGORITHM.run.{field}, else run.{field} of params.yaml, else {builtin!r})"


def _version(show: bool) -> None:
    if show:
        print(f"metabench {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Reproducible few-shot meta-learning benchmarks."""


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


class _Bars:
    """Progress bars on stderr, one per phase (``update(phase, done, total)``), drawn from the first
    update on: an input error found before any work starts prints alone, without an empty bar."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix, self.progress, self.tasks = prefix, None, {}

    def __enter__(self) -> _Bars:
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, phase: str, done: int, total: int | None) -> None:
        if self.progress is None:
            self.progress = _progress()
            self.progress.start()
        if phase.endswith("(bytes)"):  # downloads: count in MB
            phase, done, total = (
                phase[: -len("(bytes)")] + "(MB)",
                done // 10**6,
                None if total is None else -(-total // 10**6),
            )
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(f"{self.prefix}{phase}", total=total)
        self.progress.update(self.tasks[phase], completed=done, total=total)

    def describe(self, phase: str, text: str) -> None:
        """Show ``text`` as the label of ``phase``'s bar (e.g. the last validation accuracy)."""
        if phase in self.tasks:
            self.progress.update(self.tasks[phase], description=f"{self.prefix}{text}")


def load_checked(path: Path | None) -> dict:
    """The params file, every key checked (``params_check``; imported here: it needs torch)."""
    from metabench.params_check import load_checked as checked

    return checked(path)


def _resolve(params_path: Path | None, overrides: dict | None, hp: list[str], **selection):
    """The run picked by ``selection`` (identity and location options) with ``overrides`` and ``--hp``."""
    where = str(params_path or "built-in defaults")
    params = load_checked(params_path)
    if selection.get("algorithm") is None and not (params.get("run") or {}).get("algorithm"):
        from metabench.algorithms import list_algorithms

        raise MetabenchError(f"which algorithm? pass --algorithm, one of {', '.join(list_algorithms())}")
    return resolve_run(params, selection, overrides, parse_overrides(list(hp)), where=where)


@app.command()
def fetch(
    source: str = typer.Argument(
        ...,
        help="Dataset source: glyphs (embedded, no download), omniglot, cifar-fs, fc100, miniimagenet, "
        "tieredimagenet or folder (your own images; set data.folder.source).",
    ),
    params: Path | None = PARAMS,
    data_dir: Path = typer.Option(Path("data"), help="Where datasets are stored."),
    location: str | None = typer.Option(
        None, "--from", help="Where the data is: Omniglot's URL prefix or folder of zips; CIFAR's archive URL or path."
    ),
    split: str | None = typer.Option(None, help="Omniglot: 'lake' (background/evaluation) or 'vinyals'."),
    rotations: bool | None = typer.Option(None, "--rotations/--no-rotations", help="Omniglot: add rotated classes."),
    record: Path | None = typer.Option(
        None, help="Also write the stored dataset's name, checksum and sizes to this JSON file."
    ),
) -> None:
    """Download (or generate) a dataset, verify it and convert it into the dataset store.

    ``--record`` lets a pipeline track a dataset kept in a store shared between pipelines: the
    small JSON file is the stage's output, and it changes exactly when the stored data does.
    """
    from metabench import api
    from metabench.data import SOURCES

    if source not in SOURCES:
        raise MetabenchError(f"unknown dataset source {source!r}; choose one of {', '.join(SOURCES)}")
    given = {"source": location, "split": split, "rotations": rotations}
    with _Bars(f"fetch {source}: ") as bars:
        dataset = api.fetch(
            source,
            data_dir=data_dir,
            params=params,
            progress=bars.update,
            **{key: value for key, value in given.items() if value is not None},
        )
    table = Table(title=f"{dataset.name} stored in {data_dir / dataset.name}")
    for column in ("split", "classes", "images", "groups"):
        table.add_column(column)
    for name, part in dataset.splits.items():
        table.add_row(name, str(part.n_classes), str(len(part.images)), str(len(set(part.groups))))
    results.print(table)
    print(f"checksum {dataset.checksum}")
    if record is not None:
        sizes = {name: {"classes": part.n_classes, "images": len(part.images)} for name, part in dataset.splits.items()}
        receipt = {"name": dataset.name, "checksum": dataset.checksum, "data_dir": str(data_dir), "splits": sizes}
        files.write_json(record, receipt)


@app.command()
def train(
    context: typer.Context,
    algorithm: str | None = typer.Option(
        None, help="Registered algorithm, e.g. protonet, maml (see `metabench algorithms`)."
    ),
    dataset: str | None = typer.Option(
        None, help=_from_params("Stored dataset name, e.g. glyphs, omniglot.", "dataset")
    ),
    ways: int | None = typer.Option(None, help=_from_params("Classes per test episode.", "ways")),
    shots: int | None = typer.Option(None, help=_from_params("Support images per class.", "shots")),
    seed: int | None = typer.Option(None, help=_from_params("Seed of initialisation and training episodes.", "seed")),
    iterations: int | None = typer.Option(None, help=_from_params("Outer updates to run.", "iterations")),
    train_queries: int | None = TRAIN_QUERIES,
    device: str | None = typer.Option(None, help=_from_params("auto (CUDA if present), cpu or cuda.", "device")),
    data_dir: str | None = typer.Option(None, help=_from_params("Dataset store directory.", "data_dir")),
    runs_dir: str | None = typer.Option(None, help=_from_params("Where run outputs go.", "runs_dir")),
    episodes_dir: str | None = EPISODES_DIR,
    hp: list[str] = HP,
    force: bool = typer.Option(
        False, "--force", help="Retrain over a finished run that was trained with other settings or code."
    ),
    then_evaluate: bool = typer.Option(
        False, "--evaluate", help="Then score it on the test episodes in the same process (one grid unit)."
    ),
    ranks: str = typer.Option(
        "auto",
        help="Processes sharing each meta-batch: auto (MAML family, MetaLSTM, Reptile: one per core, or per "
        "GPU; others: 1) or a number; part of the run's identity when above 1.",
    ),
    params: Path | None = PARAMS,
) -> None:
    """Meta-train one run; resumes if interrupted; keeps the best checkpoint by validation accuracy.

    Progress goes to stderr; the training summary (JSON) to stdout. Algorithms that average
    over a meta-batch (MAML, FOMAML, Meta-SGD, ANIL, MetaLSTM, Reptile) split it over local ranks
    (`--ranks`, PyTorch's torchrun launcher; gloo on CPU, NCCL on GPUs); rank 0 writes the run.
    Under `torchrun --nproc-per-node N -m metabench train ...` (several machines, say) the N
    processes are the ranks.
    """
    from metabench import api, distributed
    from metabench.runner import training_arrangement

    overrides = {"iterations": iterations, "train_queries": train_queries}
    config = _resolve(
        params,
        overrides,
        hp,
        algorithm=algorithm,
        dataset=dataset,
        ways=ways,
        shots=shots,
        seed=seed,
        device=device,
        runs_dir=runs_dir,
        data_dir=data_dir,
        episodes_dir=episodes_dir,
    )
    if distributed.requested_ranks() == 1:  # not yet a rank: choose the arrangement
        plan = training_arrangement(config, _ranks_number(ranks))
        if plan.ranks > 1:
            console.print(f"{config.run_id}: {plan.ranks} ranks × {plan.threads} thread(s) (--ranks 1: one process)")
            command = _command_line(context, exclude=("ranks", "then_evaluate"))
            distributed.launch(plan, [*command, "--ranks", str(plan.ranks)])  # rank 0 prints the summary
            if then_evaluate:  # here, with every core: the ranks have exited
                _evaluate_and_show(config)
            return
    elif ranks != "auto" and _ranks_number(ranks) != distributed.requested_ranks():
        raise MetabenchError(f"--ranks {ranks} but torchrun started {distributed.requested_ranks()} ranks")
    with _Bars(f"{config.run_id} ") as bars:

        def show(phase: str, done: int, total: int) -> None:
            if phase.startswith("val "):  # a validation finished: its accuracy labels the training bar
                bars.describe("train", f"train ({phase})")
            else:
                bars.update(phase, done, total)

        api.train(config, progress=show, force=force)
    if not distributed.is_writer():  # under torchrun, rank 0 reports the run
        return
    print(json.dumps(files.read_json(RunFolder(config.run_dir).train_summary, "training summary", "train again")))
    if then_evaluate:
        _evaluate_and_show(config)


def _ranks_number(ranks: str) -> int | None:
    """``--ranks``: None for auto, else a positive count."""
    if ranks == "auto":
        return None
    if not ranks.isdigit() or int(ranks) < 1:
        raise MetabenchError(f"--ranks must be auto or a positive number, not {ranks!r}")
    return int(ranks)


def _command_line(context: typer.Context, exclude: tuple[str, ...]) -> list[str]:
    """The command's name and options as given (all but ``exclude``), to run it again."""
    command = [context.info_name]
    for option in context.command.params:
        value = context.params.get(option.name)
        if option.name in exclude or value is None or value is False or value == [] or value == option.default:
            continue
        flag = option.opts[0]
        if value is True:
            command.append(flag)
        else:
            command += [
                item
                for element in (value if isinstance(value, (list, tuple)) else [value])
                for item in (flag, str(element))
            ]
    return command


@app.command()
def episodes(
    params: Path | None = PARAMS,
    data_dir: str | None = typer.Option(None, help=_from_params("Dataset store directory.", "data_dir")),
    episodes_dir: str | None = EPISODES_DIR,
) -> None:
    """Make the fixed validation and test episodes of every leaderboard run, once.

    Train and evaluate make a missing episode file themselves; the pipelines run this first so
    the episodes every algorithm is scored on are one declared, cached output.
    """
    from metabench.board import leaderboard_runs
    from metabench.runner import prepare_episodes

    configs = leaderboard_runs(
        load_checked(params), str(params or "params.yaml"), data_dir=data_dir, episodes_dir=episodes_dir
    )
    count = prepare_episodes(configs)
    console.print(f"{count} fixed episode sets ready in {configs[0].episodes_path}")


@app.command()
def evaluate(
    algorithm: str | None = typer.Option(None, help="Registered algorithm of the run."),
    dataset: str | None = typer.Option(None, help=_from_params("Stored dataset name.", "dataset")),
    ways: int | None = typer.Option(None, help=_from_params("Classes per test episode.", "ways")),
    shots: int | None = typer.Option(None, help=_from_params("Support images per class.", "shots")),
    seed: int | None = typer.Option(None, help=_from_params("Seed of the run to evaluate.", "seed")),
    device: str | None = typer.Option(None, help=_from_params("auto, cpu or cuda.", "device")),
    data_dir: str | None = typer.Option(None, help=_from_params("Dataset store directory.", "data_dir")),
    runs_dir: str | None = typer.Option(None, help=_from_params("Where run outputs are.", "runs_dir")),
    episodes_dir: str | None = EPISODES_DIR,
    train_queries: int | None = TRAIN_QUERIES,
    hp: list[str] = HP,
    params: Path | None = PARAMS,
) -> None:
    """Score a trained run on the fixed test episodes: mean accuracy and 95% interval.

    The run is found as `train` placed it: give the same options and overrides. A method with
    batch norm is scored inductively and transductively from the same checkpoint; the headline
    is its own mode. Prints ``RUN_ID: accuracy ± interval % (…, mode; other mode …)`` to stdout
    (metrics.json in the run folder has every number).
    """

    config = _resolve(
        params,
        {"train_queries": train_queries},
        hp,
        algorithm=algorithm,
        dataset=dataset,
        ways=ways,
        shots=shots,
        seed=seed,
        device=device,
        runs_dir=runs_dir,
        data_dir=data_dir,
        episodes_dir=episodes_dir,
    )
    _evaluate_and_show(config)


def _evaluate_and_show(config) -> None:
    """Evaluate with a progress bar on stderr; the result line goes to stdout."""
    from metabench import api

    with _Bars(f"{config.run_id} ") as bars:
        metrics = api.evaluate(config, progress=bars.update)
    others = "".join(
        f"; {mode} {100 * scored['accuracy']:.2f} ± {100 * scored['ci95']:.2f} %"
        for mode, scored in metrics["modes"].items()
        if mode != metrics["scoring"]
    )
    print(
        f"{config.run_id}: {100 * metrics['accuracy']:.2f} ± {100 * metrics['ci95']:.2f} % "
        f"(95% interval, {metrics['episodes']} episodes, {metrics['scoring']}{others})"
    )


@app.command()
def grid(
    params: Path | None = PARAMS,
    workers: int | None = typer.Option(
        None, help="Runs at once (default: one per usable core on a CPU, one with a GPU)."
    ),
    threads: int | None = typer.Option(
        None,
        help="Torch threads per run (default: the cores divided between the workers); part of each run's identity.",
    ),
    data_dir: str | None = typer.Option(None, help=_from_params("Dataset store directory.", "data_dir")),
    runs_dir: str | None = typer.Option(None, help=_from_params("Where run outputs go.", "runs_dir")),
    episodes_dir: str | None = EPISODES_DIR,
    profiles_dir: Path = typer.Option(Path("profiles"), help="Earlier cost profiles, to start the longest runs first."),
    record: Path = typer.Option(Path("grid.json"), help="Where to write every run's result, output hash and cost."),
    ray_address: str | None = typer.Option(
        None,
        envvar="RAY_ADDRESS",
        help="Run the grid on this Ray cluster (a Ray task per run; pip install 'metabench\\[ray]') "
        "instead of local worker processes.",
    ),
) -> None:
    """Train and evaluate every run of params.yaml's leaderboard, several at once; runs whose
    results match their current settings, data and code are kept, interrupted ones resume.

    With --ray-address (or RAY_ADDRESS) each run is a Ray task on that cluster; the dataset
    travels through Ray's object store and only this process writes runs/ and MLflow."""
    from metabench import grid as grid_runs
    from metabench.board import leaderboard_runs
    from metabench.pipeline import require_current_behaviour

    require_current_behaviour()

    where = str(params or "params.yaml")
    configs = leaderboard_runs(
        load_checked(params), where, data_dir=data_dir, runs_dir=runs_dir, episodes_dir=episodes_dir
    )
    executor = grid_runs.executor_for(configs, workers, threads, ray_address)
    if ray_address:
        console.print(f"{len(configs)} runs on the Ray cluster at {ray_address}, {executor.threads} thread(s) each")
    else:
        console.print(f"{len(configs)} runs, {executor.workers} at a time, {executor.threads} thread(s) each")
    stop_on_sigterm()  # SIGTERM (dvc, a scheduler) stops the workers as Ctrl-C does
    start = time.perf_counter()
    progress = grid_runs.GridProgress(configs, getattr(executor, "workers", 1), profiles_dir)

    def show(outcome) -> None:  # one plain line per run on stderr: a terminal, `dvc repro` and a log alike
        console.print(progress.line(outcome), highlight=False, markup=False, soft_wrap=True)

    try:
        outcomes = grid_runs.run_grid(configs, executor, show, profiles_dir)
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM: every worker has been stopped
        console.print(f"[yellow]interrupted[/yellow]: {record} is unchanged; run the same command again to resume")
        raise typer.Exit(getattr(interrupt, "exit_code", 130)) from None
    failed = [outcome for outcome in outcomes if outcome.status == "failed"]
    if failed:
        raise MetabenchError(
            f"{len(failed)} of {len(outcomes)} runs failed ({', '.join(o.run_id for o in failed)}); "
            f"fix the cause and run the grid again: finished runs are kept"
        )
    grid_runs.write_record(record, outcomes, executor, time.perf_counter() - start)
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["run_id", "accuracy", "ci95", "status"])
    for outcome in outcomes:
        writer.writerow(
            [outcome.run_id, f"{outcome.metrics['accuracy']:.6f}", f"{outcome.metrics['ci95']:.6f}", outcome.status]
        )


@app.command()
def predict(
    checkpoint: Path = typer.Option(..., help="A run's checkpoint.pt."),
    support: Path = typer.Option(..., help="Folder with one sub-folder of images per class."),
    query: Path = typer.Option(..., help="Folder of images to classify."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    probabilities: bool = typer.Option(
        False, "--probabilities", help="Also print each class's probability (softmax of the method's scores)."
    ),
    scoring: str | None = typer.Option(
        None,
        help="inductive (no image's answer depends on another) or transductive, for a method with "
        "batch norm; default: the method's own mode.",
    ),
) -> None:
    """Classify your own images: prints `image,predicted_class` CSV rows to standard output.

    Scored transductively, one image's answer depends on the other query images (the network
    normalises with their batch statistics); it warns, once, and `--scoring inductive` avoids it.
    """
    from metabench import api
    from metabench.folders import load_queries, load_support

    model = api.load_model(checkpoint, device=device)
    channels, height, _ = model.image_shape
    support_x, support_y, class_names = load_support(support, channels, height)
    query_x, query_names = load_queries(query, channels, height)
    scores = model.predict(support_x, support_y, query_x, scoring)
    if (scoring or model.scoring) == "transductive":
        console.print(
            f"[yellow]warning:[/yellow] {model.algorithm} is scored transductively: each prediction depends on the "
            f"other {len(query_names) - 1} images in {query} (their batch statistics); classify them together, "
            f"or pass --scoring inductive"
        )
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["image", "predicted_class", *([f"p_{name}" for name in class_names] if probabilities else [])])
    for name, row in zip(query_names, scores.tolist()):
        label = max(range(len(row)), key=row.__getitem__)
        writer.writerow([name, class_names[label], *([f"{value:.6f}" for value in row] if probabilities else [])])


@app.command()
def profile(
    algorithm: str | None = typer.Option(
        None, help="Registered algorithm; default: every algorithm × shots of params.yaml's leaderboard."
    ),
    dataset: str | None = typer.Option(None, help=_from_params("Stored dataset name.", "dataset")),
    ways: int | None = typer.Option(None, help=_from_params("Classes per test episode.", "ways")),
    shots: int | None = typer.Option(None, help=_from_params("Support images per class.", "shots")),
    device: str | None = typer.Option(None, help=_from_params("auto, cpu or cuda.", "device")),
    data_dir: str | None = typer.Option(None, help=_from_params("Dataset store directory.", "data_dir")),
    out: Path | None = typer.Option(None, help="JSON file to write (default: OUT_DIR/DATASET-ALGORITHM-WwKs.json)."),
    out_dir: Path = typer.Option(
        Path("runs/profiles"),
        help="Where profiles go: not the committed profiles/ (the pipeline's outputs) unless given.",
    ),
    hp: list[str] = HP,
    force: bool = typer.Option(False, "--force", help="Measure again a profile that is current (same identity)."),
    params: Path | None = PARAMS,
) -> None:
    """Measure what a method costs: meta-train steps/s, adaptation tasks/s, GFLOP/s, peak memory.

    The numbers also go to MLflow as ``cost.*`` metrics of each tracked run of the setting (every
    seed), beside its accuracy.

    Without ``--algorithm``, profiles every algorithm and shot count of the leaderboard in
    params.yaml in one process (what the pipeline's profile stage does). A profile measured for
    the same identity (settings, data, behaviour versions, threads, torch and CPU) is kept unless
    ``--force``. Profile on a quiet machine: other work running at the same time slows every number.
    """
    from metabench.board import profiled_settings
    from metabench.pipeline import require_current_behaviour
    from metabench.profiling import profile_to, runs_of_setting
    from metabench.tracking import log_cost

    require_current_behaviour()

    if algorithm is None:
        if out is not None:
            raise MetabenchError("--out needs --algorithm (one profile); without it use --out-dir")
        selection = profiled_settings(load_checked(params), str(params), shots)
    else:
        selection = [(algorithm, shots)]
    with _progress() as progress:
        task = progress.add_task("profile", total=len(selection))
        for name, count in selection:
            config = _resolve(
                params,
                None,
                hp,
                algorithm=name,
                dataset=dataset,
                ways=ways,
                shots=count,
                seed=0,
                device=device,
                data_dir=data_dir,
            )
            progress.update(task, description=f"profile {config.algorithm} {config.ways}-way {config.shots}-shot")
            path = out or config.profile_path(out_dir)
            result, measured = profile_to(config, path, force)
            if measured:
                log_cost(result, runs_of_setting(config))
            progress.advance(task)
            if len(selection) == 1:
                print(json.dumps(result, indent=1))
            else:
                console.print(
                    f"{path}: {result['meta_train_tasks_per_second']:.1f} meta-train tasks/s, "
                    f"{result['evaluation_episodes_per_second']:.1f} eval episodes/s"
                    + ("" if measured else " (kept: current)")
                )


@app.command()
def summary(
    runs_dir: Path = typer.Option(Path("runs"), help="Where run outputs are."),
) -> None:
    """Table of every evaluated run (accuracy ± 95% interval: the headline, then each scoring mode), reference methods included."""
    from metabench.summary import table as results_table

    evaluated = results_table(runs_dir)
    if evaluated.empty:
        raise MetabenchError(f"no evaluated runs in {runs_dir}; run `metabench train` and `metabench evaluate` first")
    out = Table(title=f"results in {runs_dir} (95% interval over the shared test episodes)")
    columns = ("dataset", "ways", "shots", "algorithm", "seed", "accuracy %", "episodes", "transductive")
    for column in (*columns, "inductive %", "transductive %"):
        out.add_column(column)
    for row in evaluated.itertuples():
        out.add_row(
            row.dataset,
            str(row.ways),
            str(row.shots),
            row.algorithm,
            str(row.seed),
            f"{100 * row.accuracy:.2f} ± {100 * row.ci95:.2f}",
            str(row.episodes),
            "yes" if row.transductive else "no",
            *(
                "–"
                if getattr(row, f"accuracy_{mode}") != getattr(row, f"accuracy_{mode}")
                else f"{100 * getattr(row, f'accuracy_{mode}'):.2f} ± {100 * getattr(row, f'ci95_{mode}'):.2f}"
                for mode in ("inductive", "transductive")
            ),
        )
    results.print(out)


@app.command()
def report(
    runs_dir: Path = typer.Option(Path("runs"), help="Where run outputs are."),
    profiles_dir: Path = typer.Option(Path("profiles"), help="Where profile JSON files are."),
    out_dir: Path = typer.Option(Path("reports"), help="Where to write leaderboard.md/.html and figures."),
    episodes_dir: Path | None = typer.Option(
        None,
        help="The fixed episodes the runs were scored on, for the open intervals "
        "(default: run.episodes_dir of params.yaml, else <run.data_dir>/episodes).",
    ),
    available: bool = typer.Option(
        False, "--available", help="Report the leaderboard's runs that are evaluated; name the missing ones."
    ),
    params: Path | None = PARAMS,
) -> None:
    """Write the leaderboard (markdown, self-contained HTML, figures) from run outputs only.

    With a `leaderboard` section in params.yaml, exactly its runs are reported; otherwise every
    evaluated run in the runs directory.
    """
    from metabench.board import leaderboard_runs
    from metabench.report import build

    settings = load_checked(params)
    run_ids = None
    if settings.get("leaderboard"):
        run_ids = [config.run_id for config in leaderboard_runs(settings, str(params or "params.yaml"))]
        if available:
            missing = [run_id for run_id in run_ids if not (runs_dir / run_id / METRICS).is_file()]
            if missing:
                console.print(f"[yellow]not evaluated yet, left out:[/yellow] {', '.join(missing)}")
            run_ids = [run_id for run_id in run_ids if run_id not in missing]
            if not run_ids:
                raise MetabenchError(f"none of the leaderboard's runs is evaluated in {runs_dir}; run `metabench grid`")
    if episodes_dir is None:
        run = settings.get("run") or {}
        episodes_dir = Path(run.get("episodes_dir") or Path(run.get("data_dir") or "data") / "episodes")
    headline = build(runs_dir, profiles_dir, out_dir, run_ids, episodes_dir)
    console.print(f"wrote {out_dir / 'leaderboard.md'} and {out_dir / 'leaderboard.html'}")
    print(json.dumps(headline, indent=1))


@app.command()
def reproduction(
    params: Path = typer.Option(
        ..., "--params", help="The paper-protocol profile, e.g. pipelines/omniglot_paper/params.yaml."
    ),
    algorithm: list[str] = typer.Option(
        [], help="Algorithms to write pages for (repeatable; default: every one with a paper entry)."
    ),
    shots: int = typer.Option(1, help="The setting of the pages (the papers' headline: 1)."),
    seed: int = typer.Option(0, help="Seed of the runs."),
    runs_dir: str | None = typer.Option(None, help=_from_params("Where run outputs are.", "runs_dir")),
    out_dir: Path = typer.Option(Path("reports/reproductions"), help="Where the pages go."),
) -> None:
    """Write reports/reproductions/ALGORITHM.md: the paper's figure beside our run at its protocol.

    Reads each run's files (trained with `metabench train --params ...` and evaluated); the
    paper's full budget is the profile's `iterations` for the algorithm.
    """
    from metabench.reproduction import PAPERS, write_pages

    settings = load_checked(params)
    names = list(algorithm) or [name for name in PAPERS if name in (settings.get("algorithms") or {})]
    unknown = [name for name in names if name not in PAPERS]
    if unknown:
        raise MetabenchError(f"no reproduction page for {', '.join(unknown)}; choose from {', '.join(PAPERS)}")
    location = {"runs_dir": runs_dir} if runs_dir else {}
    configs = [_resolve(params, None, [], algorithm=name, shots=shots, seed=seed, **location) for name in names]
    full = {config.algorithm: config.iterations for config in configs}  # the profile's budget, not --iterations
    for path in write_pages(configs, full, str(params), out_dir):
        print(path)


@app.command()
def track(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories, e.g. runs/glyphs-maml-5w1s-seed0."),
) -> None:
    """Send runs to MLflow again from their local files (after the tracking server was unreachable)."""
    from metabench.tracking import resend, tracking_uri

    for run_dir in run_dirs:
        if not RunFolder(run_dir).config.is_file():
            raise MetabenchError(f"{run_dir} is not a trained run (no config.json); give a directory under runs/")
        run_id = resend(run_dir)
        if run_id is None:
            raise MetabenchError(
                f"MLflow at {tracking_uri()} is still unreachable; {run_dir} is unchanged, try again later"
            )
        console.print(f"{run_dir} -> MLflow run {run_id} at {tracking_uri()}")


@app.command("check-params")
def check_params_command(
    params: Path = typer.Option(Path("params.yaml"), help="The params file to check."),
    record: Path | None = typer.Option(
        None, help="Also write that the file is valid to this JSON file (the pipeline's first stage's output)."
    ),
) -> None:
    """Check every key and value of a params file, as the commands will read them; change nothing.

    ``dvc repro`` runs this first, so a misspelt key stops the pipeline before any stage deletes
    or rewrites an output. Every command checks its params file the same way when it loads it.
    """
    from metabench.params_check import check_params

    runs = check_params(load_params(params), str(params))
    if record is not None:  # constant content: a valid edit does not make the stages after this one re-run
        files.write_json(record, {"params": params.name, "valid": True})
    results.print(f"{params}: valid ({runs} runs defined)")


@app.command()
def pipeline(
    profile: list[str] = typer.Argument(
        None, help="Profiles under pipelines/ whose dvc.yaml to write too (e.g. omniglot_paper)."
    ),
    check: bool = typer.Option(
        False, "--check", help="Only report pipelines that are out of date (exit 1), write nothing."
    ),
    root: Path = typer.Option(Path("."), help="The project root (holds params.yaml, pipelines/ and metabench/)."),
) -> None:
    """Write dvc.yaml from params.yaml, and pipelines/PROFILE/dvc.yaml for each PROFILE named or
    written before, from the one template.

    A profile's pipeline exists once asked for: `metabench pipeline omniglot_paper`, then
    `dvc repro pipelines/omniglot_paper/dvc.yaml`. Until then DVC's read commands (`dvc exp
    show`, `dvc metrics show`, `dvc plots show`) show the default pipeline alone."""
    from metabench.pipeline import write_all

    if not (root / "params.yaml").is_file():
        raise MetabenchError(f"{root.resolve()} has no params.yaml; run this from the project root or pass --root")
    stale = write_all(check=check, root=root, wanted=profile or [])
    for path in stale:
        console.print(f"{'out of date' if check else 'wrote'}: {path}")
    if check and stale:
        raise MetabenchError("pipelines are out of date; run `metabench pipeline` (and commit dvc.yaml)")
    if not stale:
        console.print("every pipeline is up to date")


@app.command("algorithms")
def algorithms_command() -> None:
    """List every registered algorithm with its paper and what it adapts."""
    from metabench.algorithms import REGISTRY

    table = Table(title="registered algorithms")
    for column in ("name", "paper", "adapts at test time", "transductive"):
        table.add_column(column)
    for name, cls in sorted(REGISTRY.items()):
        table.add_row(name, cls.paper, cls.adapts, "yes" if cls.transductive else "no")
    results.print(table)


def main() -> None:
    keep_freed_memory()  # CPU speed: reuse freed activation buffers (see metabench/allocator.py)
    try:
        app()
    except MetabenchError as error:
        console.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True)  # "[ray]" is text, not markup
        if "TORCHELASTIC_ERROR_FILE" in os.environ:  # a launched rank: tell the launcher why
            from metabench import distributed  # only here: the command line starts without torch

            distributed.record_rank_error(error)
        raise SystemExit(2) from None
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM where a command turned it into this
        console.print("[yellow]interrupted[/yellow]: run the same command again to resume")
        raise SystemExit(getattr(interrupt, "exit_code", 130)) from None


if __name__ == "__main__":
    main()
