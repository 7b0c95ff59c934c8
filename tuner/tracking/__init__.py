"""MLflow at the edge: the client with retries, the study's parent run, one child run per trial, their artifacts.

Everything here runs in the driver; trials never talk to MLflow.
"""
from .client import Tracker as Tracker
from .client import TrackingUnavailable as TrackingUnavailable
from .client import check_reachable as check_reachable
from .client import redact as redact
from .client import resolve_tracking_uri as resolve_tracking_uri
from .client import training_view_url as training_view_url
from .datasets import dataset_tags as dataset_tags
from .datasets import study_dataset_inputs as study_dataset_inputs
from .parent_run import close_parent as close_parent
from .parent_run import log_study_end as log_study_end
from .parent_run import open_parent as open_parent
from .parent_run import record_extension as record_extension
from .trial_runs import TrialRecorder as TrialRecorder
from .trial_runs import trial_summary as trial_summary
