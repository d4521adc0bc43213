"""The `ganrec` command line. Every command takes --config FILE.yaml and --key=value overrides of
its stage dataclass (see config.py for the precedence), explains each option with its default
(from the dataclass fields' help), and turns user errors and interruptions into one line."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from ganrec_dist.core import config as cfgmod
from ganrec_dist.core.errors import UserError
from ganrec_dist.core.logs import quiet_ray_environment, setup_logging

log = logging.getLogger("ganrec_dist.operations.cli")

# `ganrec update` when the gate held the new run back (the live app was not touched): a
# scheduler tells "no new model today" from a failure (2: a user error, 1: a crash).
EXIT_HELD_BACK = 3

# command name -> (config class, "module:function", help)
COMMANDS: dict[str, tuple[type, str, str]] = {
    "prepare": (
        cfgmod.PrepareConfig,
        "ganrec_dist.data.append:prepare_or_append",
        "raw logs -> validated, split, sharded Parquet (or a new version of a DATA)",
    ),
    "compact": (
        cfgmod.CompactConfig,
        "ganrec_dist.data.delta:compact_command",
        "fold an appended DATA's delta partitions into its base files (same version)",
    ),
    "train": (
        cfgmod.TrainConfig,
        "ganrec_dist.training.train:train",
        "train the GAN recommender on Ray Train",
    ),
    "update": (
        cfgmod.UpdateConfig,
        "ganrec_dist.operations.update:update",
        "daily update: append a partition, warm-start train, gate, index, roll out",
    ),
    "rollback": (
        cfgmod.RollbackConfig,
        "ganrec_dist.operations.update:rollback",
        "the live app back to the previous run version (zero-drop rollout)",
    ),
    "add-items": (
        cfgmod.AddItemsConfig,
        "ganrec_dist.operations.additems:add_items",
        "new items with content into a trained run (generated rows, index, rollout)",
    ),
    "evaluate": (
        cfgmod.EvaluateConfig,
        "ganrec_dist.evaluation.evaluate:evaluate",
        "GAN vs baselines, full ranking, one table",
    ),
    "index": (
        cfgmod.IndexCommandConfig,
        "ganrec_dist.retrieval.index:index_command",
        "build the FAISS catalogue index of a run",
    ),
    "score": (
        cfgmod.ScoreConfig,
        "ganrec_dist.inference.score:score",
        "top-K for every user, to Parquet",
    ),
    "serve": (
        cfgmod.ServeConfig,
        "ganrec_dist.inference.serve:serve_command",
        "serve the run on Ray Serve at 127.0.0.1:8000",
    ),
    "demo": (
        cfgmod.DemoConfig,
        "ganrec_dist.operations.demo:demo",
        "the whole pipeline on the embedded data",
    ),
}
# Commands with arguments of their own (lists of runs, a sweep file): "module:main(argv)".
OWN_PARSERS = {
    "sweep": "train configurations x seeds as Ray Tune trials: sweep --config SWEEP.yaml",
    "compare": "paired-by-seed comparison: compare RUN_A... --against RUN_B... [--split test]",
}
BENCHES: dict[str, tuple[str, str, str]] = {
    "ingest": (
        "ganrec_dist.bench.ingest:BenchIngestConfig",
        "ganrec_dist.bench.ingest:run",
        "prepare against a one-process pyarrow script",
    ),
    "train": (
        "ganrec_dist.bench.train:BenchTrainConfig",
        "ganrec_dist.bench.train:run",
        "the Ray Data -> Ray Train loop against an in-memory loop",
    ),
    "index": (
        "ganrec_dist.bench.index:BenchIndexConfig",
        "ganrec_dist.bench.index:run",
        "ANN index kinds against exact search",
    ),
    "score": (
        "ganrec_dist.bench.score:BenchScoreConfig",
        "ganrec_dist.bench.score:run",
        "ganrec score against one process",
    ),
    "step": (
        "ganrec_dist.bench.step:BenchStepConfig",
        "ganrec_dist.bench.step:run",
        "the training step against its unfused reference",
    ),
    "scale": (
        "ganrec_dist.bench.scale:BenchScaleConfig",
        "ganrec_dist.bench.scale:run",
        "training cost against catalogue size, dense and sparse tables",
    ),
    "update": (
        "ganrec_dist.bench.update:BenchUpdateConfig",
        "ganrec_dist.bench.update:run",
        "warm start after each new partition against training from scratch",
    ),
    "serve": (
        "ganrec_dist.bench.serve:BenchServeConfig",
        "ganrec_dist.bench.serve:run",
        "HTTP load on Ray Serve against a bare uvicorn app",
    ),
}


def _resolve(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def _add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """``--config``, ``--verbose``/``--quiet``, and one option per setting of ``cls``, grouped
    by section, each with its help and default."""
    parser.add_argument("--config", help="YAML config file (defaults < YAML < command line)")
    parser.add_argument("--verbose", action="store_true", help="debug logging, Ray's own output")
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    flat = cfgmod.flat_sections(cls)
    defaults = cfgmod.flatten(cfgmod.to_dict(cls()))
    groups: dict[str, Any] = {}
    for name, field, tp, section in cfgmod.fields(cls):
        if section not in groups:
            title = f"{section} settings" if section else "settings"
            described = next((f for f in dataclasses.fields(cls) if f.name == section), None)
            groups[section] = parser.add_argument_group(
                title, described.metadata.get("help") if described else None
            )
        leaf = name.rsplit(".", 1)[-1]
        names = [f"--{leaf}", f"--{name}"] if flat.get(leaf) == section else [f"--{name}"]
        kwargs: dict[str, Any] = {
            "dest": f"cfg:{name}",
            "default": argparse.SUPPRESS,
            "metavar": "BOOL" if tp is bool else tp.__name__.upper(),
            "help": f"{field.metadata['help']} (default: {defaults[name]!r})",
        }
        if tp is bool:
            kwargs.update(nargs="?", const="true")
        groups[section].add_argument(*names, **kwargs)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, tuple[type, Callable]]]:
    parser = argparse.ArgumentParser(
        prog="ganrec", description="GAN-based generative recommender on Ray"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    handlers: dict[str, tuple[type, Callable]] = {}
    for name, (cls, target, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_config_args(p, cls)
        handlers[name] = (cls, lambda c, target=target: _resolve(target)(c))
    sub.add_parser(
        "submit", help="run any ganrec command as a Ray job: submit --address URL -- COMMAND ..."
    )
    for name, help_text in OWN_PARSERS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    bench = sub.add_parser("bench", help="benchmarks, each with its baseline in the same run")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    for name, (cls_spec, target, help_text) in BENCHES.items():
        cls = _resolve(cls_spec)
        p = bench_sub.add_parser(name, help=help_text, description=help_text)
        _add_config_args(p, cls)
        handlers[f"bench {name}"] = (cls, lambda c, target=target: _resolve(target)(c))
    return parser, handlers


def _submit(argv: list[str]) -> int:
    """`ganrec submit --address URL [--no-wait] -- COMMAND ARGS...`"""
    head, command = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    )
    parser = argparse.ArgumentParser(
        prog="ganrec submit", description="run a ganrec command as a Ray job"
    )
    parser.add_argument(
        "--address", default="", help="Ray dashboard/Jobs URL, e.g. http://127.0.0.1:8265"
    )
    parser.add_argument(
        "--no-wait", "--no_wait", action="store_true", help="return after submitting"
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    args = parser.parse_args(head)
    setup_logging(verbose=args.verbose, quiet=args.quiet)
    from ganrec_dist.operations.cluster import submit

    address = args.address or os.environ.get("RAY_ADDRESS", "")
    if not address:
        raise UserError("--address (or RAY_ADDRESS) is required: the cluster's Jobs URL")
    return submit(address, command, wait=not args.no_wait)


def _underscored(argv: list[str]) -> list[str]:
    """``--cpus-per-worker=1`` -> ``--cpus_per_worker=1``: options take either spelling."""
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            arg = f"--{name.replace('-', '_')}{eq}{value}"
        out.append(arg)
    return out


def _run(argv: list[str]) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(_underscored(argv))
    setup_logging(verbose=args.verbose, quiet=args.quiet)
    key = f"bench {args.bench}" if args.command == "bench" else args.command
    cls, handler = handlers[key]
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:")}
    config: Any = cfgmod.load(cls, key.replace(" ", "_"), args.config, overrides)
    result = handler(config)
    if isinstance(result, dict) and not args.quiet:
        log.debug("result: %s", json.dumps(result, default=str)[:2000])
    if key == "update" and isinstance(result, dict) and not result["passed"]:
        return EXIT_HELD_BACK
    return 0


def _command_name(argv: list[str]) -> str:
    words = [a for a in argv[:2] if not a.startswith("-")]
    if words[:1] == ["bench"]:
        return " ".join(words[:2])
    return words[0] if words else ""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ganrec` console script. Returns the exit status.

    A user error is one line and status 2; Ctrl-C or SIGTERM one line and status 130/143, after
    the local Ray this command started (and every process of it) has stopped.
    """
    from ganrec_dist.core.raycluster import handle_termination, is_connected, shutdown, terminated

    quiet_ray_environment()
    handle_termination()
    argv = sys.argv[1:] if argv is None else argv
    name = f"ganrec {_command_name(argv)}".strip()
    connected_before = is_connected()  # a caller's Ray (tests share one) is left running
    try:
        if argv[:1] == ["submit"]:
            return _submit(argv[1:])
        if argv[:1] and argv[0] in OWN_PARSERS:
            return _resolve(f"ganrec_dist.evaluation.{argv[0]}:main")(argv[1:])
        return _run(argv)
    except UserError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: stopped by {'SIGTERM' if terminated() else 'Ctrl-C'}", file=sys.stderr)
        return 143 if terminated() else 130
    finally:
        try:
            if not connected_before:
                shutdown()
        except KeyboardInterrupt:  # a second Ctrl-C while Ray stops: stop waiting for it
            pass


def console() -> None:
    """The ``ganrec`` console script: :func:`main`, then exit with its status.

    After Ctrl-C or SIGTERM the command has printed its line and stopped the Ray it started;
    it then leaves without the interpreter's teardown, where threads of Ray's core worker or
    torch that the signal stopped mid-call can crash the process after its line was printed.
    """
    status = main()
    if status in (130, 143):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    console()
