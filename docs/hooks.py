"""MkDocs hooks: the package's source laid out as it installs, for the API reference; the committed
pictures joined to the site under their repository paths; the troubleshooting page's tables generated
from the code (docs/gen_errors.py)."""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path

import click
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen_api  # noqa: E402  (docs/ is not a package)
import gen_errors  # noqa: E402

# Pictures that live beside what they show (the plots with their reports, the page's screenshot with
# the page), published at the same relative paths the README uses.
PICTURES = ["artifacts/*.png", "artifacts/bench/*.png", "examples/web/screenshot.png"]
ERRORS_MARKER = "<!-- generated: errors -->"
API_MARKER = gen_api.MARKER

# The stage folders install under one namespace (pyproject's package-dir: `fmnist_deploy.runtime` is
# `runtime/`), which a static reader of the source cannot know. mkdocstrings reads the source from
# build/api-source (its `paths` in mkdocs.yml), where links lay it out as it installs. mkdocstrings
# takes its search paths as the configuration is read (a path missing then is dropped), and hooks
# load while the configuration is read, before plugins start: so the tree is laid out on import.
API_SOURCE = ROOT / "build" / "api-source"


def _lay_out_api_source() -> None:
    package = API_SOURCE / "fmnist_deploy"
    if package.exists():
        shutil.rmtree(API_SOURCE)
    package.mkdir(parents=True)
    for path in sorted((ROOT / "fmnist_deploy").glob("*.py")):
        (package / path.name).symlink_to(path)
    for folder in gen_errors.STAGES:
        if folder != "fmnist_deploy" and (ROOT / folder / "__init__.py").exists():
            (package / folder).symlink_to(ROOT / folder, target_is_directory=True)


def _show_click_defaults() -> None:
    """mkdocs-click prints an option's `default` attribute as it is; since click 8.3 an option declared
    without one holds click's UNSET sentinel there (shown as `Sentinel.UNSET`). Show what click itself
    uses instead: `Option.get_default` (False for a flag), and no default where click has none."""
    from mkdocs_click import _docs

    format_row = _docs._format_table_option_row

    def format_row_with_default(option: click.Option) -> str:
        default = option.get_default(click.Context(click.Command(option.name or "")), call=False)
        if repr(default) == "Sentinel.UNSET":  # a required or repeatable option without a default
            default = None
        if default is not option.default:
            option = copy.copy(option)
            option.default = default
        return format_row(option)

    _docs._format_table_option_row = format_row_with_default


_lay_out_api_source()


def on_pre_build(config):
    """Before any page is read: click's defaults as click uses them, for the command references."""
    _show_click_defaults()


def on_files(files, config):
    """Add the committed pictures to the site."""
    for pattern in PICTURES:
        for path in sorted(ROOT.glob(pattern)):
            uri = path.relative_to(ROOT).as_posix()
            if files.get_file_from_path(uri) is None:
                files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    """Fill the generated parts: the API page's reference, the troubleshooting page's tables."""
    if API_MARKER in markdown:
        markdown = markdown.replace(API_MARKER, gen_api.markdown())
    if ERRORS_MARKER in markdown:
        markdown = markdown.replace(ERRORS_MARKER, gen_errors.markdown())
    return markdown
