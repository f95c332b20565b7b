"""The cohort builders by name: each turns the files users download into a sample sheet, and adds the
command-line arguments it needs to its subcommand of ``python -m slidemil.cohorts``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from slidemil.cohorts.sheet import SampleRow
from slidemil.registry import Registry

BuildFn = Callable[[argparse.Namespace], list[SampleRow]]


@dataclass(frozen=True)
class Builder:
    """One cohort: its subcommand's help line, its arguments, and the rows it builds from them."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    build: BuildFn


BUILDERS: Registry[Builder] = Registry("cohort builder", origin=lambda b: b.build)


def register_builder(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]
                     ) -> Callable[[BuildFn], BuildFn]:
    """Function decorator: `python -m slidemil.cohorts NAME` parses `add_arguments` and calls it."""

    def deco(build: BuildFn) -> BuildFn:
        BUILDERS.add(name, Builder(help, add_arguments, build))
        return build

    return deco
