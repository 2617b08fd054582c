"""The `bigrec` command: thin Typer commands over library functions. Heavy modules are imported lazily."""

from __future__ import annotations

import csv
import io
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from bigrec_cli.console import error, info, key_values, print_json
from bigrec_cli.errors import BigrecError
from bigrec_cli.project import ProjectDir

EXIT_OK, EXIT_USER_ERROR, EXIT_REJECTED_ROWS, EXIT_RUN_REJECTED = 0, 1, 2, 3

app = typer.Typer(
    name="bigrec",
    help="A BERT → LSTM → sigmoid recommender: preprocess, extract, train, evaluate, recommend, ingest feedback.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ProjectOption = Annotated[
    Path,
    typer.Option("--project-dir", "-p", envvar="BIGREC_PROJECT_DIR", help="Where every artifact of this project lives.",
                 file_okay=False, resolve_path=True),
]  # fmt: skip
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


class InputFormat(str, Enum):
    files = "files"
    movielens_100k = "movielens-100k"


class Pooling(str, Enum):
    mean = "mean"
    cls = "cls"


class Loss(str, Enum):
    bce = "bce"
    gbce = "gbce"


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a BigrecError into one line on stderr and exit status 1; bugs keep their traceback."""
    try:
        yield
    except BigrecError as failure:
        hint = f" — fix: {failure.hint}" if failure.hint else ""
        error(f"{failure.message}{hint}")
        raise typer.Exit(failure.exit_code) from None


@app.command()
def preprocess(
    project_dir: ProjectOption,
    events: Annotated[Optional[Path], typer.Option(help="Events file (CSV, JSON lines or Parquet).")] = None,
    items: Annotated[Optional[Path], typer.Option(help="Items file with item_id and text columns.")] = None,
    input_format: Annotated[InputFormat, typer.Option("--format", help="`files` or `movielens-100k`.")] = InputFormat.files,
    source: Annotated[Optional[Path], typer.Option(help="Unzipped MovieLens 100K folder (with --format movielens-100k).")] = None,
    text_columns: Annotated[Optional[str], typer.Option(help="Comma-separated item columns forming the text.")] = None,
    title_column: Annotated[Optional[str], typer.Option(help="Item column shown as the title.")] = None,
    drop_unknown_items: Annotated[bool, typer.Option(help="Drop events for items missing from the catalog.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Validate events and items, order them by time, split per user (last = test) and write Parquet."""
    from bigrec_cli.data import preprocess as run_preprocess

    with user_errors():
        if input_format is InputFormat.movielens_100k:
            if source is None:
                raise BigrecError("--format movielens-100k needs --source DIR", hint="pass the unzipped ml-100k folder")
            summary = run_preprocess(ProjectDir(project_dir), movielens_source=source)
        else:
            if events is None or items is None:
                raise BigrecError("--events and --items are required", hint="or use --format movielens-100k --source DIR")
            columns = [name.strip() for name in text_columns.split(",")] if text_columns else None
            summary = run_preprocess(ProjectDir(project_dir), events_path=events, items_path=items, text_columns=columns,
                                     title_column=title_column, drop_unknown_items=drop_unknown_items)  # fmt: skip
    if as_json:
        print_json(summary.__dict__)
    else:
        key_values("preprocess", summary.__dict__)


@app.command()
def extract(
    project_dir: ProjectOption,
    bert_dir: Annotated[Optional[Path], typer.Option(help="Folder with bert_config.json, bert_model.ckpt*, vocab.txt.")] = None,
    config_path: Annotated[Optional[Path], typer.Option(help="bert_config.json (with --checkpoint-path, --dict-path).")] = None,
    checkpoint_path: Annotated[Optional[Path], typer.Option(help="Checkpoint prefix, e.g. DIR/bert_model.ckpt.")] = None,
    dict_path: Annotated[Optional[Path], typer.Option(help="vocab.txt.")] = None,
    bert: Annotated[str, typer.Option(envvar="BIGREC_BERT", help="A named model when no path is given: minilm "
                                      "(all-MiniLM-L6-v2), tiny (the test model), or auto (minilm if installed).")] = "auto",
    pooling: Annotated[Pooling, typer.Option(help="Mean of the last layer, or the [CLS] vector.")] = Pooling.mean,
    max_length: Annotated[int, typer.Option(min=4, max=512, help="Tokens per item text.")] = 128,
    batch_size: Annotated[int, typer.Option(min=1, help="Most texts per forward pass (texts are grouped by length).")] = 128,
    as_json: JsonOption = False,
) -> None:
    """Encode each item's text with BERT (cached: a rerun encodes only new or changed items)."""
    from bigrec_cli import bertfiles

    with user_errors():
        project = ProjectDir(project_dir)
        project.require_data()
        if bert_dir is not None:
            checkpoint = bertfiles.checkpoint_from_dir(bert_dir)
        elif config_path or checkpoint_path or dict_path:
            if not (config_path and checkpoint_path and dict_path):
                raise BigrecError("--config-path, --checkpoint-path and --dict-path go together",
                                  hint="pass all three, or --bert-dir")  # fmt: skip
            checkpoint = bertfiles.checkpoint_from_paths(config_path, checkpoint_path, dict_path)
        else:
            checkpoint = None
        from bigrec_cli import features

        checkpoint = checkpoint or features.named_checkpoint(bert)
        from bigrec_cli.console import progress

        with progress(f"encoding items with {checkpoint.name}") as bar:
            task = bar.task_ids[0]
            summary = features.extract(project, checkpoint, pooling=pooling.value, max_length=max_length,
                                       batch_size=batch_size, on_start=lambda total: bar.update(task, total=total),
                                       on_progress=lambda count: bar.advance(task, count))  # fmt: skip
    if as_json:
        print_json(summary.__dict__)
    else:
        key_values("extract", summary.__dict__)


def report_epoch(entry: dict) -> None:
    """One stderr line per epoch: loss and the validation metrics early stopping watches."""
    info(f"epoch {entry['epoch']}: loss {entry['loss']:.4f}, val ndcg@10 {entry['val_ndcg@10']:.4f}, "
         f"val hr@10 {entry['val_hr@10']:.4f}")  # fmt: skip


@app.command("import-bert")
def import_bert(
    source: Annotated[Path, typer.Argument(help="Hugging Face folder: config.json, model.safetensors, vocab.txt.")],
    destination: Annotated[Path, typer.Argument(help="Folder to write bert_config.json, bert_model.ckpt*, vocab.txt.")],
) -> None:
    """Convert a Hugging Face BERT (safetensors) into the Google layout bert4keras loads, without torch."""
    from bigrec_cli import hfimport

    with user_errors():
        hfimport.hf_to_google(source)  # refuse what cannot be converted before loading TensorFlow
        checkpoint = hfimport.import_bert(source, destination)
    info(f"wrote {checkpoint.config_path.parent}: use it with `bigrec extract --bert-dir {checkpoint.config_path.parent}`")


@app.command()
def train(
    project_dir: ProjectOption,
    epochs: Annotated[int, typer.Option(min=1, help="Maximum epochs.")] = 30,
    batch_size: Annotated[int, typer.Option(min=1, help="Sequences per step.")] = 16,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate.")] = 3e-3,
    max_len: Annotated[int, typer.Option(min=1, help="Behaviour items the LSTM reads.")] = 100,
    lstm_units: Annotated[int, typer.Option(min=1, help="LSTM units.")] = 128,
    dim: Annotated[int, typer.Option(min=1, help="Item/user vector size.")] = 64,
    negatives: Annotated[int, typer.Option(min=1, help="Sampled negatives per positive.")] = 16,
    negative_sampling: Annotated[str, typer.Option(help="uniform, or popularity (∝ training count^0.75).")] = "uniform",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    patience: Annotated[int, typer.Option(min=1, help="Epochs without better validation NDCG@10 before stopping.")] = 5,
    loss: Annotated[Loss, typer.Option(help="bce, or gbce (calibrated for sampled negatives).")] = Loss.bce,
    gbce_t: Annotated[float, typer.Option(help="gBCE calibration t in [0, 1].")] = 0.75,
    dropout: Annotated[float, typer.Option(help="Dropout on the LSTM's input vectors.")] = 0.2,
    id_dropout: Annotated[float, typer.Option(help="Share of item lookups trained without their ID vector.")] = 0.0,
    weight_average: Annotated[float, typer.Option(
        help="Decay of the moving average of the weights that validation scores and the run keeps (0: off).")] = 0.99,
    id_embedding: Annotated[bool, typer.Option(help="Add a learned per-item vector to the text vector.")] = True,
    fine_tune_bert: Annotated[bool, typer.Option(help="Train the BERT encoder end to end (small catalogs).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Train BERT vectors → LSTM → sigmoid on the train split; promote the run when it completes."""
    from bigrec_cli.config import TrainConfig

    with user_errors():
        config = TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, max_len=max_len,
                             lstm_units=lstm_units, dim=dim, negatives=negatives, negative_sampling=negative_sampling,
                             seed=seed, patience=patience,
                             loss=loss.value, gbce_t=gbce_t, dropout=dropout, id_dropout=id_dropout,
                             weight_average=weight_average, id_embedding=id_embedding,
                             fine_tune_bert=fine_tune_bert)  # fmt: skip
        project = ProjectDir(project_dir)
        project.require_features()
        from bigrec_cli import train as training

        result = training.train(project, config, verbose=0 if as_json else 2, on_epoch=report_epoch)
    summary = {"run_id": result.run_id, "run_dir": str(result.run_dir), "best_epoch": result.best_epoch,
               "epochs_run": result.epochs_run, **result.metrics, "seconds": round(result.seconds, 2)}  # fmt: skip
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
    ease_l2: Annotated[float, typer.Option(help="EASE's λ.")] = 100.0,
    negatives: Annotated[int, typer.Option(min=1, help="Sampled negatives per positive for AUC and log loss.")] = 100,
    report: Annotated[Optional[Path], typer.Option(help="Also write PNG plots and an HTML page into this folder.")] = None,
) -> None:
    """Full-ranking HR/NDCG/MRR@5,10,20, AUC and log loss on the test split, beside Pop, ItemKNN and EASE."""
    from bigrec_cli import evaluate as evaluation

    with user_errors():
        project = ProjectDir(project_dir)
        run_dir = project.run_dir(run) if run else None
        results = evaluation.evaluate(project, run_dir=run_dir, num_negatives=negatives, ease_l2=ease_l2,
                                      baselines=baselines, report_dir=report)  # fmt: skip
    if as_json:
        print_json(results)
    else:
        from bigrec_cli.console import metrics_table

        metrics_table(results, results["protocol"]["cutoffs"])
    if report is not None:
        info(f"report: {results['report']}")


def spreadsheet_safe(text: str) -> str:
    """Prefix a cell that a spreadsheet would run as a formula (=, +, -, @) with an apostrophe."""
    if text and (text[0] in "=+@\t\r" or (text[0] == "-" and not text[1:].replace(".", "", 1).isdigit())):
        return "'" + text
    return text


def _read_user_ids(path: Path) -> list[str]:
    if str(path) == "-":
        text = sys.stdin.read()
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, UnicodeDecodeError) as failure:
            raise BigrecError(f"cannot read {path}: {failure}", hint="give a CSV with a user_id column") from None
    rows = list(csv.reader(io.StringIO(text)))
    if rows and "user_id" in rows[0]:
        column = rows[0].index("user_id")
        rows = rows[1:]
    else:
        column = 0
    users = [row[column].strip() for row in rows if len(row) > column and row[column].strip()]
    if not users:
        raise BigrecError(f"{path} names no users", hint="one user_id per line, or a CSV with a user_id column")
    return users


@app.command()
def recommend(
    project_dir: ProjectOption,
    user: Annotated[Optional[str], typer.Option(help="The user to recommend for.")] = None,
    users: Annotated[Optional[Path], typer.Option(help="File of user ids (CSV with user_id, or one per line; - = stdin).")] = None,
    k: Annotated[int, typer.Option(min=1, max=1000, help="How many items.")] = 10,
    include_seen: Annotated[bool, typer.Option(help="Allow items the user already interacted with.")] = False,
    output: Annotated[Optional[Path], typer.Option(help="With --users: write the CSV here instead of stdout.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Top-K items for a user's latest behaviour (ingested feedback included); unknown users get popular items."""
    from bigrec_cli.recommend import Recommender

    with user_errors():
        if (user is None) == (users is None):
            raise BigrecError("give exactly one of --user and --users", hint="e.g. --user 42 or --users users.csv")
        recommender = Recommender(ProjectDir(project_dir))
        user_ids = [user] if user is not None else _read_user_ids(users)
        answers = recommender.recommend_many(user_ids, k=k, exclude_seen=not include_seen)
    if as_json:
        print_json(answers[0] if user is not None else answers)
    elif user is not None:
        from bigrec_cli.console import recommendations_table

        recommendations_table(answers[0])
    else:
        stream = open(output, "w", newline="", encoding="utf-8") if output else sys.stdout
        writer = csv.writer(stream)
        writer.writerow(["user_id", "rank", "item_id", "title", "score", "cold_start"])
        for answer in answers:
            for item in answer["items"]:
                score = "" if item["score"] is None else f"{item['score']:.6f}"
                writer.writerow([spreadsheet_safe(answer["user_id"]), item["rank"], spreadsheet_safe(item["item_id"]),
                                 spreadsheet_safe(item["title"]), score, int(answer["cold_start"])])  # fmt: skip
        if output:
            stream.close()


@app.command("ingest-feedback")
def ingest_feedback(
    project_dir: ProjectOption,
    file: Annotated[str, typer.Argument(help="CSV or JSON lines with user_id, item_id[, timestamp, event, weight, "
                                              "event_id, title, text]; - reads stdin.")],  # fmt: skip
    as_json: JsonOption = False,
) -> None:
    """Append new events to the feedback store; the next `recommend` reflects them. Exit 2 if rows were rejected."""
    from bigrec_cli.data import load_items
    from bigrec_cli.feedback import FeedbackStore

    with user_errors():
        project = ProjectDir(project_dir)
        project.require_data()
        if file == "-":
            stream, source = io.StringIO(sys.stdin.read()), "<stdin>"
        else:
            try:
                stream, source = io.StringIO(Path(file).read_text(encoding="utf-8")), file
            except FileNotFoundError:
                raise BigrecError(f"{file} does not exist", hint="check the path") from None
            except UnicodeDecodeError as failure:
                raise BigrecError(f"{file} is not UTF-8 text: {failure}", hint="re-save it as UTF-8") from None
        known = set(load_items(project)["item_id"])
        summary = FeedbackStore(project.feedback_db).ingest(stream, source=source, known_items=known,
                                                            rejects_path=project.rejects_path)  # fmt: skip
    result = {key: value for key, value in summary.__dict__.items() if key != "rejections"}
    if as_json:
        print_json({**result, "rejections": summary.rejections[:100]})
    else:
        key_values("ingest-feedback", result)
    for rejection in summary.rejections[:5]:
        info(f"rejected line {rejection['line']}: {rejection['reason']}")
    if summary.num_rejected:
        info(f"{summary.num_rejected} row(s) rejected; reasons in {summary.rejects_path}")
        raise typer.Exit(EXIT_REJECTED_ROWS)


@app.command()
def serve(
    project_dir: ProjectOption,
    host: Annotated[str, typer.Option(help="Address to bind; loopback unless you say otherwise.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    token: Annotated[Optional[str], typer.Option(envvar="BIGREC_TOKEN", help="Require `Authorization: Bearer TOKEN`.",
                                                 show_default=False)] = None,  # fmt: skip
    workers: Annotated[int, typer.Option(min=1, max=64, help="Server processes (each holds the model).")] = 1,
    warm_users: Annotated[int, typer.Option(min=0, help="Most recent users whose LSTM states are computed before "
                                            "serving a run (0: none).")] = 20_000,  # fmt: skip
) -> None:
    """Serve GET /recommend, POST /feedback and GET /health over HTTP; picks up newly promoted runs by itself."""
    from bigrec_cli import serve as serving

    with user_errors():
        project = ProjectDir(project_dir)
        project.current_run_dir()
        if host not in serving.LOOPBACK_HOSTS and not token:
            info(f"warning: serving on {host} without --token: anyone who can reach it can read and write")
        info(f"bigrec serving {project.root} on http://{host}:{port} (OpenAPI at /docs)")
        serving.run(project, host=host, port=port, token=token, workers=workers, warm_users=warm_users)


@app.command()
def retrain(
    project_dir: ProjectOption,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Maximum epochs (default: the current run's).")] = None,
    tolerance: Annotated[float, typer.Option(min=0.0, help="Promote if validation NDCG@10 ≥ current − tolerance.")] = 0.005,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (default: the current run's).")] = None,
    learning_rate: Annotated[Optional[float], typer.Option(help="Adam learning rate (default: the current run's).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Fold in feedback, extract new items, warm-start training, and promote only a run that is not worse.

    Exit 0: promoted, or another retrain was running (nothing done). Exit 3: the candidate was worse than the
    current run by more than the tolerance; it stays in runs/ and `current` is unchanged.
    """
    from bigrec_cli import retrain as retraining

    with user_errors():
        result = retraining.retrain(ProjectDir(project_dir), epochs=epochs, tolerance=tolerance, seed=seed,
                                    learning_rate=learning_rate,
                                    verbose=0 if as_json else 2, on_stage=info, on_epoch=report_epoch)  # fmt: skip
    if result.decision == "skipped":
        info(f"retrain skipped: {result.record['reason']}")
    if as_json:
        print_json({"decision": result.decision, **result.record})
    elif result.decision != "skipped":
        key_values(f"retrain: {result.decision}", {key: value for key, value in result.record.items()
                                                    if not isinstance(value, dict)})  # fmt: skip
    if result.decision == "rejected":
        info(f"candidate {result.record['candidate_run']} rejected by the gate; `bigrec runs promote` to use it anyway")
        raise typer.Exit(EXIT_RUN_REJECTED)


@app.command()
def status(project_dir: ProjectOption, as_json: JsonOption = False) -> None:
    """The current run, its metrics and age, and the feedback it has not trained on yet."""
    from bigrec_cli import runs

    with user_errors():
        report = runs.status(ProjectDir(project_dir))
    if as_json:
        print_json(report)
    else:
        key_values("status", {key: value for key, value in report.items() if not isinstance(value, dict)})


runs_app = typer.Typer(help="Inspect and switch training runs.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")


@runs_app.command("list")
def runs_list(project_dir: ProjectOption, as_json: JsonOption = False) -> None:
    """Every completed run, oldest first."""
    from bigrec_cli import runs

    with user_errors():
        rows = runs.list_runs(ProjectDir(project_dir))
    if as_json:
        print_json(rows)
    else:
        from bigrec_cli.console import rows_table

        rows_table("runs", rows, ["run_id", "current", "status", "created_at", "val_ndcg@10", "warm_start_from"])


@runs_app.command("show")
def runs_show(run_id: Annotated[str, typer.Argument(help="A run id from `bigrec runs list`.")],
              project_dir: ProjectOption) -> None:  # fmt: skip
    """A run's config, metrics and manifest (JSON), after verifying its files."""
    from bigrec_cli import runs

    with user_errors():
        print_json(runs.show_run(ProjectDir(project_dir), run_id))


@runs_app.command("promote")
def runs_promote(run_id: Annotated[str, typer.Argument(help="The run to make current.")],
                 project_dir: ProjectOption) -> None:  # fmt: skip
    """Make a run current (atomically); serving processes pick it up within a second."""
    from bigrec_cli import runs

    with user_errors():
        result = runs.promote_run(ProjectDir(project_dir), run_id)
    info(f"current: {result['run_id']} (was {result['previous']})")


@runs_app.command("rollback")
def runs_rollback(project_dir: ProjectOption) -> None:
    """Make the previously current run current again."""
    from bigrec_cli import runs

    with user_errors():
        result = runs.rollback(ProjectDir(project_dir))
    info(f"current: {result['run_id']} (was {result['previous']})")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="bigrec")
