"""Clusters and servers: which Ray cluster a command joins, Ray Jobs, and the MLflow tracking server."""
from .jobs import ClusterError as ClusterError
from .mlflow_server import ServerError as ServerError
from .ray_cluster import init_ray as init_ray
