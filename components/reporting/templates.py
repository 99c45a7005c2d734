"""The Jinja environment over the package's templates (package data, shipped in the wheel).

Each module that renders a template names the files it loads in `PACKAGE_FILES`: they are
code deps of the stages that import it (privflow.codedeps), so a template edit re-runs the
stage that renders it and no other."""

from __future__ import annotations

from functools import cache

from jinja2 import Environment, PackageLoader, select_autoescape


def sentence(text: str) -> str:
    """The first letter upper case, the rest as it is (Jinja's `capitalize` lowers the rest,
    and with it a class name quoted in a verdict)."""
    return text[:1].upper() + text[1:]


@cache
def environment() -> Environment:
    loaded = Environment(loader=PackageLoader("privflow.reporting", "templates"),
                         autoescape=select_autoescape(["html", "html.j2"]), trim_blocks=True, lstrip_blocks=True)
    loaded.filters["sentence"] = sentence
    return loaded
