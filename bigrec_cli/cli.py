"""The `bigrec` command: thin Typer commands over library functions. Heavy modules are imported lazily."""

from __future__ import annotations

import errno
import io
import sys
import time
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

import typer

from bigrec_cli.config import DEFAULT_NEGATIVE_EVENTS, TrainConfig, parse_pairs
from bigrec_cli.console import error, info, key_values, print_json
from bigrec_cli.errors import EXIT_ROWS_REJECTED, EXIT_RUN_REJECTED, EXIT_USER_ERROR, BigrecError
from bigrec_cli.project import ProjectDir

app = typer.Typer(
    name="bigrec",
    help="A BERT → LSTM → sigmoid recommender: preprocess, extract, train, evaluate, recommend, ingest feedback.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help (click's): flags without a <bool> type column, wrapped to the terminal, 120 columns at most.
    rich_markup_mode=None,
    context_settings={"max_content_width": 120, "help_option_names": ["-h", "--help"]},
)


def show_version(value: bool) -> None:
    if value:
        import platform

        import bigrec_cli

        print(f"bigrec {bigrec_cli.__version__} (Python {platform.python_version()})")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show TensorFlow's own start-up logs too.", envvar="BIGREC_VERBOSE")
    ] = False,
) -> None:
    """A BERT → LSTM → sigmoid recommender: preprocess, extract, train, evaluate, recommend, ingest feedback."""
    if verbose:
        import os

        os.environ["BIGREC_VERBOSE"] = "1"


ProjectOption = Annotated[
    Path,
    typer.Option(
        "--project-dir",
        "-p",
        envvar="BIGREC_PROJECT_DIR",
        help="Where every artifact of this project lives.",
        file_okay=False,
        resolve_path=True,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
StoreOption = Annotated[
    Optional[str],
    typer.Option(
        "--store",
        envvar="BIGREC_STORE",
        metavar="URL",
        show_default=False,
        show_envvar=True,
        help="Feedback store shared by many servers: postgresql://USER@HOST:PORT/DATABASE (password from "
        "PGPASSWORD or ~/.pgpass). Default: the project's feedback.sqlite3.",
    ),
]
# Options that never come from bigrec.toml: where the project is, how to print, and the store (its URL may carry
# a password, and every command must use the same store: give it with --store or BIGREC_STORE).
NOT_IN_TOML = ("project_dir", "as_json", "store")


class InputFormat(str, Enum):
    files = "files"
    movielens_100k = "movielens-100k"


class Pooling(str, Enum):
    mean = "mean"
    cls = "cls"


class Loss(str, Enum):
    bce = "bce"
    gbce = "gbce"


class IndexMode(str, Enum):
    auto = "auto"
    exact = "exact"
    ivf = "ivf"
    hnsw = "hnsw"


def source_name(ctx: typer.Context, name: str) -> str:
    """Where Click took an option's value from: COMMANDLINE, ENVIRONMENT, DEFAULT_MAP or DEFAULT."""
    source = ctx.get_parameter_source(name)
    return source.name if source is not None else "DEFAULT"


def configured(ctx: typer.Context, section: str, project_dir: Path) -> dict[str, Any]:
    """The command's option values: flags and environment first, then `bigrec.toml`'s [section], then defaults."""
    from bigrec_cli.config import PROJECT_CONFIG, read_project_config

    table = read_project_config(project_dir).get(section, {})
    params = {param.name: param for param in ctx.command.params if param.name not in NOT_IN_TOML}
    values = dict(ctx.params)
    for name, raw in table.items():
        if name not in params:
            raise BigrecError(
                f"{project_dir / PROJECT_CONFIG}: [{section}] has no option {name!r}",
                hint=f"options: {', '.join(sorted(params))}",
            )
        if source_name(ctx, name) in ("DEFAULT", "DEFAULT_MAP"):
            try:
                values[name] = params[name].process_value(ctx, raw)
            except typer.BadParameter as error:
                raise BigrecError(
                    f"{project_dir / PROJECT_CONFIG}: [{section}] {name} = {raw!r}: {error.message}",
                    hint="fix the value in the file, or pass the option",
                ) from None
    return values


def option_sources(ctx: typer.Context, section: str, project_dir: Path) -> dict[str, str]:
    """Where each option's value comes from: flag, environment, bigrec.toml or default."""
    from bigrec_cli.config import read_project_config

    table = read_project_config(project_dir).get(section, {})
    names = {"COMMANDLINE": "flag", "ENVIRONMENT": "environment"}
    sources = {}
    for param in ctx.command.params:
        if param.name in NOT_IN_TOML or param.name is None:
            continue
        source = names.get(source_name(ctx, param.name), "default")
        sources[param.name] = "bigrec.toml" if source == "default" and param.name in table else source
    return sources


# Writes that fail for a reason the user can fix: one line, never a traceback (nothing is promoted half-written).
WRITE_FAILURES = {
    errno.ENOSPC: "free some disk space (or move the project with --project-dir) and run the command again",
    errno.EDQUOT: "free some of your disk quota and run the command again",
    errno.EFBIG: "the file size limit (ulimit -f) is too small: raise it and run the command again",
    errno.EROFS: "the project is on a read-only file system: point --project-dir at a writable copy",
    errno.EACCES: "this user may not read or write there: check the project's permissions",
}


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a BigrecError into one line on stderr and exit status 1; bugs keep their traceback."""
    try:
        yield
    except BigrecError as failure:
        hint = f" — fix: {failure.hint}" if failure.hint else ""
        error(f"{failure.message}{hint}")
        raise typer.Exit(failure.exit_code) from None
    except OSError as failure:
        fix = WRITE_FAILURES.get(failure.errno or 0)
        if fix is None:
            raise
        verb = "access" if failure.errno == errno.EACCES else "write"  # EACCES may come from a read as well
        where = f"cannot {verb} {failure.filename}" if failure.filename else f"cannot {verb} the project's files"
        error(f"{where}: {failure.strerror} — fix: {fix}")
        raise typer.Exit(EXIT_USER_ERROR) from None


@app.command()
def preprocess(
    project_dir: ProjectOption,
    events: Annotated[
        Optional[Path],
        typer.Option(help="Events: a file, a folder or a glob of CSV, JSON lines or Parquet (hive key=value folders)."),
    ] = None,
    items: Annotated[Optional[Path], typer.Option(help="Items file with item_id and text columns.")] = None,
    input_format: Annotated[
        InputFormat, typer.Option("--format", help="`files` or `movielens-100k`.")
    ] = InputFormat.files,
    source: Annotated[
        Optional[Path], typer.Option(help="Unzipped MovieLens 100K folder (with --format movielens-100k).")
    ] = None,
    text_columns: Annotated[Optional[str], typer.Option(help="Comma-separated item columns forming the text.")] = None,
    title_column: Annotated[Optional[str], typer.Option(help="Item column shown as the title.")] = None,
    drop_unknown_items: Annotated[bool, typer.Option(help="Drop events for items missing from the catalog.")] = False,
    dedupe: Annotated[
        str, typer.Option(help="exact: drop only identical events (repeats kept); latest: one event per user and item.")
    ] = "exact",
    repeats: Annotated[
        str, typer.Option(help="exclude: never recommend what a user had (films); allow: history items may return.")
    ] = "exclude",
    negative_events: Annotated[
        str, typer.Option(help="Comma-separated event types that are negative behaviour (never a target).")
    ] = ",".join(DEFAULT_NEGATIVE_EVENTS),
    event_map: Annotated[
        str, typer.Option(help="Rename raw event values to types, e.g. view=click,basket=cart (feedback too).")
    ] = "",
    min_rating: Annotated[
        Optional[float], typer.Option(help="Events rated below this become `dislike`: negative behaviour.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Validate events and items, order them by time, split per user (last = test) and write Parquet."""
    from bigrec_cli import data

    with user_errors():
        negative = tuple(name.strip() for name in negative_events.split(",") if name.strip())
        try:
            mapping = parse_pairs(event_map, "--event-map", number=False)
        except ValueError as problem:
            raise BigrecError(str(problem), hint="write it as view=click,basket=cart") from None
        policy = data.EventPolicy(
            dedupe=dedupe, repeats=repeats, negative_events=negative, event_map=mapping, min_rating=min_rating
        )
        if input_format is InputFormat.movielens_100k:
            if source is None:
                raise BigrecError("--format movielens-100k needs --source DIR", hint="pass the unzipped ml-100k folder")
            summary = data.preprocess(ProjectDir(project_dir), movielens_source=source, policy=policy)
        else:
            if events is None or items is None:
                raise BigrecError(
                    "--events and --items are required", hint="or use --format movielens-100k --source DIR"
                )
            columns = [name.strip() for name in text_columns.split(",")] if text_columns else None
            summary = data.preprocess(
                ProjectDir(project_dir),
                events_path=events,
                items_path=items,
                text_columns=columns,
                title_column=title_column,
                drop_unknown_items=drop_unknown_items,
                policy=policy,
            )
    if as_json:
        print_json(summary.__dict__)
    else:
        key_values("preprocess", summary.__dict__)


@app.command()
def extract(
    ctx: typer.Context,
    project_dir: ProjectOption,
    store: StoreOption = None,
    bert_dir: Annotated[
        Optional[Path], typer.Option(help="Folder with bert_config.json, bert_model.ckpt*, vocab.txt.")
    ] = None,
    config_path: Annotated[
        Optional[Path], typer.Option(help="bert_config.json (with --checkpoint-path, --dict-path).")
    ] = None,
    checkpoint_path: Annotated[
        Optional[Path], typer.Option(help="Checkpoint prefix, e.g. DIR/bert_model.ckpt.")
    ] = None,
    dict_path: Annotated[Optional[Path], typer.Option(help="vocab.txt.")] = None,
    bert: Annotated[
        str,
        typer.Option(
            envvar="BIGREC_BERT",
            help="A named model when no path is given: minilm "
            "(all-MiniLM-L6-v2), tiny (the test model), or auto (minilm if installed).",
        ),
    ] = "auto",
    pooling: Annotated[Pooling, typer.Option(help="Mean of the last layer, or the [CLS] vector.")] = Pooling.mean,
    max_length: Annotated[int, typer.Option(min=4, max=512, help="Tokens per item text.")] = 128,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Most texts per forward pass (texts are grouped by length).")
    ] = 128,
    workers: Annotated[
        int, typer.Option(min=1, help="Encode on N Ray Data actors, each loading BERT once (default: this process).")
    ] = 1,
    ray_address: Annotated[
        Optional[str],
        typer.Option(envvar="RAY_ADDRESS", help="Ray cluster for --workers (default: a local Ray for the run)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Encode each item's text with BERT (cached: a rerun encodes only new or changed items)."""
    from bigrec_cli import features
    from bigrec_cli.checkpoints import resolve_checkpoint

    with user_errors():
        options = configured(ctx, "extract", project_dir)
        bert_dir, config_path, checkpoint_path, dict_path, bert, pooling, max_length, batch_size = (
            options[name]
            for name in (
                "bert_dir",
                "config_path",
                "checkpoint_path",
                "dict_path",
                "bert",
                "pooling",
                "max_length",
                "batch_size",
            )
        )
        project = ProjectDir(project_dir, store_url=store)
        project.require_data()
        checkpoint = resolve_checkpoint(
            bert_dir=bert_dir,
            config_path=config_path,
            checkpoint_path=checkpoint_path,
            dict_path=dict_path,
            name=bert,
            notify=info,
        )
        from bigrec_cli.console import progress

        encode = None
        if options["workers"] > 1:
            from bigrec_cli import raycluster

            encode = raycluster.ray_encoder(
                checkpoint, pooling.value, max_length, batch_size, options["workers"], options["ray_address"]
            )
        with progress(f"encoding items with {checkpoint.name}") as bar:
            task = bar.task_ids[0]
            summary = features.extract(
                project,
                checkpoint,
                pooling=pooling.value,
                max_length=max_length,
                batch_size=batch_size,
                on_start=lambda total: bar.update(task, total=total),
                on_progress=lambda count: bar.advance(task, count),
                encode=encode,
            )
    if as_json:
        print_json(summary.__dict__)
    else:
        key_values("extract", summary.__dict__)


@contextmanager
def epoch_progress(enabled: bool = True) -> Iterator:
    """A Rich progress bar on stderr for the steps of the current epoch; yields the `on_step` callback (or None)."""
    if not enabled:
        yield None
        return
    from bigrec_cli.console import progress

    with progress("epoch 1", transient=True) as bar:
        task = bar.task_ids[0]

        def on_step(epoch: int, step: int, steps: int) -> None:
            bar.update(task, description=f"epoch {epoch}", completed=step, total=steps)

        yield on_step


def report_epoch(entry: dict) -> None:
    """One stderr line per epoch: loss and the validation metrics early stopping watches."""
    info(
        f"epoch {entry['epoch']}: loss {entry['loss']:.4f}, val ndcg@10 {entry['val_ndcg@10']:.4f}, "
        f"val hr@10 {entry['val_hr@10']:.4f}"
    )


def report_phase() -> Callable[[str], None]:
    """A reporter of train's steps after the epochs.

    Returns:
        A function that writes each step's line to stderr with the seconds since the reporter was made (as the
        command starts training).
    """
    started = time.monotonic()

    def report(text: str) -> None:
        info(f"{text} ({time.monotonic() - started:.0f} s)")

    return report


@app.command("import-bert")
def import_bert(
    source: Annotated[Path, typer.Argument(help="Hugging Face folder: config.json, model.safetensors, vocab.txt.")],
    destination: Annotated[Path, typer.Argument(help="Folder to write bert_config.json, bert_model.ckpt*, vocab.txt.")],
) -> None:
    """Convert a Hugging Face BERT (safetensors) into the Google layout bert4keras loads, without torch."""
    from bigrec_cli import checkpoints

    with user_errors():
        checkpoints.hf_to_google(source)  # refuse what cannot be converted before loading TensorFlow
        checkpoint = checkpoints.import_bert(source, destination)
    info(
        f"wrote {checkpoint.config_path.parent}: "
        f"use it with `bigrec extract --bert-dir {checkpoint.config_path.parent}`"
    )


@app.command()
def train(
    ctx: typer.Context,
    project_dir: ProjectOption,
    epochs: Annotated[int, typer.Option(min=1, help="Maximum epochs.")] = TrainConfig.epochs,
    batch_size: Annotated[int, typer.Option(min=1, help="Sequences per step.")] = TrainConfig.batch_size,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate.")] = TrainConfig.learning_rate,
    max_len: Annotated[int, typer.Option(min=1, help="Behaviour items the LSTM reads.")] = TrainConfig.max_len,
    lstm_units: Annotated[int, typer.Option(min=1, help="LSTM units.")] = TrainConfig.lstm_units,
    dim: Annotated[int, typer.Option(min=1, help="Item/user vector size.")] = TrainConfig.dim,
    negatives: Annotated[int, typer.Option(min=1, help="Sampled negatives per positive.")] = TrainConfig.negatives,
    negative_sampling: Annotated[
        str, typer.Option(help="uniform, or popularity (∝ training count^0.75).")
    ] = TrainConfig.negative_sampling,
    seed: Annotated[int, typer.Option(help="Random seed.")] = TrainConfig.seed,
    patience: Annotated[
        int, typer.Option(min=1, help="Epochs without better validation NDCG@10 before stopping.")
    ] = TrainConfig.patience,
    loss: Annotated[Loss, typer.Option(help="bce, or gbce (calibrated for sampled negatives).")] = Loss(
        TrainConfig.loss
    ),
    gbce_t: Annotated[float, typer.Option(help="gBCE calibration t in [0, 1].")] = TrainConfig.gbce_t,
    dropout: Annotated[float, typer.Option(help="Dropout on the LSTM's input vectors.")] = TrainConfig.dropout,
    id_dropout: Annotated[
        float, typer.Option(help="Share of item lookups trained without their ID vector.")
    ] = TrainConfig.id_dropout,
    weight_average: Annotated[
        float,
        typer.Option(
            help="Decay of the moving average of the weights that validation scores and the run keeps (0: off)."
        ),
    ] = TrainConfig.weight_average,
    id_embedding: Annotated[
        bool, typer.Option(help="Add a learned per-item vector to the text vector.")
    ] = TrainConfig.id_embedding,
    history_mean: Annotated[
        bool, typer.Option(help="Add the mean of the history's item vectors to the user vector.")
    ] = TrainConfig.history_mean,
    item_item: Annotated[
        bool, typer.Option(help="Add an item-to-item term (EASE/ItemKNN), weighted on the validation split.")
    ] = TrainConfig.item_item,
    fine_tune_bert: Annotated[
        bool, typer.Option(help="Train the BERT encoder end to end (small catalogs).")
    ] = TrainConfig.fine_tune_bert,
    event_weights: Annotated[
        str,
        typer.Option(help="Loss weight of each positive event type, e.g. purchase=3,cart=2,click=1 (others 1)."),
    ] = TrainConfig.event_weights,
    weight_scale: Annotated[
        str, typer.Option(help="How the weight column scales an event in the loss: ignore, log (1 + ln w) or linear.")
    ] = TrainConfig.weight_scale,
    cold_boost_cost: Annotated[
        float,
        typer.Option(
            help="Share of the known items' validation NDCG@10 that new items may cost for a boost (0: none)."
        ),
    ] = TrainConfig.cold_boost_cost,
    index: Annotated[
        IndexMode,
        typer.Option(
            help="Approximate top-K index for the run: auto (faiss IVF from 50,000 items), ivf, hnsw, or exact."
        ),
    ] = IndexMode(TrainConfig.index),
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Train on N MultiWorkerMirroredStrategy workers started by Ray (a TF_CONFIG launcher starts its own).",
        ),
    ] = 1,
    ray_address: Annotated[
        Optional[str],
        typer.Option(envvar="RAY_ADDRESS", help="Ray cluster for --workers (default: a local Ray for the run)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Train BERT vectors → LSTM → sigmoid on the train split; promote the run when it completes."""
    with user_errors():
        options_all = configured(ctx, "train", project_dir)  # flags, environment, then bigrec.toml's [train]
        options = {
            name: value
            for name, value in options_all.items()
            if name not in ("project_dir", "as_json", "workers", "ray_address")
        }
        config = TrainConfig(
            **{**options, "loss": Loss(options["loss"]).value, "index": IndexMode(options["index"]).value}
        )
        project = ProjectDir(project_dir)
        project.require_features()
        from bigrec_cli.cluster import cluster_from_env

        cluster = cluster_from_env()
        workers, ray_address = options_all["workers"], options_all["ray_address"]
        if cluster.distributed and workers not in (1, cluster.num_workers):
            raise BigrecError(
                f"--workers {workers} but TF_CONFIG names {cluster.num_workers} workers",
                hint="leave --workers out when a launcher sets TF_CONFIG: each process is one worker",
            )
        if workers > 1 and not cluster.distributed:
            from bigrec_cli import raycluster

            info(f"training on {workers} workers through Ray")
            result = raycluster.train_on_ray(project, config, workers, ray_address)
        else:
            from bigrec_cli import train

            with epoch_progress(enabled=not as_json and cluster.is_chief) as on_step:
                result = train.train(project, config, on_epoch=report_epoch, on_step=on_step, on_phase=report_phase())
            if not cluster.is_chief:
                info(f"{cluster.describe()}: trained {result.epochs_run} epochs; the chief writes and promotes the run")
                if as_json:
                    print_json({"chief": False, "worker": cluster.describe(), "epochs_run": result.epochs_run})
                return
    summary = {
        "run_id": result.run_id,
        "run_dir": str(result.run_dir),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        **result.metrics,
        "seconds": round(result.seconds, 2),
    }
    if as_json:
        print_json(summary)
    else:
        key_values("train", summary)


@app.command()
def evaluate(
    project_dir: ProjectOption,
    as_json: JsonOption = False,
    run: Annotated[Optional[str], typer.Option(help="Run id to evaluate instead of the promoted one.")] = None,
    baselines: Annotated[bool, typer.Option(help="Compute Pop, ItemKNN and EASE on the same split.")] = True,
    ease_l2: Annotated[
        Optional[float], typer.Option(help="EASE's λ (default: chosen on the validation split).")
    ] = None,
    knn_neighbours: Annotated[
        Optional[int], typer.Option(min=1, help="ItemKNN's neighbours (default: chosen on the validation split).")
    ] = None,
    negatives: Annotated[int, typer.Option(min=1, help="Sampled negatives per positive for AUC and log loss.")] = 100,
    report: Annotated[
        Optional[Path], typer.Option(help="Also write PNG plots and an HTML page into this folder.")
    ] = None,
) -> None:
    """Full-ranking HR/NDCG/MRR@5,10,20, AUC and log loss on the test split, beside Pop, ItemKNN and EASE."""
    from bigrec_cli import evaluate

    with user_errors():
        project = ProjectDir(project_dir)
        run_dir = project.run_dir(run) if run else None
        results = evaluate.evaluate(
            project,
            run_dir=run_dir,
            num_negatives=negatives,
            ease_l2=ease_l2,
            knn_neighbours=knn_neighbours,
            baselines=baselines,
            report_dir=report,
        )
    if as_json:
        print_json(results)
    else:
        from bigrec_cli.console import metrics_table

        metrics_table(results, results["protocol"]["cutoffs"])
    if report is not None:
        info(f"report: {results['report']}")
    if "record_not_written" in results:
        info(f"warning: the evaluation was not recorded in the project ({results['record_not_written']})")


@app.command()
def recommend(
    project_dir: ProjectOption,
    store: StoreOption = None,
    user: Annotated[Optional[str], typer.Option(help="The user to recommend for.")] = None,
    users: Annotated[
        Optional[Path], typer.Option(help="File of user ids (CSV with user_id, or one per line; - = stdin).")
    ] = None,
    k: Annotated[int, typer.Option(min=1, max=1000, help="How many items.")] = 10,
    include_seen: Annotated[
        Optional[bool],
        typer.Option(
            "--include-seen/--exclude-seen",
            help="Allow (or not) items the user already had; default: the project's --repeats.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[Optional[Path], typer.Option(help="Write the CSV here instead of printing.")] = None,
    where: Annotated[
        Optional[list[str]],
        typer.Option(help="Only items whose attribute matches: category=guitars, price<100 (repeatable, all hold)."),
    ] = None,
    exclude: Annotated[Optional[list[str]], typer.Option(help="An item id never to recommend (repeatable).")] = None,
    explain: Annotated[
        bool, typer.Option("--explain", help="For each item, the history items that raised its score most.")
    ] = False,
    index: Annotated[
        IndexMode,
        typer.Option(
            help="auto: the run's index if it has one; ivf/hnsw: the run's index, required; exact: all items."
        ),
    ] = IndexMode.auto,
    as_json: JsonOption = False,
) -> None:
    """Top-K items for a user's latest behaviour (ingested feedback included); unknown users get popular items."""
    from bigrec_cli.data import read_user_ids, write_text
    from bigrec_cli.recommend import Recommender, answers_csv

    with user_errors():
        if (user is None) == (users is None):
            raise BigrecError("give exactly one of --user and --users", hint="e.g. --user 42 or --users users.csv")
        recommender = Recommender(ProjectDir(project_dir, store_url=store), index=index.value)
        user_ids = [user] if user is not None else read_user_ids(users)
        answers = recommender.recommend_many(
            user_ids,
            k=k,
            exclude_seen=None if include_seen is None else not include_seen,
            where=tuple(where or ()),
            exclude=tuple(exclude or ()),
            explain=explain,
        )
        if output is not None:
            write_text(output, answers_csv(answers))
    if as_json:
        print_json(answers[0] if user is not None else answers)
    elif output is not None:
        info(
            f"wrote {sum(len(answer['items']) for answer in answers)} recommendations for {len(answers)} user(s) "
            f"to {output}"
        )
    elif user is not None:
        from bigrec_cli.console import recommendations_table

        recommendations_table(answers[0])
    else:
        sys.stdout.write(answers_csv(answers))


@app.command("ingest-feedback")
def ingest_feedback(
    project_dir: ProjectOption,
    file: Annotated[
        str,
        typer.Argument(
            help="CSV or JSON lines with user_id, item_id[, timestamp, event, weight, "
            "event_id, title, text]; - reads stdin."
        ),
    ],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Append new events to the feedback store; the next `recommend` reflects them. Exit 2 if rows were rejected."""
    from bigrec_cli.data import read_text
    from bigrec_cli.feedback import ingest, read_rows

    with user_errors():
        project = ProjectDir(project_dir, store_url=store)
        project.require_data()
        source = "<stdin>" if file == "-" else file
        rows = read_rows(io.StringIO(read_text(file, " of feedback (CSV or JSON lines)")), source)
        summary = ingest(project, rows, source=source)
    result = {key: value for key, value in summary.__dict__.items() if key != "rejections"}
    if as_json:
        print_json({**result, "rejections": summary.rejections[:100]})
    else:
        key_values("ingest-feedback", result)
    for rejection in summary.rejections[:5]:
        info(f"rejected line {rejection['line']}: {rejection['reason']}")
    if summary.num_rejected:
        info(f"{summary.num_rejected} row(s) rejected; reasons in {summary.rejects_path}")
        raise typer.Exit(EXIT_ROWS_REJECTED)


@app.command()
def serve(
    ctx: typer.Context,
    project_dir: ProjectOption,
    store: StoreOption = None,
    host: Annotated[str, typer.Option(help="Address to bind; loopback unless you say otherwise.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    token: Annotated[
        Optional[str],
        typer.Option(envvar="BIGREC_TOKEN", help="Require `Authorization: Bearer TOKEN`.", show_default=False),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Server processes (each holds the model).")] = 1,
    warm_users: Annotated[
        int,
        typer.Option(min=0, help="Most recent users whose LSTM states are computed before serving a run (0: none)."),
    ] = 20_000,
    allowed_host: Annotated[
        Optional[list[str]],
        typer.Option(help="Host name a proxy forwards (repeatable); loopback names and IP addresses always pass."),
    ] = None,
    allowed_origin: Annotated[
        Optional[list[str]], typer.Option(help="Origin allowed to POST from a browser, e.g. https://shop.example.")
    ] = None,
    access_log: Annotated[
        Optional[str],
        typer.Option(
            help="Append one JSON line per request (time, method, endpoint, status, duration_ms, run_id) to this "
            "file; - for stderr.",
            show_default=False,
            metavar="PATH",
        ),
    ] = None,
    index: Annotated[
        IndexMode,
        typer.Option(
            help="auto: the run's index if it has one; ivf/hnsw: the run's index, required; exact: all items."
        ),
    ] = IndexMode.auto,
) -> None:
    """Serve GET /recommend, POST /feedback, GET /health and GET /metrics (Prometheus) over HTTP; picks up newly
    promoted runs by itself."""
    from bigrec_cli import serve

    with user_errors():
        options = configured(ctx, "serve", project_dir)
        host, port, token, workers, warm_users, allowed_host, allowed_origin, access_log, index = (
            options[name]
            for name in (
                "host",
                "port",
                "token",
                "workers",
                "warm_users",
                "allowed_host",
                "allowed_origin",
                "access_log",
                "index",
            )
        )
        project = ProjectDir(project_dir, store_url=store)
        if token is not None and not token.strip():
            raise BigrecError(
                "--token is empty, which would turn authentication off", hint="give a real token, or omit --token"
            )
        project.current_run_dir()
        if host not in serve.LOOPBACK_HOSTS and not token:
            info(f"warning: serving on {host} without --token: anyone who can reach it can read and write")
        serve.run(
            project,
            host=host,
            port=port,
            token=token,
            workers=workers,
            warm_users=warm_users,
            allowed_hosts=allowed_host or [],
            allowed_origins=allowed_origin or [],
            access_log=access_log,
            index=IndexMode(index).value,
            on_listening=lambda url: info(f"bigrec serving {project.root} on {url} (OpenAPI at {url}/docs)"),
        )


@app.command()
def retrain(
    ctx: typer.Context,
    project_dir: ProjectOption,
    store: StoreOption = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Maximum epochs (default: the current run's).")] = None,
    tolerance: Annotated[
        float, typer.Option(min=0.0, help="Promote if validation NDCG@10 ≥ current − tolerance.")
    ] = 0.005,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (default: the current run's).")] = None,
    learning_rate: Annotated[
        Optional[float], typer.Option(help="Adam learning rate (default: the current run's).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Retrain even when nothing is new since the current run.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Fold in feedback, extract new items, warm-start training, and promote only a run that is not worse.

    Exit 0: promoted, or another retrain was running (nothing done). Exit 3: the candidate was worse than the
    current run by more than the tolerance; it stays in runs/ and `current` is unchanged.
    """
    from bigrec_cli import retrain

    with user_errors():
        options = configured(ctx, "retrain", project_dir)
        epochs, tolerance, seed, learning_rate, force = (
            options[name] for name in ("epochs", "tolerance", "seed", "learning_rate", "force")
        )
        with epoch_progress(enabled=not as_json) as on_step:
            result = retrain.retrain(
                ProjectDir(project_dir, store_url=store),
                epochs=epochs,
                tolerance=tolerance,
                seed=seed,
                learning_rate=learning_rate,
                on_stage=info,
                on_phase=report_phase(),
                on_epoch=report_epoch,
                on_step=on_step,
                force=force,
            )
    if result.decision == "skipped":
        info(f"retrain skipped: {result.record['reason']}")
    if result.decision == "nothing-new":
        info(f"{result.record['reason']} (--force retrains anyway)")
    if as_json:
        print_json({"decision": result.decision, **result.record})
    elif result.decision not in ("skipped", "nothing-new"):
        key_values(
            f"retrain: {result.decision}",
            {key: value for key, value in result.record.items() if not isinstance(value, dict)},
        )
    if result.decision == "rejected":
        info(f"candidate {result.record['candidate_run']} rejected by the gate; `bigrec runs promote` to use it anyway")
        raise typer.Exit(EXIT_RUN_REJECTED)


@app.command()
def export(
    destination: Annotated[Path, typer.Argument(help="Folder to write (replaced if it exists).")],
    project_dir: ProjectOption,
    export_format: Annotated[str, typer.Option("--format", help="savedmodel (TensorFlow SavedModel).")] = "savedmodel",
    run: Annotated[Optional[str], typer.Option(help="Run id to export instead of the promoted one.")] = None,
) -> None:
    """Write the scorer as a TensorFlow SavedModel (item indices in; logits, or the top-K items, out)."""
    with user_errors():
        project = ProjectDir(project_dir)
        project.current_run_dir() if run is None else project.run_dir(run)
        from bigrec_cli import export

        written = export.export(project, destination, run_id=run, fmt=export_format)
    info(f"wrote {written}: signatures serving_default (sequences, k -> top-k) and logits (sequences -> logits)")


@app.command()
def tune(
    project_dir: ProjectOption,
    budget: Annotated[Optional[str], typer.Option(help="Stop starting trials after this long: 30m, 2h, 90s.")] = None,
    trials: Annotated[Optional[int], typer.Option(min=1, help="At most this many trials in this session.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampler and of every trial's training.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Search learning rate, sizes, dropout, negatives, ID dropout, max_len and loss on the validation split.

    Optuna (TPE sampler, median pruning on each epoch's validation NDCG@10); the study is kept in the project's
    tune.sqlite3, so running tune again continues it; a new study starts from the configuration in use. The best
    configuration goes into bigrec.toml [train].
    """
    with user_errors():
        project = ProjectDir(project_dir)
        project.require_features()
        from bigrec_cli import tune

        seconds = tune.parse_budget(budget) if budget is not None else None
        from bigrec_cli.console import progress

        with progress("tuning", transient=False) as bar:
            task = bar.task_ids[0]
            bar.update(task, total=trials)
            best = {"value": None}

            def on_trial(record: dict) -> None:
                value = record["val_ndcg@10"]
                if value is not None and (best["value"] is None or value > best["value"]):
                    best["value"] = value
                shown = "—" if best["value"] is None else f"{best['value']:.4f}"
                bar.update(
                    task, advance=1, description=f"tuning: trial {record['trial']} {record['state']}, best {shown}"
                )

            def on_epoch(entry: dict) -> None:
                bar.update(
                    task,
                    description=f"tuning: trial {entry['trial']} epoch {entry['epoch']} "
                    f"val ndcg@10 {entry['val_ndcg@10']:.4f}",
                )

            result = tune.tune(
                project, budget_seconds=seconds, trials=trials, seed=seed, on_trial=on_trial, on_epoch=on_epoch
            )
    if as_json:
        print_json(result.__dict__)
        return
    from bigrec_cli.console import rows_table

    columns = ["trial", "state", "val_ndcg@10", "epochs", *tune.SEARCH_SPACE]
    rows_table("trials (validation NDCG@10)", result.trials, columns)
    if result.train_share < 1:
        info(f"each trial's LSTM trained on {result.train_share:.0%} of the users (large data); train uses all")
    if result.kept_current:
        info(f"no trial beat the configuration in use by {tune.MIN_GAIN:.0%} of validation NDCG@10: kept it")
    info(f"best validation NDCG@10 {result.best_value:.4f}; written to {result.written_to} [train]")


@app.command("forget-user")
def forget_user(
    user: Annotated[str, typer.Argument(help="The user id whose behaviour to remove.")],
    project_dir: ProjectOption,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove a user's events from the data, the feedback store and the rejects log (idempotent, logged)."""
    from bigrec_cli import forget

    with user_errors():
        summary = forget.forget_user(ProjectDir(project_dir, store_url=store), user)
    if as_json:
        print_json(summary.__dict__)
    else:
        key_values("forget-user", summary.__dict__)
    info("the next retrain trains without them; a running server reloads within a second")


@app.command()
def status(project_dir: ProjectOption, store: StoreOption = None, as_json: JsonOption = False) -> None:
    """The current run, its metrics and age, and the feedback it has not trained on yet."""
    from bigrec_cli import artifacts

    with user_errors():
        project = ProjectDir(project_dir, store_url=store)
        report = artifacts.status(project)
        from bigrec_cli.config import read_project_config

        report["bigrec_toml_train"] = read_project_config(project.root).get("train", {})
        if (project.root / "tune.sqlite3").exists():
            from bigrec_cli import tune

            report["tuning"] = tune.tuning_summary(project)
    if as_json:
        print_json(report)
    else:
        rows = {key: value for key, value in report.items() if not isinstance(value, dict)}
        if report.get("bigrec_toml_train"):
            rows["train options (bigrec.toml)"] = ", ".join(f"{k}={v}" for k, v in report["bigrec_toml_train"].items())
        if report.get("tuning"):
            summary = report["tuning"]
            rows["tuning"] = f"{summary['trials']} trials, best val ndcg@10 {summary['best_val_ndcg@10']:.4f}"
        last = report.get("last_retrain")
        if last:
            rows["last_retrain"] = (
                f"{last.get('decision')} at {last.get('at')}: candidate {last.get('candidate_run')} "
                f"(val ndcg@10 {last.get('candidate_val_ndcg@10', float('nan')):.4f})"
            )
        key_values("status", rows)


config_app = typer.Typer(
    help="The project's bigrec.toml: options of extract, train, retrain and serve.", no_args_is_help=True
)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(project_dir: ProjectOption, as_json: JsonOption = False) -> None:
    """Every option of extract, train, retrain and serve as they would run now, and where each value comes from."""
    from bigrec_cli.config import CONFIG_SECTIONS

    group = typer.main.get_command(app)
    rows = []
    with user_errors():
        for section in CONFIG_SECTIONS:
            command = group.commands[section]
            context = command.make_context(section, ["--project-dir", str(project_dir)], resilient_parsing=True)
            values = configured(context, section, project_dir)
            for name, source in option_sources(context, section, project_dir).items():
                value = values.get(name)
                value = getattr(value, "value", value)
                if name == "token" and value:
                    value = "(set)"
                rows.append({"command": section, "option": name, "value": value, "source": source})
    if as_json:
        print_json(rows)
    else:
        from bigrec_cli.console import rows_table

        rows_table(f"options for {project_dir}", rows, ["command", "option", "value", "source"])


runs_app = typer.Typer(help="Inspect and switch training runs.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")


@runs_app.command("list")
def runs_list(project_dir: ProjectOption, as_json: JsonOption = False) -> None:
    """Every completed run, oldest first."""
    from bigrec_cli import artifacts

    with user_errors():
        rows = artifacts.list_runs(ProjectDir(project_dir))
    if as_json:
        print_json(rows)
    else:
        from bigrec_cli.console import rows_table

        rows_table("runs", rows, ["run_id", "current", "status", "created_at", "val_ndcg@10", "warm_start_from"])


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="A run id from `bigrec runs list`.")], project_dir: ProjectOption
) -> None:
    """A run's config, metrics and manifest (JSON), after verifying its files."""
    from bigrec_cli import artifacts

    with user_errors():
        print_json(artifacts.show_run(ProjectDir(project_dir), run_id))


@runs_app.command("promote")
def runs_promote(
    run_id: Annotated[str, typer.Argument(help="The run to make current.")], project_dir: ProjectOption
) -> None:
    """Make a run current (atomically); serving processes pick it up within a second."""
    from bigrec_cli import artifacts

    with user_errors():
        result = artifacts.promote_run(ProjectDir(project_dir), run_id)
    info(f"current: {result['run_id']} (was {result['previous']})")


@runs_app.command("prune")
def runs_prune(
    project_dir: ProjectOption,
    keep: Annotated[int, typer.Option(min=1, help="How many of the newest runs to keep.")] = 5,
    as_json: JsonOption = False,
) -> None:
    """Delete old runs, keeping the newest --keep, `current` and the run a rollback would return to."""
    from bigrec_cli import artifacts

    with user_errors():
        removed = artifacts.prune_runs(ProjectDir(project_dir), keep=keep)
    if as_json:
        print_json({"removed": removed})
    else:
        info(f"removed {len(removed)} run(s)" + (f": {', '.join(removed)}" if removed else ""))


@runs_app.command("rollback")
def runs_rollback(project_dir: ProjectOption) -> None:
    """Make the previously current run current again."""
    from bigrec_cli import artifacts

    with user_errors():
        result = artifacts.rollback(ProjectDir(project_dir))
    info(f"current: {result['run_id']} (was {result['previous']})")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="bigrec")
