"""The `curate` command. It orchestrates: `curate run` calls the curation runner and then,
when `[train]` is present, the trainer. Heavy imports happen inside commands so that
`curate --help` stays instant."""
from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import click

from curate import __version__


def _one_line(exc: BaseException) -> str:
    """A failure as the one line a user reads: what, and the file it names."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = getattr(exc, "path", None) or exc.filename or "a file"
        return f"no space left writing {where}; nothing finished was lost, rerun to resume"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted; nothing finished was lost, rerun to resume"
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{text} ({exc.filename})"
    return text if type(exc).__name__ in ("RunDirError", "ConfigError") else f"{type(exc).__name__}: {text}"


class _Group(click.Group):
    """Every failure ends in one `Error:` line naming the file or key (exit 1); `--debug`
    (or CURATE_DEBUG=1) shows the traceback instead. SIGTERM is turned into an
    interruption, so temporary files are removed on the way out, as on Ctrl-C."""

    def invoke(self, ctx):
        import signal

        def _term(signum, frame):
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, _term) if threading_main() else None
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - the one place every failure is turned into a line
            if ctx.obj and ctx.obj.get("debug") or os.environ.get("CURATE_DEBUG"):
                raise
            click.echo(f"Error: {_one_line(exc)}", err=True)
            sys.exit(130 if isinstance(exc, KeyboardInterrupt) else 1)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="curate")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
@click.pass_context
def main(ctx, debug) -> None:
    """Curate instruction data into clean, balanced training shards, and train on them."""
    ctx.obj = {"debug": debug}


def _load(pipeline: str, with_train: bool):
    """Load and fully validate a pipeline (and its [train] table) before any work."""
    from curate.pipeline.config import load_config
    from curate.contract.typed_config import ConfigError

    try:
        cfg = load_config(pipeline)
        train_cfg = None
        if with_train and cfg.train is not None:
            from train.config import parse_train_config

            try:
                train_cfg = parse_train_config(cfg.train, cfg.base_dir)
            except ConfigError as exc:
                exc.file = exc.file or str(cfg.path)
                raise
    except ConfigError as exc:
        raise click.ClickException(exc.message()) from None
    return cfg, train_cfg


@main.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Run directory (overrides [run].output_dir).")
@click.option("--fresh", is_flag=True, help="Start over instead of resuming finished stages.")
@click.option("--no-train", is_flag=True, help="Skip the [train] section even if present.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None, help="Overrides [run].executor.")
@click.option("--address", default=None, help="Ray cluster address (with --executor ray).")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Try the pipeline on a seeded sample of N records per source, in <output_dir>-limit-N (or --out).")
def run(pipeline, out_dir, fresh, no_train, executor, address, quiet, limit):
    """Run PIPELINE (a pipeline.toml): read, clean, select, render, write shards; then train."""
    from curate.contract.progress import Progress
    from curate.contract.typed_config import ConfigError
    from curate.pipeline.rundir import RunDir, RunDirError
    from curate.pipeline.runner import LedgerError, run_pipeline

    cfg, train_cfg = _load(pipeline, with_train=not no_train)
    if executor:
        cfg.run.executor = executor
    if address:
        cfg.run.ray_address = address
    progress = Progress(enabled=not quiet)
    try:
        if limit is not None and not out_dir:
            from curate.pipeline.runner import limited_output_dir

            out_dir = str(limited_output_dir(cfg, limit))
        manifest = run_pipeline(cfg, out_dir=out_dir, fresh=fresh, progress=progress, limit=limit)
    except ConfigError as exc:  # refused once the data is known (a mix weight naming no task)
        progress.close()
        raise click.ClickException(exc.message()) from None
    except LedgerError as exc:
        raise click.ClickException(f"internal error: {exc}") from None
    except RunDirError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        progress.close()
    rd = RunDir.open(cfg.output_dir(out_dir))
    run_dir = rd.root
    rd.own("report.html")
    if train_cfg is not None:
        rd.own("train")
    led = manifest["ledger"]
    click.echo(f"read {led['read']:,}  kept {led['kept']:,}  quarantined {led['quarantined']:,}  "
               f"dropped {sum(sum(r.values()) for r in led['dropped'].values()):,}  -> {run_dir}")
    tokenizer = cfg.resolve(cfg.render.tokenizer) if cfg.render and cfg.render.tokenizer else None
    _write_report(run_dir, quiet, tokenizer)  # before training too: a failed training still leaves a report
    if train_cfg is not None:
        from train import run_training
        from train.data import DataError
        from train.loop import TrainingError

        try:  # an interrupted training resumes from its last checkpoint when config and shards still match
            summary = run_training(run_dir, train_cfg, log=progress.log if not quiet else (lambda s: None),
                                   resume=False if fresh else "auto")
        except (DataError, TrainingError) as exc:
            raise click.ClickException(str(exc)) from None
        _record_training(run_dir, summary)
        click.echo(f"trained: {summary.get('adapter_dir', run_dir / 'train')}")
        _write_report(run_dir, quiet, tokenizer)


def _record_training(run_dir: Path, summary: dict) -> None:
    """Add the trainer's summary to the manifest (under `train`), atomically."""
    import json

    from curate.contract.atomic import write_json

    path = run_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["train"] = json.loads(json.dumps(summary, default=str))
    write_json(path, manifest)


def _write_report(run_dir: Path, quiet: bool, tokenizer: Path | None = None) -> None:
    from curate.look.report import write_report

    path = write_report(run_dir, tokenizer=tokenizer)
    if not quiet:
        click.echo(f"report: {path}")


@main.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
def validate(pipeline):
    """Check PIPELINE's config (keys, types, files) without running anything."""
    cfg, _ = _load(pipeline, with_train=True)
    click.echo(f"ok: {len(cfg.sources)} sources, {len(cfg.stages)} stages"
               + (", render" if cfg.render else "") + (", train" if cfg.train else ""))


# --- commands added by modules (keep one small block per command group) ---
# [cli:templates]
from curate.cli.templates import templates_cli  # noqa: E402  (click + stdlib only)

main.add_command(templates_cli, "templates")
# [cli:init]
from curate.cli.init import init_cmd  # noqa: E402  (click + stdlib at import)

main.add_command(init_cmd)
# [cli:classifier]
from curate.cli.classifier import classifier_cli  # noqa: E402

main.add_command(classifier_cli)
# [cli:eval] [cli:chat]
from curate.cli.chat import chat_cmd  # noqa: E402  (click only; torch loads inside the command)
from curate.cli.eval import eval_cmd  # noqa: E402

main.add_command(eval_cmd)
main.add_command(chat_cmd)
# [cli:train]
@main.command("train")
@click.argument("target", type=click.Path(exists=True))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Run directory (with a PIPELINE: overrides [run].output_dir).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Take [train] from this pipeline.toml (when TARGET is a run directory).")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in RUN/train/.")
@click.option("--merge", is_flag=True, default=None, help="Also write the adapter merged into the base model.")
@click.option("--max-steps", type=int, default=None, help="Override [train].max_steps.")
def train_cmd(target, out_dir, config_path, resume, merge, max_steps):
    """Train on the shards of TARGET: a pipeline.toml (after `curate run`) or a run directory.

    Multi-GPU / multi-process: torchrun --nproc-per-node N -m curate train TARGET"""
    import json as _json

    from curate.contract.typed_config import ConfigError

    target = Path(target)
    if target.is_dir():
        run_dir = target
        if config_path:
            _, train_cfg = _load(config_path, with_train=True)
        else:  # the [train] table recorded in the run's manifest
            from train.config import parse_train_config

            manifest = _json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
            table = (manifest.get("config") or {}).get("train")
            pipeline = manifest.get("pipeline") or manifest.get("config_path")
            try:
                train_cfg = parse_train_config(table, Path(pipeline).parent if pipeline else Path.cwd()) if table else None
            except ConfigError as exc:
                raise click.ClickException(exc.message()) from None
    else:
        cfg, train_cfg = _load(str(target), with_train=True)
        run_dir = cfg.output_dir(out_dir).resolve()
    if train_cfg is None:
        raise click.ClickException("no [train] table: add one to the pipeline (or pass --config PIPELINE)")
    if max_steps is not None:
        train_cfg.max_steps = max_steps
    from train import run_training
    from train.data import DataError
    from train.loop import TrainingError

    try:
        summary = run_training(run_dir, train_cfg, log=click.echo, resume=resume, merge=merge)
    except (DataError, TrainingError) as exc:
        raise click.ClickException(str(exc)) from None
    if summary.get("provenance"):
        click.echo(f"adapter: {summary.get('adapter_dir')}  best val loss {summary.get('best_val_loss')}  "
                   f"KL to base {summary.get('kl_to_base')}")


# [cli:inspect]
@main.command("inspect")
@click.argument("path", type=click.Path(exists=True))
@click.option("--samples", "-n", default=0, show_default=True, help="Decoded examples to show, supervised part marked.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.option("--tokenizer", default=None, help="tokenizer.json (or its directory) for token counts; a run's own by default.")
@click.option("--format", "fmt", default="auto", show_default=True, help="Record format of a data file.")
@click.option("--stage", default=None, help="In a run directory: profile this stage's output instead of the last.")
@click.option("--plain", is_flag=True, help="Plain text even on a terminal.")
def inspect_cmd(path, samples, as_json, tokenizer, fmt, stage, plain):
    """Show what is in PATH: a data file, a run directory or a shard folder."""
    import json as _json

    from curate.look.inspect import print_profile, profile_path

    try:
        prof = profile_path(path, samples=samples, tokenizer_path=tokenizer, fmt=fmt, stage=stage)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(_json.dumps(prof, indent=1, ensure_ascii=False, default=str))
    else:
        print_profile(prof, plain=True if plain else None)


# [cli:report]
@main.command("report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", type=click.Path(dir_okay=False), default=None, help="Output file (default RUN_DIR/report.html).")
@click.option("--tokenizer", default=None, help="tokenizer.json (or its directory) when the run's own is not found.")
@click.option("--frontier", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A frontier results JSON (benchmarks/train_frontier.py) to show; default RUN_DIR/frontier.json if present.")
def report_cmd(run_dir, out, tokenizer, frontier):
    """Write the self-contained HTML report of RUN_DIR."""
    from curate.look.report import write_report

    click.echo(str(write_report(Path(run_dir), Path(out) if out else None, tokenizer, frontier)))
