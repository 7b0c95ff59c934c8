"""Clusters and servers: which Ray cluster a command joins, Ray Jobs, and the MLflow tracking server."""
from .mlflow_server import ServerError as ServerError
from .ray_cluster import ClusterError as ClusterError
from .ray_cluster import choose_cluster as choose_cluster
from .ray_cluster import init_ray as init_ray
