"""Loading recipe files: YAML with positions, every problem reported as file:line:col.

The round-trip loader keeps the line and column of every key and value; pydantic's error
locations (and those of :class:`LocatedValueError`) are walked through that tree.
"""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from hpcproc.errors import InputError, RecipeError
from hpcproc.recipes.model import LocatedValueError, Recipe, show
from hpcproc.shipped import shipped_dir

SUFFIXES = (".yaml", ".yml")
ENV_PATH = "HPCPROC_RECIPE_PATH"


# ---- loading -------------------------------------------------------------------------------


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Load and validate one recipe file; any problem is a RecipeError naming file:line:col."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError("no such recipe file", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"cannot read recipe file: {e}", path) from None
    return load_recipe_text(text, str(path), source=path.resolve())


def load_recipe_text(text: str, filename: str = "<string>", source: Path | None = None) -> Recipe:
    """Validate recipe YAML ``text``; ``filename`` is only used in error messages."""
    root = _parse(text, filename)
    if not isinstance(root, CommentedMap):
        kind = {type(None): "empty", CommentedSeq: "a list"}.get(type(root), "a single value")
        raise RecipeError(
            f"a recipe is a mapping (name:, steps:, ...), not {kind}", filename, *_pos(root)
        )
    for key in Recipe._internal:
        if key in root:
            line, col = root.lc.key(key)
            raise RecipeError(_unknown_key(key, Recipe), filename, line + 1, col + 1)
    data = _plain(root)
    data.update(source=source, text=text)
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise _recipe_error(e, root, filename) from None


M = typing.TypeVar("M", bound=BaseModel)


def load_model(path: str | os.PathLike[str], model: type[M]) -> M:
    """Load any YAML file validated by a pydantic ``model`` (e.g. a cluster profile), with the
    same file:line:col errors as recipes."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"cannot read file: {e}", path) from None
    root = _parse(text, str(path))
    if not isinstance(root, CommentedMap):
        raise RecipeError(f"expected a mapping of {model.__name__} keys", path, *_pos(root))
    try:
        return model.model_validate(_plain(root))
    except ValidationError as e:
        raise _recipe_error(e, root, str(path), model) from None


def _parse(text: str, filename: str) -> Any:
    try:
        return YAML(typ="rt").load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        message = " ".join(m for m in (e.problem, e.context) if m) or "invalid YAML"
        if mark is None:
            raise RecipeError(f"invalid YAML: {message}", filename) from None
        raise RecipeError(
            f"invalid YAML: {message}", filename, mark.line + 1, mark.column + 1
        ) from None
    except YAMLError as e:
        raise RecipeError(f"invalid YAML: {e}", filename) from None


def _pos(node: Any) -> tuple[int, int]:
    lc = getattr(node, "lc", None)
    if lc is None or lc.line is None:
        return 1, 1
    return lc.line + 1, lc.col + 1


def _plain(node: Any) -> Any:
    """ruamel's round-trip types as plain Python values (bool before int: bool is an int)."""
    if isinstance(node, dict):
        return {_plain(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return node


# ---- errors --------------------------------------------------------------------------------


def _locate(root: Any, loc: tuple[Any, ...], at: str) -> tuple[tuple[int, int], int]:
    """1-based (line, col) of ``loc`` in the YAML tree, and how many parts of it were found.

    Parts not in the tree (a missing key, pydantic's union branch names) leave the position at
    the deepest node found.
    """
    node, pos, depth = root, _pos(root), 0
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, CommentedMap) and part in node:
            line, col = node.lc.key(part) if last and at == "key" else node.lc.value(part)
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            line, col = node.lc.item(part)
            node = node[part]
        else:
            break
        pos, depth = (line + 1, col + 1), i + 1
    return pos, depth


def _model_at(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The model class validating the mapping at ``loc`` (for the list of allowed keys)."""
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = next((f for n, f in tp.model_fields.items() if part in (n, f.alias)), None)
            if field is None:
                return None
            tp = field.annotation
        elif typing.get_origin(tp) in (dict, list):
            tp = typing.get_args(tp)[-1]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    """``X | None`` -> ``X``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _unknown_key(key: Any, model: type[BaseModel] | None) -> str:
    if model is None:
        return f"unknown key {show(key)}"
    keys = getattr(model, "yaml_keys", None)
    names = keys() if keys else [f.alias or n for n, f in model.model_fields.items()]
    allowed = f" (allowed: {', '.join(names)})"
    return f"unknown key {show(key)}{allowed}"


def _brief(value: Any) -> str:
    text = show(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _recipe_error(
    exc: ValidationError, root: Any, filename: str, model: type[BaseModel] = Recipe
) -> RecipeError:
    """The first problem of ``exc`` in file order, as one RecipeError."""
    found: list[tuple[tuple[int, int], str]] = []
    for err in exc.errors():
        loc, kind = tuple(err["loc"]), err["type"]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, LocatedValueError):
            pos, _ = _locate(root, loc + cause.loc, cause.at)
            found.append((pos, str(cause)))
        elif isinstance(cause, ValueError):
            found.append((_locate(root, loc, "value")[0], str(cause)))
        elif kind == "extra_forbidden":
            pos, _ = _locate(root, loc, "key")
            found.append((pos, _unknown_key(loc[-1], _model_at(loc[:-1], model))))
        elif kind == "missing":
            pos, _ = _locate(root, loc[:-1], "value")
            found.append((pos, f"missing required key {show(loc[-1])}"))
        else:
            pos, depth = _locate(root, loc, "value")
            key = next((p for p in reversed(loc[:depth]) if isinstance(p, str)), None)
            what = f" for {show(key)}" if key is not None else ""
            msg = err["msg"][:1].lower() + err["msg"][1:]
            found.append((pos, f"invalid value {_brief(err['input'])}{what}: {msg}"))
    (line, col), message = min(found, key=lambda f: f[0])
    return RecipeError(message, filename, line, col)


# ---- finding -------------------------------------------------------------------------------


def recipe_dirs() -> list[Path]:
    """Where recipes are looked for: ``$HPCPROC_RECIPE_PATH`` entries, then the shipped ones."""
    dirs = [Path(p).expanduser() for p in os.environ.get(ENV_PATH, "").split(os.pathsep) if p]
    dirs.append(shipped_dir("recipes"))
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _recipe_files() -> list[Path]:
    files: list[Path] = []
    for d in recipe_dirs():
        if d.is_dir():
            files.extend(sorted(p for p in d.iterdir() if p.suffix in SUFFIXES and p.is_file()))
    return files


def list_recipes(errors: list[RecipeError] | None = None) -> list[Recipe]:
    """Every recipe in :func:`recipe_dirs`; for a name found twice the first one wins.

    A broken recipe raises RecipeError, unless ``errors`` is given: then it is appended there
    and skipped (so one bad file does not stop processing at a beamline).
    """
    recipes: dict[str, Recipe] = {}
    for path in _recipe_files():
        try:
            recipe = load_recipe(path)
        except RecipeError as e:
            if errors is None:
                raise
            errors.append(e)
            continue
        recipes.setdefault(recipe.name, recipe)
    return list(recipes.values())


def find_recipe(name_or_path: str) -> Recipe:
    """A recipe by path (``*.yaml`` or an existing file), else by name in :func:`recipe_dirs`."""
    path = Path(name_or_path).expanduser()
    if path.suffix in SUFFIXES or os.sep in name_or_path or path.is_file():
        return load_recipe(path)
    for d in recipe_dirs():  # the usual case: file named after the recipe
        for suffix in SUFFIXES:
            candidate = d / f"{name_or_path}{suffix}"
            if candidate.is_file():
                recipe = load_recipe(candidate)
                if recipe.name == name_or_path:
                    return recipe
    recipes = list_recipes(errors=[])
    for recipe in recipes:
        if recipe.name == name_or_path:
            return recipe
    known = ", ".join(sorted(r.name for r in recipes)) or "none"
    raise InputError(f"no recipe named {name_or_path!r} (known: {known})")
