"""The API page's reference: one mkdocstrings block per public name of `fmnist_deploy`."""

from __future__ import annotations

MARKER = "<!-- generated: api -->"


def markdown() -> str:
    """One mkdocstrings block per public name of `fmnist_deploy` (its `__all__`), each read where it is
    defined (the package's table of lazy imports says where) and titled by its public name."""
    import fmnist_deploy

    where = dict(fmnist_deploy._LAZY)
    names = [name for name in fmnist_deploy.__all__ if not name.startswith("_")]
    errors = [name for name in names if name.endswith(("Error", "Failure", "Warning"))]
    modules = [name for name in names if name in fmnist_deploy._SUBMODULES]
    others = [name for name in names if name not in errors and name not in modules]
    out: list[str] = []

    def block(name: str) -> None:
        target = f"fmnist_deploy.{name}" if name in modules else f"{where[name]}.{name}"
        out.append(
            f"::: {target}\n    options:\n      heading: fmnist_deploy.{name}\n      show_root_full_path: false\n"
        )

    out.append("### Loading, predicting, exporting\n")
    for name in others:
        block(name)
    out.append("### Errors\n")
    for name in errors:
        block(name)
    out.append("### The contract\n")
    for name in modules:
        block(name)
    return "\n".join(out)
