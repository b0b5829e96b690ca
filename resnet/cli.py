"""``python -m resnet train|evaluate|predict|convert|study|ablation|time-to-accuracy|search|export ...``: the command line."""

import argparse
import contextlib
import dataclasses
import json
import math
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm

from . import batch, config, export, runs
from .budget import process_age_s
from .config import SEED_LIMIT, ConfigError
from .constants import CLASSES
from .data import DATA_DIR_HELP, load_split
from .errors import UserError
from .experiments import ablation, search, storage, study, time_to_accuracy
from .experiments.runner import Options
from .fetch import fetch_now
from .images import FORMATS_IN_WORDS
from .train import Trainer, resolve_device, resume_config
from .weights import DEFAULT_WEIGHTS, WeightsError, card_path, load_weights, save_weights

EXPECTED_ERRORS = (UserError, FileNotFoundError)  # and a path on this machine that is not there


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _whole_at_least(minimum: int, below: int | None = None):
    """An argparse type: a whole number of at least ``minimum`` (and under ``below``, if given)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least {minimum}")
        if below is not None and value >= below:
            raise argparse.ArgumentTypeError(f"{text!r}: give a whole number below {below}")
        return value

    return parse


_count, _positive_int, _seed = _whole_at_least(0), _whole_at_least(1), _whole_at_least(0, below=SEED_LIMIT)


def _blocks(text: str) -> tuple:
    try:
        return config.parse_blocks(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _setting_type(name: str):
    """The argparse type of a setting: what its declaration in resnet.config says it holds."""
    if name == "seed":
        return _seed  # checked here too, so a study or ablation refuses it before binding a folder to it
    return {int: int, float: _finite_float, tuple: _blocks, str: str}[config.kind(name)]


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model into a run folder", description="Train the ResNet on CIFAR-10.")
    p.add_argument("--out", help="run folder to create (config, metrics.jsonl, checkpoints, weights)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a stopped or interrupted run (it takes only "
                        f"{', '.join(config.flag(n) for n in config.RESUME_SETTINGS)})")
    p.add_argument("--preset", choices=sorted(config.PRESETS), help="recipe to start from (default: fast)")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 into --data-dir first")
    for name in config.CLI_SETTINGS:
        meta = config.SETTINGS[name].metadata
        if config.kind(name) is bool:
            p.add_argument(config.flag(name), action=argparse.BooleanOptionalAction, default=None, help=meta["help"])
        else:
            p.add_argument(config.flag(name), type=_setting_type(name), choices=meta["choices"], help=meta["help"])


def _data_dir_option(p) -> None:
    p.add_argument("--data-dir", help=DATA_DIR_HELP)


def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score weights on the CIFAR-10 test set or a labelled folder",
                       description="Evaluate weights in eval mode, fp32.")
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help="a .safetensors (with its .json card) or a published .pt")
    _data_dir_option(p)
    p.add_argument("--limit-test", type=_count, default=0)
    p.add_argument("--folder", help="score an ImageFolder layout instead: one subfolder of images per class, named as the class")
    p.add_argument("--batch-size", type=_positive_int, default=batch.BATCH_SIZE, help="images per forward pass for --folder")
    p.add_argument("--tta", action="store_true", help="average the logits of each image and its mirror")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON line last")
    p.add_argument("--device", default="cpu")


def _predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="classify images, folders and .zip archives",
                       description=f"Classify {FORMATS_IN_WORDS} images: files, folders (recursed), .zip archives "
                                   "(read in memory).")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    p.add_argument("--top", type=_positive_int, default=3)
    p.add_argument("--json", action="store_true", help="one JSON line per image instead of text")
    p.add_argument("--csv", metavar="OUT",
                   help="write every prediction to OUT ('-': stdout): path, prediction, probability, one column per class")
    p.add_argument("--batch-size", type=_positive_int, default=batch.BATCH_SIZE, help="images per forward pass")
    p.add_argument("--device", default="cpu")


def _budget_options(p, experiment) -> None:
    """What every experiment shares: where the data, run folders and results go, and the budget (its epochs
    where it fixes them)."""
    budget, out, results = experiment.budget, experiment.defaults.out, experiment.defaults.results
    _data_dir_option(p)
    p.add_argument("--out", default=out, help=f"folder of its run folders, bound to one budget (default: {out})")
    p.add_argument("--results", default=results,
                   help="results file: runs it records as done are not trained again; rewritten as runs finish "
                        f"(default: {results})")
    p.add_argument("--train-size", type=_positive_int, default=budget.train_size, help="training images per epoch")
    p.add_argument("--val-size", type=_positive_int, default=budget.val_size,
                   help="seeded validation images carved from the training set")
    if budget.epochs is not None:
        p.add_argument("--epochs", type=_positive_int, default=budget.epochs)
    p.add_argument("--seed", type=_seed, default=budget.seed,
                   help="of the validation split, and of every run (the ablation's first seed) (default: %(default)s); "
                        "another seed is another budget")


def _worker_options(p, name: str) -> None:
    """What makes every experiment's command a worker (resnet.experiments.storage): the storage its workers share,
    the study's name in it, and where this worker trains."""
    p.add_argument("--storage", metavar="URL",
                   help="an Optuna database (postgresql+psycopg://user@host/db) that every worker running this command "
                        "shares: each takes the next run no one holds (default: a journal file in --out, one machine)")
    p.add_argument("--name", help=f"the Optuna study's name in the storage (default: {name})")
    p.add_argument("--device", help="where this worker trains: auto, cpu, cuda, cuda:1, mps (default: auto)")


def _convert_parser(sub) -> None:
    p = sub.add_parser("convert", help="write weights (a published .pt or ours) as .safetensors with its card",
                       description="Write weights as .safetensors with a JSON card beside it: the only weights the studio "
                                   "accepts as an upload, since a .pt file is a pickle.")
    p.add_argument("weights", metavar="WEIGHTS", help="a published .pt state_dict, or our .safetensors")
    p.add_argument("out", metavar="OUT.safetensors", type=Path)


def _study_parser(sub) -> None:
    p = sub.add_parser("study", help="rerun the published optimizer, dropout and size comparisons",
                       description=study.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _budget_options(p, study.STUDY)
    p.add_argument("--batch-size", type=_positive_int, default=study.STUDY.budget.batch_size)
    p.add_argument("--only", default="", metavar="PREFIX", help="train only the runs whose id starts with PREFIX, e.g. adam-")
    p.add_argument("--dry-run", action="store_true", help="print the plan and what is done; train nothing")
    p.add_argument("--plan", choices=("published", "smoke"), default="published",
                   help="smoke: the four optimizers at lr 0.01 on 256 images for one epoch, under a budget of its own "
                        "that the budget options above change, into study-smoke/ (default: %(default)s)")
    _worker_options(p, study.STUDY.name)
    # Left unset, the budget and folders are the plan's: the smoke plan's differ from the published one's.
    p.set_defaults(train_size=None, val_size=None, epochs=None, batch_size=None, out=None, results=None)


def _ablation_parser(sub) -> None:
    variants = ablation.ABLATION.variants
    p = sub.add_parser("ablation", help="remove-one ablation of the recipe (fast + whitened stem) on a validation split",
                       description=ablation.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _budget_options(p, ablation.ABLATION)
    p.add_argument("--seeds", type=_positive_int, default=ablation.ABLATION.budget.seeds,
                   help="runs per variant, seeded --seed, --seed + 1, ... (default: %(default)s)")
    p.add_argument("--only", nargs="+", choices=list(variants), metavar="VARIANT",
                   help=f"train only these variants ({', '.join(variants)})")
    _worker_options(p, ablation.ABLATION.name)


def _time_to_accuracy_parser(sub) -> None:
    recipes = time_to_accuracy.TIME_TO_ACCURACY.recipes
    p = sub.add_parser("time-to-accuracy", help="wall time, images and FLOPs of each recipe to 90/93/94%% validation accuracy",
                       description=time_to_accuracy.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _budget_options(p, time_to_accuracy.TIME_TO_ACCURACY)
    p.add_argument("--only", nargs="+", choices=list(recipes), metavar="RECIPE",
                   help=f"train only these recipes ({', '.join(recipes)})")
    _worker_options(p, time_to_accuracy.TIME_TO_ACCURACY.name)


def _search_parser(sub) -> None:
    p = sub.add_parser("search", help="search a recipe's lr, warm-up and label smoothing on a validation split, "
                                      "stopping hopeless trials early",
                       description=search.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", choices=list(search.SEARCHES), default="quick",
                   help="what each trial is and what is searched: quick (one pass over 10,000 images), lr (its lr "
                        "alone), 1m/2m/5m/15m (the Train tab's run under that budget), smoke (four tiny trials) "
                        "(default: %(default)s)")
    p.add_argument("--trials", type=_positive_int, help="trials over all workers (default: the plan's)")
    p.add_argument("--no-prune", action="store_true", help="run every trial to its end")
    _data_dir_option(p)
    p.add_argument("--out", help="folder of its run folders (default: search-PLAN)")
    p.add_argument("--results", help="results file, rewritten as trials end (default: results/search-PLAN.json)")
    p.add_argument("--seed", type=_seed, default=0, help="of the validation split, every trial's weights and the sampler")
    _worker_options(p, "search-PLAN")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m resnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _evaluate_parser(sub)
    _predict_parser(sub)
    _convert_parser(sub)
    _study_parser(sub)
    _ablation_parser(sub)
    _time_to_accuracy_parser(sub)
    _search_parser(sub)
    export.add_parser(sub)
    return parser


def _record_text(record: dict) -> str:
    """One log line for a metrics row: what a person reads in train.log."""
    if record["kind"] == "probe":
        return (f"step {record['step']}: probe accuracy {record['probe_acc']:.2%} on {record['probe_images']} "
                f"{record['probe_split']} images")
    parts = [f"epoch {record['epoch']}", f"step {record['step']}", f"loss {record['train_loss']:.3f}",
             f"train {record['train_acc']:.2%}", f"{record['images_per_s']:.0f} img/s"]
    for split in ("test", "val"):
        if f"{split}_acc" in record:
            parts.append(f"{split} {record[f'{split}_acc']:.2%}")
    return ", ".join(parts)


@contextlib.contextmanager
def _progress(trainer: Trainer, start_step: int):
    """A tqdm bar on a terminal; plain lines, one per record, anywhere else (a log file keeps no
    carriage-return redraws)."""
    if not sys.stdout.isatty():
        trainer.callbacks.append(lambda record: print(_record_text(record), flush=True))
        yield
        return
    bar = tqdm(total=trainer.total_steps, initial=start_step, unit="step", dynamic_ncols=True)
    shown = {}

    def on_record(record: dict) -> None:
        if record["kind"] == "probe":
            shown["probe"] = f"{record['probe_acc']:.2%}"
        else:
            bar.total = record.get("total_steps", bar.total)  # a budget fixes the run's length after measuring
            bar.update(max(0, record["step"] - bar.n))
            shown.update(epoch=record["epoch"], loss=f"{record['train_loss']:.3f}", **{"img/s": f"{record['images_per_s']:.0f}"})
            for split in ("test", "val"):
                if f"{split}_acc" in record:
                    shown[split] = f"{record[f'{split}_acc']:.2%}"
            if record["kind"] == "epoch":
                tqdm.write(_record_text(record))
        bar.set_postfix(shown)

    trainer.callbacks.append(on_record)
    with bar:
        yield


def cmd_train(args, argv) -> int:
    if args.resume:
        given = [config.flag(name) for name in config.CLI_SETTINGS
                 if name not in config.RESUME_SETTINGS and getattr(args, name) is not None]
        given += [flag for flag, value in (("--out", args.out), ("--preset", args.preset)) if value is not None]
        if given:
            allowed = ", ".join(config.flag(name) for name in config.RESUME_SETTINGS)
            raise ConfigError(f"--resume continues the run as it was configured: it takes only {allowed} "
                              f"(got {', '.join(given)})")
        run_dir = Path(args.resume)
        if runs.read_status(run_dir)["status"] == "running":
            raise runs.RunError(f"{run_dir} is being trained by process {runs.read_status(run_dir).get('pid')}; stop it first")
        settings = resume_config(run_dir, args.epochs, **{n: getattr(args, n) for n in config.RESUME_SETTINGS if n != "epochs"})
        if args.download:
            fetch_now(settings.data_dir)
    else:
        if not args.out:
            raise ConfigError("--out RUN_DIR is required (or --resume RUN_DIR)")
        run_dir = Path(args.out)
        if (run_dir / runs.CONFIG).exists():
            raise ConfigError(f"{run_dir} already holds a run; use --resume {run_dir} or another --out")
        if args.budget and args.steps:
            raise ConfigError("--budget plans the run's steps itself: give --budget or --steps, not both")
        if args.download:
            fetch_now(args.data_dir)
        settings = config.make_config(args.preset or "fast", **{name: getattr(args, name) for name in config.CLI_SETTINGS})
    stop = _stop_on_signals()
    # A budget counts from this process's start: Python and torch's import come out of it too.
    trainer = Trainer(settings, run_dir, stop_event=stop, command="python -m resnet " + shlex.join(argv),
                      clock_start=time.perf_counter() - process_age_s())
    start_step = 0
    if args.resume:
        start_step = max((r["step"] for r in runs.read_metrics(run_dir)), default=0)
    if not trainer.writes:  # under torchrun, rank 0 alone reports
        return 0 if trainer.run(resume=bool(args.resume))["status"] == "finished" else 1
    with _progress(trainer, start_step):
        outcome = trainer.run(resume=bool(args.resume))
    print(outcome["message"], flush=True)
    return {"finished": 0, "stopped": 128 + (stop.signum or signal.SIGINT), "diverged": 3}.get(outcome["status"], 1)


def cmd_evaluate(args) -> int:
    classifier = load_weights(args.weights).to(resolve_device(args.device))
    if args.folder:
        return _evaluate_folder(args, classifier)
    if tuple(classifier.classes) != CLASSES:  # the test set's labels index CIFAR-10's classes, in their order
        raise WeightsError(f"{args.weights} classifies {len(classifier.classes)} classes "
                           f"({', '.join(classifier.classes)[:200]}), not CIFAR-10's {len(CLASSES)} in their order; "
                           "--folder scores it on images of its own classes")
    images, labels = load_split(args.data_dir, train=False)
    if args.limit_test:
        images, labels = images[: args.limit_test], labels[: args.limit_test]
    result = classifier.evaluate(images, labels, tta=args.tta)
    _print_metrics(result, classifier.classes, "test", args)
    return 0


def _evaluate_folder(args, classifier) -> int:
    if args.limit_test or args.data_dir:
        raise ConfigError("--limit-test and --data-dir choose test images; they do not apply to --folder")
    sources = batch.image_folder(args.folder, classifier.classes)
    with tqdm(total=len(sources.items), unit="img", dynamic_ncols=True) as bar:
        result = batch.evaluate_folder(classifier, sources, args.batch_size, args.tta, _report_unreadable, bar)
    _print_metrics({"folder": args.folder, **result}, classifier.classes, "folder", args)
    return 1 if result["unreadable"] else 0


def _report_unreadable(name: str, reason: str) -> None:
    tqdm.write(f"{name}: {reason}", file=sys.stderr)


def _print_metrics(result: dict, classes, scope: str, args) -> None:
    if args.json:
        print(json.dumps(result))
        return
    print(f"{scope} accuracy {result['acc']:.2%}  loss {result['loss']:.4f}  ({result['count']} images"
          f"{', flip TTA' if args.tta else ''})")
    for name, acc in zip(classes, result["per_class_acc"], strict=True):
        print(f"  {name:<11} {'no images' if acc is None else f'{acc:.2%}'}")
    short = [name[:5] for name in classes]
    print("confusion (true class down, prediction across):")
    print(" " * 7 + "".join(f"{name:>7}" for name in short))
    for name, row in zip(short, result["confusion"], strict=True):
        print(f"{name:<7}" + "".join(f"{count:>7}" for count in row))


def cmd_convert(args) -> int:
    if args.out.suffix != ".safetensors":
        raise ConfigError(f"{args.out} must end in .safetensors (its card is written beside it as .json)")
    classifier = load_weights(args.weights)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(classifier.net, args.out, classifier.card)
    print(f"wrote {args.out} and {card_path(args.out)}")
    return 0


def cmd_predict(args) -> int:
    classifier = load_weights(args.weights).to(resolve_device(args.device))
    classes = classifier.classes
    unreadable = []

    def report(name, reason):
        unreadable.append(name)
        _report_unreadable(name, reason)

    with batch.Sources(args.paths) as sources:
        if not sources.items and not sources.problems:
            raise batch.FolderError(f"no images in {', '.join(args.paths)}")
        for name, reason in sources.problems:
            report(name, reason)
        predicted = 0
        # A bar for a single image is noise; the text output for one image stays what it always was.
        with _csv_handle(args.csv) as handle, \
                tqdm(total=len(sources.items), unit="img", dynamic_ncols=True, disable=len(sources.items) < 2) as bar:
            predicted_images = batch.predictions(classifier, sources, args.batch_size, report, bar)
            if handle:
                predicted = len(batch.write_csv(handle, classes, predicted_images))
            else:
                for name, probabilities in predicted_images:
                    predicted += 1
                    tqdm.write(_prediction_line(name, probabilities, classes, args))
    if args.csv:
        print(f"{predicted} predictions written to {'stdout' if args.csv == '-' else args.csv}"
              f"{f', {len(unreadable)} unreadable' if unreadable else ''}", file=sys.stderr)
    return 1 if unreadable else 0


@contextlib.contextmanager
def _csv_handle(out):
    if out is None:
        yield None
    elif out == "-":
        yield sys.stdout
    else:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as handle:
            yield handle


def _prediction_line(name: str, probabilities, classes, args) -> str:
    values, indices = probabilities.topk(min(args.top, len(classes)))
    ranked = {classes[i]: round(p, 6) for p, i in zip(values.tolist(), indices.tolist(), strict=True)}
    if args.json:
        return json.dumps({"path": name, "top": ranked})
    return f"{name}: " + ", ".join(f"{label} {p:.1%}" for label, p in ranked.items())


def cmd_study(args) -> int:
    experiment = study.STUDY if args.plan == "published" else study.SMOKE
    out, results_path = args.out or experiment.defaults.out, args.results or experiment.defaults.results
    given = {"train_size": args.train_size, "val_size": args.val_size, "epochs": args.epochs, "batch_size": args.batch_size}
    budget = dataclasses.replace(experiment.budget, seed=args.seed, **{k: v for k, v in given.items() if v is not None})
    if args.dry_run:
        _print_plan(experiment, out, results_path, budget)
        return 0
    names_none = f"--only {args.only!r} names no run of the study; its run ids start with an optimizer " \
                 f"({', '.join(config.OPTIMIZERS)}), e.g. adam-lr0p01"
    if args.only and not any(f"{o}-".startswith(args.only) or args.only.startswith(f"{o}-") for o in config.OPTIMIZERS):
        raise ConfigError(names_none)  # before any work: every run id starts with its optimizer
    results, stop = _work(experiment, budget, args, out=out, results=results_path)
    if args.only and not results["waiting"] and not any(row["run_id"].startswith(args.only) for row in results["runs"]):
        raise ConfigError(names_none)
    for row in results["runs"]:
        print(_study_line(row))
    print(f"results: {results_path} (figures beside it)")
    if results["waiting"]:
        print(f"not planned yet: {results['waiting']}")
    return 128 + stop.signum if stop.is_set() else 0


def cmd_ablation(args) -> int:
    budget = dataclasses.replace(ablation.ABLATION.budget, train_size=args.train_size, val_size=args.val_size, epochs=args.epochs,
                                 seed=args.seed, seeds=args.seeds)
    results, stop = _work(ablation.ABLATION, budget, args, out=args.out, results=args.results)
    for row in ablation.table(results):
        print(f"{row['variant']:<20} {row['seeds']:<17} mean {row['mean']:<7} {row['vs recipe']:<12} {row['± (half range)']}")
    print(f"results: {args.results}")
    return 128 + stop.signum if stop.is_set() else 0


def cmd_time_to_accuracy(args) -> int:
    experiment = time_to_accuracy.TIME_TO_ACCURACY
    budget = dataclasses.replace(experiment.budget, train_size=args.train_size, val_size=args.val_size, seed=args.seed)
    results, stop = _work(experiment, budget, args, out=args.out, results=args.results)
    print(time_to_accuracy.markdown(results))
    print(f"results: {args.results} (curves beside it)")
    return 128 + stop.signum if stop.is_set() else 0


def _work(experiment, budget, args, out, results) -> tuple:
    """This process as one worker of ``experiment``'s plan on the storage its flags name, training into ``out``
    and writing ``results`` (resnet.experiments.storage); (the results, the stop event Ctrl-C or SIGTERM set)."""
    stop = _worker(args)
    options = dataclasses.replace(experiment.defaults, out=out, results=results, data_dir=args.data_dir, only=args.only,
                                  stop_event=stop, watch=_watch_run, device=args.device)
    return storage.run_study(experiment, budget, options, args.storage, args.name), stop


def _worker(args) -> "SignalStop":
    """A worker's start: a device this machine lacks is refused before a run is claimed, then Ctrl-C or SIGTERM
    stops the worker's run resumable."""
    if args.device:
        resolve_device(args.device)
    return _stop_on_signals()


def cmd_search(args) -> int:
    plan = search.SEARCHES[args.plan]
    plan = dataclasses.replace(plan, seed=args.seed, trials=args.trials or plan.trials)
    stop = _worker(args)
    out, results_path = args.out or f"search-{args.plan}", args.results or f"results/search-{args.plan}.json"
    options = Options(out=out, results=results_path, data_dir=args.data_dir, stop_event=stop, watch=_watch_run,
                      device=args.device)
    results = search.run_search(plan, not args.no_prune, options, args.storage, args.name or f"search-{args.plan}")
    settings = lambda row: ", ".join(f"{name} {row[name]:.3g}" for name in plan.space)  # noqa: E731
    for row in results["runs"]:
        score = f"val {row['final_val_acc']:.2%}" if row["final_val_acc"] is not None else ""
        print(f"{row['run_id']:<12} {settings(row):<48} {row['status']:<9} {score}")
    if results["best"]:
        print(f"best: {results['best']['run_id']} ({settings(results['best'])})")
    print(f"results: {results_path}")
    return 128 + stop.signum if stop.is_set() else 0


class SignalStop(threading.Event):
    """Set by Ctrl-C or SIGTERM, remembering which: the exit status says what stopped the run (130, 143)."""

    signum = None

    def handle(self, signum, frame) -> None:
        self.signum = signum
        self.set()


def _stop_on_signals() -> SignalStop:
    """Ctrl-C or SIGTERM sets the event: the run checkpoints, reads `stopped`, and resumes later."""
    stop = SignalStop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop.handle)
    return stop


@contextlib.contextmanager
def _watch_run(run_id, trainer, resume):
    tqdm.write(f"{'resuming' if resume else 'training'} {run_id}")
    start_step = max((r["step"] for r in runs.read_metrics(trainer.run_dir)), default=0) if resume else 0
    with _progress(trainer, start_step):
        yield


def _print_plan(experiment, root, results_path, budget) -> None:
    experiment.check_folder(root, budget)
    recorded = experiment.recorded_runs(results_path, budget)
    planned, waiting = experiment.plan(root, budget, recorded)
    print(f"budget: {json.dumps(budget.fields())}")
    for run in planned:
        print(f"  {run.run_id:<28} {','.join(run.phases):<20} {experiment.status(root, run.run_id, recorded)}")
    print(f"{len(planned)} runs planned" + (f"; later phases not planned yet: {waiting}" if waiting else ""))


def _study_line(row: dict) -> str:
    score = f"val {row['final_val_acc']:.2%}" if row["final_val_acc"] is not None else ""
    speed = f"{row['train_s_per_epoch']:.1f} s/epoch" if row["train_s_per_epoch"] else ""
    return f"{row['run_id']:<28} {row['status']:<9} {score:<11} {speed}"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args, argv)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "study":
            return cmd_study(args)
        if args.command == "ablation":
            return cmd_ablation(args)
        if args.command == "time-to-accuracy":
            return cmd_time_to_accuracy(args)
        if args.command == "search":
            return cmd_search(args)
        if args.command == "export":
            return export.cmd_export(args)
        if args.command == "convert":
            return cmd_convert(args)
        return cmd_predict(args)
    except EXPECTED_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
