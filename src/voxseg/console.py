"""What the command line shows: one-line errors, progress bars, Ctrl-C and the torchrun relaunch.

The commands live in `voxseg.cli`; this module holds the terminal plumbing they share.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Callable
from typing import Any

import typer
import typer.core
from rich.console import Console

console = Console()
err_console = Console(stderr=True)
debug = {"on": False}
"""Set by `voxseg --debug`: show tracebacks instead of one-line errors."""


def _click_module():
    """The click Typer runs on (vendored as typer._click since 0.29, plain click before)."""
    import importlib

    import typer.core

    return getattr(typer.core, "_click", None) or importlib.import_module("click")


class OneLineErrors(typer.core.TyperGroup):
    """Usage errors (a bad option value, a missing option) as one line plus a hint to
    `--help`, instead of a boxed multi-line panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        click = _click_module()
        given = list(sys.argv[1:] if args is None else args)
        try:
            _refuse_repeated_options(given, click)
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            console.print(exc.format_message(), highlight=False, markup=False)
            sys.exit(exc.exit_code)
        except click.exceptions.ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            command = ctx.command_path if ctx is not None else "voxseg"
            message = " ".join(exc.format_message().split())
            hint = _other_tools_hint(message)
            err_console.print(
                f"error: {message}{hint} (see `{command} --help`)",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
            sys.exit(exc.exit_code)
        except typer.Abort:  # click.exceptions.Abort before Typer 0.29, typer.exceptions after
            err_console.print("aborted")
            sys.exit(1)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


OTHER_TOOLS = {
    "-d": "nnU-Net's dataset id; voxseg takes the dataset folder (`--data DIR`)",
    "-c": "nnU-Net's configuration; voxseg plans one from the data and `--max-minutes`",
    "-f": "nnU-Net's fold; a run holds one split here (`--val-cases`, `--val-fraction`)",
    "-tr": "nnU-Net's trainer; voxseg's recipe is planned (`voxseg train --help`)",
    "-p": "nnU-Net's plans; voxseg plans from the data (`voxseg info RUN` shows the plan)",
    "-chk": "nnU-Net's checkpoint choice; voxseg predicts with the best weights",
    "-npp": "nnU-Net's preprocessing workers; voxseg reads the next case in the background",
    "--fast": "TotalSegmentator's low-resolution switch; train on a coarser `--spacing`",
    "--roi_subset": "TotalSegmentator's subset; train with `--foreground` or `--regions`",
    "--ml": "TotalSegmentator's one-label-map switch; voxseg writes one label map already",
    "--disable_tta": "TotalSegmentator's switch; voxseg's test-time augmentation is off "
    "unless `--tta` is given",
}
"""Options users of nnU-Net and TotalSegmentator type by habit, and what voxseg does instead."""


def _other_tools_hint(message: str) -> str:
    for option, hint in OTHER_TOOLS.items():
        if f"No such option: {option}" in message and (
            message.endswith(option) or f"{option} " in message or f"{option}(" in message
        ):
            return f"; {option} is {hint}"
    return ""


def _refuse_repeated_options(args: list[str], click) -> None:
    """`--model a --model b` would silently take b: a usage error instead."""
    seen = set()
    for arg in args:
        if arg == "--":
            return
        name = arg.split("=", 1)[0]
        if name.startswith("--") and name != "--help":
            if name in seen:
                raise click.exceptions.UsageError(f"{name} is given twice; give it once")
            seen.add(name)


def fail(message: str, code: int) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One line, a documented exit code and no traceback for anything the user can fix."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from voxseg.errors import VoxsegError

        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except VoxsegError as exc:
            if debug["on"]:
                raise
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None
        except BrokenPipeError:  # `voxseg info --json | head`: the reader left, as for `cat`
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(141) from None
        except OSError as exc:
            if debug["on"]:
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            fail(f"{where}{exc.strerror or exc}; check the path, permissions and free space", 2)
        except MemoryError:
            fail(
                "out of memory; use a coarser --spacing (more mm per voxel), a smaller --shape "
                "or --batch-size, or free memory",
                2,
            )
        except Exception as exc:  # noqa: BLE001 - last line of defence, still one line
            if debug["on"]:
                raise
            fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)", 1)

    return wrapper


class ProgressUI:
    """One Rich bar per kind of task, fed by any `on_progress(Step)` of the package."""

    def __init__(
        self, enabled: bool = True, transient: bool = False, plain: bool | None = None
    ) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.enabled = enabled
        self.plain = (not err_console.is_terminal) if plain is None else plain
        """Not on a terminal (nohup, a cluster job's log): one plain line per finished task
        (each epoch) instead of bars that only a terminal redraws."""
        self.started = time.monotonic()
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=err_console,
            disable=not enabled or self.plain,
            transient=transient,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> ProgressUI:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def log(self, message: str) -> None:
        if self.enabled:
            self.bar.console.print(message, highlight=False, markup=False)

    def on_progress(self, step) -> None:
        if self.plain:
            if self.enabled and step.total and step.done == step.total:
                minutes, seconds = divmod(int(time.monotonic() - self.started), 60)
                detail = f"  {step.detail}" if step.detail else ""
                elapsed = f"elapsed {minutes}:{seconds:02d}"
                self.log(f"{step.task}: {step.done}/{step.total}{detail}  {elapsed}")
            return
        key = step.task.split()[0]  # "epoch 3" and "epoch 4" share one bar
        if key not in self.tasks:
            self.tasks[key] = self.bar.add_task(step.task, total=step.total, detail="")
        self.bar.update(
            self.tasks[key],
            completed=step.done,
            total=step.total,
            description=step.task,
            detail=step.detail,
        )


@contextlib.contextmanager
def graceful_interrupt(log: Callable[[str], None]):
    """First Ctrl-C: finish the current step, save a resumable checkpoint. Second: abort."""
    import signal
    import threading

    event = threading.Event()

    def handler(signum, frame) -> None:
        if event.is_set():
            raise KeyboardInterrupt
        event.set()
        log("stopping after this step and saving a checkpoint (Ctrl-C again to abort)")

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread (e.g. some test runners): no handler
        yield event
        return
    try:
        yield event
    finally:
        signal.signal(signal.SIGINT, previous)


def launch_torchrun(nproc: int) -> int:
    """Re-run this very command under torchrun on one machine (`--nproc` is a convenience)."""
    import subprocess

    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "voxseg",
        *args,
    ]
    return subprocess.call(cmd)
