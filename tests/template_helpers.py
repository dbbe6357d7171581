"""Helpers shared by the template tests: libraries over the shipped or a temporary templates folder."""

from __future__ import annotations

import shutil
from pathlib import Path

from pydantic import SecretStr

from loyalty.programme import Programme
from loyalty.rendering import RenderLimits, TemplateLibrary
from loyalty.settings import WebSettings
from tests.conftest import REPO_ROOT

TEMPLATES = REPO_ROOT / "templates"
WEB = WebSettings(public_base_url="https://rewards.example.com", secret_key=SecretStr("template-tests"))


def shipped_library(programme: Programme, **options: object) -> TemplateLibrary:
    """A library over the templates shipped in ``templates/``."""
    return TemplateLibrary(TEMPLATES, web=WEB, programme=programme, **options)  # type: ignore[arg-type]


def scratch_library(tmp_path: Path, programme: Programme, files: dict[str, str], *, with_shared: bool = True,
                    limits: RenderLimits | None = None) -> TemplateLibrary:
    """A library over ``tmp_path/templates`` holding ``files`` (and the shipped layouts and partials)."""
    root = tmp_path / "templates"
    if with_shared:
        shutil.copytree(TEMPLATES / "_layouts", root / "_layouts")
        shutil.copytree(TEMPLATES / "_partials", root / "_partials")
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return TemplateLibrary(root, web=WEB, programme=programme, limits=limits)
