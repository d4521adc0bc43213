"""The `ganrec` command line. Every command takes --config FILE.yaml and --key=value overrides of
its stage dataclass (see config.py for the precedence), and turns user errors into one line."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import sys
import typing
from collections.abc import Callable
from typing import Any

from ganrec_dist import config as cfgmod
from ganrec_dist.errors import UserError
from ganrec_dist.logs import quiet_ray_environment, setup_logging

log = logging.getLogger("ganrec_dist.cli")


def _flags(cls: type, prefix: str = "") -> list[tuple[str, type]]:
    hints = typing.get_type_hints(cls)
    out: list[tuple[str, type]] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out += _flags(tp, prefix=f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, tp))
    return out


def _add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    parser.add_argument("--config", help="YAML config file (defaults < YAML < command line)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    for name, tp in _flags(cls):
        names = {f"--{name}", f"--{name.replace('_', '-')}"}
        kwargs: dict[str, Any] = {
            "dest": f"cfg:{name}",
            "default": argparse.SUPPRESS,
            "metavar": tp.__name__.upper(),
        }
        if tp is bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        parser.add_argument(*sorted(names), **kwargs)


# command name -> (config class, "module:function")
COMMANDS: dict[str, tuple[type | None, str, str]] = {
    "prepare": (
        cfgmod.PrepareConfig,
        "ganrec_dist.prepare:prepare",
        "raw logs -> validated, split, sharded Parquet",
    ),
    "train": (
        cfgmod.TrainConfig,
        "ganrec_dist.train:train",
        "train the GAN recommender on Ray Train",
    ),
    "evaluate": (
        cfgmod.EvaluateConfig,
        "ganrec_dist.evaluate:evaluate",
        "GAN vs baselines, full ranking, one table",
    ),
    "index": (None, "ganrec_dist.index:index_command", "build the FAISS catalogue index of a run"),
    "score": (None, "ganrec_dist.score:score", "top-K for every user, a Ray Data job, to Parquet"),
    "serve": (
        None,
        "ganrec_dist.serve:serve_command",
        "serve the run on Ray Serve at 127.0.0.1:8000",
    ),
    "demo": (cfgmod.DemoConfig, "ganrec_dist.demo:demo", "the whole pipeline on the embedded data"),
}
CONFIG_CLASSES = {"index": "IndexCommandConfig", "score": "ScoreConfig", "serve": "ServeConfig"}
BENCHES: dict[str, tuple[str, str]] = {
    "ingest": ("ganrec_dist.bench.ingest:BenchIngestConfig", "ganrec_dist.bench.ingest:run"),
    "train": ("ganrec_dist.bench.train:BenchTrainConfig", "ganrec_dist.bench.train:run"),
    "index": ("ganrec_dist.bench.index:BenchIndexConfig", "ganrec_dist.bench.index:run"),
    "score": ("ganrec_dist.bench.score:BenchScoreConfig", "ganrec_dist.bench.score:run"),
    "step": ("ganrec_dist.bench.step:BenchStepConfig", "ganrec_dist.bench.step:run"),
    "serve": ("ganrec_dist.bench.serve:BenchServeConfig", "ganrec_dist.bench.serve:run"),
}


def _resolve(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, tuple[type, Callable]]]:
    parser = argparse.ArgumentParser(
        prog="ganrec", description="GAN-based generative recommender on Ray"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    handlers: dict[str, tuple[type, Callable]] = {}
    for name, (cls, target, help_text) in COMMANDS.items():
        if cls is None:  # the config class lives next to the command
            cls = _resolve(target.rsplit(":", 1)[0] + ":" + CONFIG_CLASSES[name])
        p = sub.add_parser(name, help=help_text)
        _add_config_args(p, cls)
        handlers[name] = (cls, lambda c, target=target: _resolve(target)(c))
    sub.add_parser(
        "submit", help="run any ganrec command as a Ray job: submit --address URL -- COMMAND ..."
    )
    bench = sub.add_parser("bench", help="benchmarks, each with its baseline in the same run")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    for name, (cls_spec, target) in BENCHES.items():
        cls = _resolve(cls_spec)
        p = bench_sub.add_parser(name)
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
    parser.add_argument("--no-wait", action="store_true", help="return after submitting")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(head)
    setup_logging(verbose=args.verbose, quiet=args.quiet)
    from ganrec_dist.cluster import submit

    address = args.address or os.environ.get("RAY_ADDRESS", "")
    try:
        if not address:
            raise UserError("--address (or RAY_ADDRESS) is required: the cluster's Jobs URL")
        return submit(address, command, wait=not args.no_wait)
    except UserError as exc:
        print(f"ganrec submit: error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ganrec` console script. Returns the exit status."""
    quiet_ray_environment()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["submit"]:
        return _submit(argv[1:])
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    setup_logging(verbose=args.verbose, quiet=args.quiet)
    key = f"bench {args.bench}" if args.command == "bench" else args.command
    cls, handler = handlers[key]
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:")}
    try:
        stage = key.replace(" ", "_")
        config: Any = cfgmod.load(cls, stage, args.config, overrides)
        result = handler(config)
    except UserError as exc:
        print(f"ganrec {key}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ganrec {key}: interrupted", file=sys.stderr)
        return 130
    if isinstance(result, dict) and not args.quiet:
        log.debug("result: %s", json.dumps(result, default=str)[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
