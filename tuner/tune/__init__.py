"""Tuning: a study's plan, what runs in each trial, the searcher and scheduler, and running the study."""
from .packing import check_packing as check_packing
from .plan import StudyPlan as StudyPlan
from .plan import plan_study as plan_study
from .study import StudyOutcome as StudyOutcome
from .study import run_study as run_study
