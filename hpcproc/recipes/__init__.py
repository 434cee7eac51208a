"""Recipes: which registered steps run on a scan, with which parameters and resources."""

from hpcproc.recipes.loader import (
    find_recipe,
    list_recipes,
    load_recipe,
    load_recipe_text,
    recipe_dirs,
)
from hpcproc.recipes.model import (
    AppliesTo,
    NexusRule,
    Parameter,
    Recipe,
    Resources,
    StepSpec,
)

__all__ = [
    "AppliesTo",
    "NexusRule",
    "Parameter",
    "Recipe",
    "Resources",
    "StepSpec",
    "find_recipe",
    "list_recipes",
    "load_recipe",
    "load_recipe_text",
    "recipe_dirs",
]
