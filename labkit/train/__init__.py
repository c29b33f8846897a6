"""One-shot joint multi-precision training (METHOD.md §4–5): ALRS, Alg. A.1/A.2, KD, recipes, resume, DDP."""
from labkit.train.alrs import AdaptiveScaleLR, alrs_factors
from labkit.train.config import TrainConfig
from labkit.train.loop import JointTrainer, TrainingDiverged
from labkit.train.recipes import PROFILES, RECIPES, list_recipes, recipe_config

__all__ = ["PROFILES", "RECIPES", "AdaptiveScaleLR", "JointTrainer", "TrainConfig", "TrainingDiverged",
           "alrs_factors", "list_recipes", "recipe_config"]
